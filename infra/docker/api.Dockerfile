# syntax=docker/dockerfile:1
# The API image: Flask + gunicorn, no torch. Also runs `dorado migrate` and `dorado scheduler`.
#   docker build -f infra/docker/api.Dockerfile -t dorado-api .
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
FROM ${PYTHON_IMAGE}

# GUNICORN_KEEPALIVE: idle connections stay open longer than a load balancer's idle timeout
# (typically 60 s), so the API never closes one that is about to be reused (docs/deploy.md
# "Timeouts"); raise it above a longer one (e.g. Google Cloud's 600 s).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DORADO_HOME=/var/lib/dorado \
    PORT=8000 \
    GUNICORN_KEEPALIVE=75

RUN groupadd --system --gid 10001 dorado \
 && useradd --system --uid 10001 --gid dorado --home-dir /var/lib/dorado \
      --shell /usr/sbin/nologin dorado \
 && install -d -o dorado -g dorado -m 0750 /var/lib/dorado /var/lib/dorado-secret

WORKDIR /app

# Dependencies before source: this layer is rebuilt only when pyproject.toml changes.
# The [worker] extra (torch, transformers, peft) is deliberately not installed.
COPY pyproject.toml ./
RUN python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb')); \
print('\n'.join(d['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# Source last. Installed editable because the app finds web/, migrations/ and alembic.ini
# next to its packages (api.WEB_DIR, core.db.migrate.ROOT).
COPY README.md alembic.ini ./
COPY migrations ./migrations
COPY web ./web
COPY infra/gunicorn.conf.py ./infra/gunicorn.conf.py
COPY core ./core
COPY cli ./cli
COPY api ./api
RUN pip install --no-deps -e . \
 && python -c "import api, cli.main"

USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=4)"]
CMD ["gunicorn", "--config", "infra/gunicorn.conf.py", "api.wsgi:app"]
