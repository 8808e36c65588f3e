"""Runtime settings, read once from ``DORADO_*`` environment variables.

With nothing set, everything lives under ``DORADO_HOME`` (default ``./.dorado``): a SQLite
database, a local-directory object store and a filesystem Celery transport, so one machine
runs the whole platform with no servers. Setting the URLs switches to Postgres, Redis and S3
without any other code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value is not None else None


DEFAULT_INFERENCE_PORT = 8001


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    broker_url: str
    storage_url: str
    s3_endpoint_url: str | None
    s3_region: str
    host: str
    port: int
    bootstrap_api_key: str | None
    model_cache_dir: Path
    lease_seconds: int
    republish_after_seconds: int
    sweep_interval_seconds: float
    max_job_seconds: int
    max_job_retries: int
    max_upload_bytes: int
    secret_key: str | None
    # Where the secret is kept when DORADO_SECRET_KEY is unset (created once); services that
    # must trust each other share it (None: $DORADO_HOME/secret_key).
    secret_key_file: Path | None = None
    # The inference service (chat completions): where the API reaches it, where `dorado run`
    # starts it (None: any free port), and how many adapters it keeps attached.
    inference_url: str | None = None
    inference_port: int | None = None
    adapter_cache_size: int = 8
    # Security limits: requests per minute per API key (0: off), largest JSON body.
    rate_limit_per_minute: int = 3000
    max_json_bytes: int = 2 * 1024 * 1024
    # Multi-device training of one job (worker.training.distributed): "all" visible GPUs or
    # a number; without CUDA, this many gloo processes (1: train in the worker's process).
    worker_gpus_per_job: str = "all"
    worker_cpu_processes: int = 1
    # How long a collective may wait for a silent rank before the job fails.
    worker_dist_timeout_seconds: float = 1800.0
    # Scheduling: the pool a training worker serves (it consumes that pool's queue), its GPU
    # memory (None: detected with torch.cuda when present), and its heartbeat period.
    worker_pool: str = "default"
    worker_gpu_memory_mb: int | None = None
    worker_heartbeat_seconds: float = 5.0
    # Pools jobs may be routed to even while none of their workers runs (scaled to zero):
    # "name=MiB,name=MiB" (GPU memory of one GPU), e.g. "default=23034,a100-80gb=81920".
    pools: str = ""

    @property
    def declared_pools(self) -> dict[str, int | None]:
        """DORADO_POOLS as {pool: GPU memory in MiB (None: not given)}."""
        out: dict[str, int | None] = {}
        for item in filter(None, (part.strip() for part in self.pools.split(","))):
            name, _, memory = item.partition("=")
            out[name.strip()] = int(memory) if memory.strip() else None
        return out

    @property
    def broker_folder(self) -> Path:
        """Folder of the server-less filesystem transport (embedded default only)."""
        return self.home / "broker"

    @property
    def inference_base_url(self) -> str:
        """The inference service's URL as the API sees it."""
        if self.inference_url:
            return self.inference_url.rstrip("/")
        return f"http://127.0.0.1:{self.inference_port or DEFAULT_INFERENCE_PORT}"

    @property
    def uses_filesystem_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser().resolve() if value else None


def load_settings() -> Settings:
    """Build Settings from the environment; paths are made absolute."""
    home = Path(_env("DORADO_HOME", ".dorado")).expanduser().resolve()
    inference_port = _env("DORADO_INFERENCE_PORT")
    return Settings(
        home=home,
        database_url=_env("DORADO_DATABASE_URL", f"sqlite:///{home / 'dorado.db'}"),
        broker_url=_env("DORADO_BROKER_URL", "filesystem://"),
        storage_url=_env("DORADO_STORAGE_URL", f"file://{home / 'objects'}"),
        s3_endpoint_url=_env("DORADO_S3_ENDPOINT_URL"),
        s3_region=_env("DORADO_S3_REGION", _env("AWS_DEFAULT_REGION", "us-east-1")),
        host=_env("DORADO_HOST", "127.0.0.1"),
        port=int(_env("DORADO_PORT", "8000")),
        bootstrap_api_key=_env("DORADO_BOOTSTRAP_API_KEY"),
        model_cache_dir=Path(_env("DORADO_MODEL_CACHE", str(home / "cache" / "models")))
        .expanduser()
        .resolve(),
        lease_seconds=int(_env("DORADO_LEASE_SECONDS", "120")),
        republish_after_seconds=int(_env("DORADO_REPUBLISH_AFTER_SECONDS", "60")),
        sweep_interval_seconds=float(_env("DORADO_SWEEP_INTERVAL_SECONDS", "10")),
        max_job_seconds=int(_env("DORADO_MAX_JOB_SECONDS", "86400")),
        max_job_retries=int(_env("DORADO_MAX_JOB_RETRIES", "3")),
        max_upload_bytes=int(_env("DORADO_MAX_UPLOAD_BYTES", str(512 * 1024 * 1024))),
        secret_key=_env("DORADO_SECRET_KEY"),
        secret_key_file=_path(_env("DORADO_SECRET_KEY_FILE")),
        inference_url=_env("DORADO_INFERENCE_URL"),
        inference_port=int(inference_port) if inference_port else None,
        adapter_cache_size=int(_env("DORADO_ADAPTER_CACHE_SIZE", "8")),
        rate_limit_per_minute=int(_env("DORADO_RATE_LIMIT_PER_MINUTE", "3000")),
        max_json_bytes=int(_env("DORADO_MAX_JSON_BYTES", str(2 * 1024 * 1024))),
        worker_gpus_per_job=_env("DORADO_WORKER_GPUS_PER_JOB", "all"),
        worker_cpu_processes=int(_env("DORADO_WORKER_CPU_PROCESSES", "1")),
        worker_dist_timeout_seconds=float(_env("DORADO_WORKER_DIST_TIMEOUT_SECONDS", "1800")),
        worker_pool=_env("DORADO_WORKER_POOL", "default"),
        worker_gpu_memory_mb=_int_or_none(_env("DORADO_WORKER_GPU_MEMORY_MB")),
        worker_heartbeat_seconds=float(_env("DORADO_WORKER_HEARTBEAT_SECONDS", "5")),
        pools=_env("DORADO_POOLS", ""),
    )
