"""Runtime settings: every ``DORADO_*`` environment variable, read once and validated.

With nothing set, everything lives under ``DORADO_HOME`` (default ``./.dorado``): a SQLite
database, a local-directory object store and a filesystem Celery transport, so one machine
runs the whole platform with no servers. Setting the URLs switches to Postgres, Redis and S3
without any other code path.

:class:`Settings` is the one place a variable is named, defaulted and described: the README's
table and the Dorado section of ``.env.example`` are generated from it
(``python -m core.settings --markdown`` / ``--env``). A default written ``$DORADO_HOME/...``
is under the data folder. An empty variable means its default.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.database_url import masked, normalize_database_url
from core.errors import ConfigurationError, DatabaseUrlError

ENV_PREFIX = "DORADO_"
HOME_PLACEHOLDER = "$DORADO_HOME"
DEFAULT_INFERENCE_PORT = 8001
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
# Caps on one line of a training file (core.storage.datasets reads them from here).
DEFAULT_MAX_LINE_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_EXAMPLE_MESSAGES = 1000


class SettingsError(ConfigurationError):
    """One or more ``DORADO_*`` variables hold a value that cannot be used."""


def _doc(
    *,
    secret: bool = False,
    example: str | None = None,
    preset: str | None = None,
    note: str | None = None,
    shown_default: str | None = None,
) -> dict[str, Any]:
    """Documentation-only facts about a field (README table and ``.env.example``).

    ``example``: shown as a commented ``# NAME=example`` line (docker-compose.yml sets it);
    ``preset``: the value ``.env.example`` sets; ``note``: a comment only ``.env.example`` has;
    ``shown_default``: words for a default that is not a plain value (None, detected, ...).
    """
    facts = {
        "secret": secret,
        "example": example,
        "preset": preset,
        "note": note,
        "shown_default": shown_default,
    }
    return {key: value for key, value in facts.items() if value not in (None, False)}


class Settings(BaseSettings):
    """The platform's configuration; frozen, so a process reads it once and passes it on.

    Tests derive variants with ``settings.model_copy(update={...})``.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,
        frozen=True,
        extra="ignore",
        populate_by_name=True,
    )

    # --- where data lives -------------------------------------------------------------------
    home: Path = Field(
        default=Path(".dorado"),
        description="Data folder of the embedded defaults (SQLite, local objects, filesystem "
        "broker).",
        json_schema_extra=_doc(example="/var/lib/dorado"),
    )
    database_url: str = Field(
        default=f"sqlite:///{HOME_PLACEHOLDER}/dorado.db",
        description="SQLAlchemy URL of the database: sqlite:///PATH, or PostgreSQL as "
        "postgresql://, postgres:// or postgresql+psycopg2:// (mapped to the installed driver).",
        validate_default=True,
        json_schema_extra=_doc(
            secret=True,
            example="postgresql://dorado:PASSWORD@postgres:5432/dorado?connect_timeout=5",
        ),
    )
    broker_url: str = Field(
        default="filesystem://",
        description="Celery broker. The default keeps messages in folders under "
        "$DORADO_HOME/broker (one machine only); e.g. redis://host:6379/0.",
        json_schema_extra=_doc(secret=True, example="redis://redis:6379/0"),
    )
    storage_url: str = Field(
        default=f"file://{HOME_PLACEHOLDER}/objects",
        description="Object store: file:///dir, or s3://bucket/prefix for S3, MinIO, ...",
        validate_default=True,
        json_schema_extra=_doc(example="s3://dorado"),
    )
    s3_endpoint_url: str | None = Field(
        default=None,
        description="S3 endpoint for MinIO or another S3-compatible store; credentials come "
        "from the standard AWS_* variables.",
        json_schema_extra=_doc(example="http://minio:9000", shown_default="AWS"),
    )
    s3_region: str = Field(
        default="us-east-1",
        validation_alias=AliasChoices("DORADO_S3_REGION", "AWS_DEFAULT_REGION"),
        description="S3 region; AWS_DEFAULT_REGION when this one is empty.",
    )
    model_cache_dir: Path = Field(
        default=Path(f"{HOME_PLACEHOLDER}/cache/models"),
        validation_alias="DORADO_MODEL_CACHE",
        description="A worker's local copy of base models.",
        validate_default=True,
        json_schema_extra=_doc(example="/var/cache/dorado/models"),
    )
    # --- the API ------------------------------------------------------------------------------
    host: str = Field(
        default="127.0.0.1",
        description="Where `dorado run` serves the API (the containers use gunicorn on "
        "0.0.0.0:8000 instead).",
    )
    port: int = Field(default=8000, description="The port `dorado run` serves the API on.")
    bootstrap_api_key: str | None = Field(
        default=None,
        description="An organization with this key exists after `dorado migrate`. Empty: a "
        "key is generated once and printed by the migrate step.",
        json_schema_extra=_doc(
            secret=True,
            preset="dor-local-dev-key",
            note="The README's quickstart uses dor-local-dev-key: fine on a laptop, never on "
            "a network.",
            shown_default="generated and printed once",
        ),
    )
    secret_key: str | None = Field(
        default=None,
        description="Signs dashboard session cookies and authenticates the API to the "
        "inference service. Set it when the processes that use it do not share a disk "
        "(otherwise one is created in DORADO_SECRET_KEY_FILE), e.g. `openssl rand -hex 32`.",
        json_schema_extra=_doc(
            secret=True, shown_default="generated once into DORADO_SECRET_KEY_FILE"
        ),
    )
    secret_key_file: Path | None = Field(
        default=None,
        description="Where the secret is created and kept when DORADO_SECRET_KEY is empty "
        "(compose: a volume the API and the inference service share).",
        json_schema_extra=_doc(shown_default="$DORADO_HOME/secret_key"),
    )
    session_cookie_secure: bool = Field(
        default=False,
        description="1 when the dashboard is served over HTTPS (adds the Secure flag to its "
        "session cookie).",
    )
    max_upload_bytes: int = Field(
        default=512 * 1024 * 1024, description="Largest accepted upload in bytes (512 MiB)."
    )
    max_line_bytes: int = Field(
        default=DEFAULT_MAX_LINE_BYTES,
        gt=0,
        description="Longest accepted line of a training file in bytes (4 MiB): an upload "
        "with a longer line gets a 400 naming it, and no line is ever read whole beyond it.",
    )
    max_example_messages: int = Field(
        default=DEFAULT_MAX_EXAMPLE_MESSAGES,
        gt=0,
        description="Most messages one training example may hold; an upload with more gets "
        "a 400 naming the line (bounds the cost of validating one example).",
    )
    max_json_bytes: int = Field(
        default=2 * 1024 * 1024,
        description="Largest accepted JSON request body in bytes (2 MiB; 413 above it).",
    )
    rate_limit_per_minute: int = Field(
        default=3000,
        description="Requests per minute allowed to one API key (a token bucket: bursts up "
        "to this many); 429 with retry-after beyond it. Shared through Redis when "
        "DORADO_BROKER_URL is Redis. 0 turns limiting off.",
    )
    rate_limit_per_organization_per_minute: int = Field(
        default=6000,
        description="Requests per minute allowed to all API keys of one organization together "
        "(a second token bucket, so that minting keys does not multiply the per-key limit); "
        "429 with retry-after beyond it. 0 turns it off.",
    )
    max_keys_per_organization: int = Field(
        default=50,
        ge=0,
        description="Unrevoked API keys an organization may hold; creating one more through "
        "the API is a 400 (`key_limit_reached`) until one is revoked. 0 = no limit. "
        "`dorado-admin keys create` (the operator) is not bound by it.",
    )
    default_max_queued_jobs: int = Field(
        default=100,
        ge=0,
        description="`max_queued_jobs` of a new organization (jobs waiting to run; 429 "
        "`quota_exceeded` beyond it). Operators change it per organization with "
        "`dorado-admin orgs set-quota`. 0 = no limit for new organizations.",
    )
    # --- the inference service ----------------------------------------------------------------
    inference_url: str | None = Field(
        default=None,
        description="The inference service (POST /v1/chat/completions) the API forwards to. "
        "Empty: `dorado run` starts one itself (on DORADO_INFERENCE_PORT), others use "
        "http://127.0.0.1:8001.",
    )
    inference_port: int | None = Field(
        default=None,
        description="Port of the inference service started by `dorado run`.",
        json_schema_extra=_doc(shown_default="any free loopback port"),
    )
    adapter_cache_size: int = Field(
        default=8,
        description="Fine-tuned adapters the inference service keeps attached to their base "
        "model (LRU).",
    )
    chat_max_tokens: int = Field(
        default=1024,
        gt=0,
        description="Most tokens one chat completion may generate: a request asking for more "
        "(max_tokens or max_completion_tokens) is a 400 naming this cap, and a request naming "
        "none is cut there.",
    )
    # --- training workers ---------------------------------------------------------------------
    worker_gpus_per_job: str = Field(
        default="all",
        description='GPUs one training job uses on a worker: "all" visible CUDA devices or a '
        "number; more than one trains with torch.distributed (NCCL, one process per GPU; "
        'docs/deploy.md "Multi-GPU").',
    )
    worker_cpu_processes: int = Field(
        default=1,
        description="On a worker without CUDA: gloo processes per job (1: one training "
        "process, see DORADO_WORKER_ISOLATE_TRAINING).",
    )
    worker_isolate_training: bool = Field(
        default=True,
        description="1: a single-process job trains in a child process of the worker, so "
        "that a kernel OOM kill ends that process, not the worker, and fails the job as "
        "out_of_memory with what to change; 0: it trains in the worker's process (an OOM kill "
        "then takes the worker, and the job is re-queued when its lease expires).",
    )
    worker_dist_timeout_seconds: float = Field(
        default=1800.0,
        description="Seconds a multi-process job waits in a collective for a silent process "
        "before it fails.",
    )
    worker_pool: str = Field(
        default="default",
        description='The pool a training worker serves (docs/operations.md "Pools"): '
        '"default" consumes the queue dorado.jobs, any other pool dorado.jobs.<pool>.',
    )
    worker_gpu_memory_mb: int | None = Field(
        default=None,
        description="GPU memory of one of this worker's GPUs in MiB, used to route jobs to "
        "the smallest pool that fits.",
        json_schema_extra=_doc(shown_default="detected with torch.cuda (none on a CPU worker)"),
    )
    worker_heartbeat_seconds: float = Field(
        default=5.0, description="How often a worker refreshes its row in the workers registry."
    )
    worker_address: str = Field(
        default="",
        description="The address other worker hosts reach this one at when it leads a "
        "multi-node job (the job's rendezvous and rank 0's process group); a pod's IP on "
        "Kubernetes.",
        json_schema_extra=_doc(shown_default="the IP address the host name resolves to"),
    )
    gang_join_seconds: float = Field(
        default=300.0,
        description="How long the first host of a multi-node job waits for the other hosts it "
        "booked to join before it gives the attempt up (re-queued).",
    )
    pools: str = Field(
        default="",
        description="Pools new jobs may be routed to even while none of their workers runs "
        '(autoscaled to zero), with the GPU memory of one GPU in MiB: "default=23034,'
        'a100-80gb=81920". Registered workers add their own pools.',
        json_schema_extra=_doc(shown_default="only registered workers' pools"),
    )
    # --- the scheduler --------------------------------------------------------------------------
    lease_seconds: int = Field(
        default=120,
        description="A running job's lease; the scheduler re-queues a job whose worker stops "
        "renewing it.",
    )
    republish_after_seconds: int = Field(
        default=60,
        description="A queued job not picked up after this many seconds is published again.",
    )
    sweep_interval_seconds: float = Field(
        default=10.0, description="How often the scheduler sweeps (seconds)."
    )
    validation_timeout_seconds: int = Field(
        default=600,
        gt=0,
        description="Longest a validator may tokenize one job's files, in seconds; beyond it "
        "the job fails as validation_timeout. A validator holds a job for this long plus "
        "DORADO_LEASE_SECONDS, so no other validator takes it meanwhile.",
    )
    max_job_seconds: int = Field(
        default=86400,
        description="Longest a job may train, in seconds (24 h), before it fails as "
        'max_run_time_exceeded; a job may ask for less with the "max_run_seconds" extra field.',
    )
    max_job_retries: int = Field(
        default=3,
        description="How many times a job is retried automatically after its worker was lost "
        "or a transient error (object store, database) stopped it; user errors are never "
        "retried.",
    )
    # --- logs and metrics -----------------------------------------------------------------------
    log_level: str = Field(default="INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: str = Field(
        default="text",
        description='"json" for one JSON object per log line (ts, level, logger, pid, '
        "message, job_id).",
    )
    metrics_dir: Path | None = Field(
        default=None,
        description="prometheus-client multiprocess folder for the API's /metrics (alias of "
        "PROMETHEUS_MULTIPROC_DIR, which wins when both are set).",
        json_schema_extra=_doc(shown_default="none (one process's metrics)"),
    )

    # --- webhooks (docs/webhooks.md) ----------------------------------------------------------
    webhooks_allow_private: bool = Field(
        default=False,
        description="1: webhook endpoints may be loopback, private, link-local or metadata "
        "addresses (a closed network, tests); otherwise they are refused (SSRF).",
    )
    webhooks_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Longest a webhook receiver may take to accept the connection and answer, "
        "per attempt (seconds).",
    )
    webhooks_max_attempts: int = Field(
        default=12, ge=1, description="Attempts at one webhook delivery before it is failed."
    )
    webhooks_retry_base_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Webhook attempt n is retried after about base * 2^(n-1) seconds "
        "(jittered); with the defaults twelve attempts span about nine hours.",
    )
    webhooks_retry_max_seconds: float = Field(
        default=4 * 3600.0, gt=0, description="Longest wait between two webhook attempts."
    )
    webhooks_concurrency: int = Field(
        default=16,
        ge=1,
        description="Webhook deliveries in flight at once per scheduler process (a hanging "
        "receiver holds one slot).",
    )
    webhooks_poll_seconds: float = Field(
        default=0.5,
        gt=0,
        description="How often an idle delivery loop looks for due webhook deliveries.",
    )

    # --- experiment trackers (docs/integrations.md) ------------------------------------------
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description='The MLflow tracking server jobs with an {"type": "mlflow"} integration '
        "log to (http:// or https://). Empty: such jobs are refused.",
        json_schema_extra=_doc(example="http://mlflow:5000", shown_default="none (MLflow off)"),
    )

    # --- validation ---------------------------------------------------------------------------
    @field_validator("home", mode="after")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("database_url", "storage_url", mode="after")
    @classmethod
    def _under_home(cls, value: str, info: ValidationInfo) -> str:
        home = info.data.get("home")
        value = value.replace(HOME_PLACEHOLDER, str(home)) if home else value
        if info.field_name == "database_url":
            try:
                return normalize_database_url(value)
            except DatabaseUrlError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("model_cache_dir", mode="after")
    @classmethod
    def _cache_under_home(cls, value: Path, info: ValidationInfo) -> Path:
        home = info.data.get("home")
        text = str(value).replace(HOME_PLACEHOLDER, str(home)) if home else str(value)
        return Path(text).expanduser().resolve()

    @field_validator("secret_key_file", "metrics_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return value.expanduser().resolve() if value else None

    @field_validator("log_level", mode="after")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.strip().upper() not in LOG_LEVELS:
            raise ValueError(f"not a log level; use one of {', '.join(LOG_LEVELS)}")
        return value.strip().upper()

    @field_validator("log_format", mode="after")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value.strip().lower() not in LOG_FORMATS:
            raise ValueError(f"not a log format; use {' or '.join(LOG_FORMATS)}")
        return value.strip().lower()

    @field_validator("worker_gpus_per_job", mode="after")
    @classmethod
    def _gpus(cls, value: str) -> str:
        value = value.strip().lower()
        if value != "all" and not (value.isdigit() and int(value) > 0):
            raise ValueError('use "all" or a number of GPUs (at least 1)')
        return value

    @field_validator("mlflow_tracking_uri", mode="after")
    @classmethod
    def _tracking_uri(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("use the tracking server's http:// or https:// URL")
        return value.rstrip("/") if value else None

    @field_validator("pools", mode="after")
    @classmethod
    def _pools(cls, value: str) -> str:
        _parse_pools(value)
        return value

    # --- derived values ---------------------------------------------------------------------
    @property
    def declared_pools(self) -> dict[str, int | None]:
        """DORADO_POOLS as {pool: GPU memory in MiB (None: not given)}."""
        return _parse_pools(self.pools)

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
        """True for the embedded ``filesystem://`` Celery transport."""
        return self.broker_url.startswith("filesystem://")

    @property
    def json_logs(self) -> bool:
        """True when DORADO_LOG_FORMAT asks for one JSON object per log line."""
        return self.log_format == "json"


def _parse_pools(value: str) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, _, memory = item.partition("=")
        memory = memory.strip()
        if not name.strip() or (memory and not memory.isdigit()):
            raise ValueError(f'{item!r} is not "name=MiB" (e.g. default=23034)')
        out[name.strip()] = int(memory) if memory else None
    return out


def load_settings() -> Settings:
    """Build Settings from the environment; paths are made absolute.

    Raises SettingsError, one line per bad variable naming it and its value.
    """
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(describe_errors(exc)) from None


# --- error messages ---------------------------------------------------------------------------
_PROBLEMS = {
    "int_parsing": "not an integer",
    "int_from_float": "not an integer",
    "float_parsing": "not a number",
    "bool_parsing": "not a boolean (use 1 or 0, true or false)",
    "path_type": "not a path",
    "greater_than": "must be more than {gt}",
    "greater_than_equal": "must be at least {ge}",
}


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return alias if isinstance(alias, str) else ENV_PREFIX + field.upper()


def _field_for(loc: str) -> str | None:
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        names = [name, ENV_PREFIX.lower() + name]
        if isinstance(alias, AliasChoices):
            names += [str(choice).lower() for choice in alias.choices]
        elif isinstance(alias, str):
            names.append(alias.lower())
        if loc.lower() in names:
            return name
    return None


def describe_errors(exc: ValidationError) -> str:
    """``NAME='value': problem`` for each bad variable, on one line."""
    parts = []
    for error in exc.errors():
        loc = str(error["loc"][0]) if error["loc"] else ""
        field = _field_for(loc)
        variable = env_name(field) if field else loc.upper()
        shown = _shown_value(field, error.get("input"))
        if error["type"] == "value_error":
            problem = str(error.get("ctx", {}).get("error", error["msg"]))
        else:
            problem = _PROBLEMS.get(error["type"], error["msg"]).format(**error.get("ctx", {}))
        parts.append(f"{variable}={shown}: {problem}")
    return "; ".join(parts)


def _shown_value(field: str | None, value: object) -> str:
    facts = _facts(Settings.model_fields[field]) if field else {}
    if field == "database_url" and isinstance(value, str):
        return repr(masked(value) if "://" in value else value)
    if facts.get("secret"):
        return "'***'"
    return repr(value if isinstance(value, str) else str(value))


# --- documentation ------------------------------------------------------------------------------
def _facts(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    return dict(extra) if isinstance(extra, dict) else {}


def shown_default(field: str) -> str:
    """The default of ``field`` as the docs show it."""
    info = Settings.model_fields[field]
    facts = _facts(info)
    if "shown_default" in facts:
        return str(facts["shown_default"])
    default = info.default
    if isinstance(default, bool):
        return "1" if default else "0"
    if isinstance(default, float) and default.is_integer():
        default = int(default)
    return str(default) if default not in (None, "") else "none"


def _is_literal_default(field: str) -> bool:
    info = Settings.model_fields[field]
    return "shown_default" not in _facts(info) and info.default not in (None, "")


def markdown_table() -> str:
    """The README's configuration table."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for field, info in Settings.model_fields.items():
        meaning = (info.description or "").replace("|", "\\|")
        default = shown_default(field)
        default = f"`{default}`" if _is_literal_default(field) else default
        lines.append(f"| `{env_name(field)}` | {default} | {meaning} |")
    return "\n".join(lines) + "\n"


def env_example() -> str:
    """The Dorado section of ``.env.example``: each variable commented, with its default."""
    blocks = []
    for field, info in Settings.model_fields.items():
        facts = _facts(info)
        text = ("[secret] " if facts.get("secret") else "") + (info.description or "")
        text += f" Default: {shown_default(field)}."
        if facts.get("note"):
            text += " " + facts["note"]
        comment = textwrap.wrap(text, width=96, break_on_hyphens=False)
        name = env_name(field)
        if "example" in facts:
            line = f"# {name}={facts['example']}"
        else:
            line = f"{name}={facts.get('preset', '')}"
        blocks.append("\n".join([*(f"# {part}" for part in comment), line]))
    return "\n".join(blocks) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m core.settings --markdown|--env``: print the generated documentation."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--markdown"]:
        sys.stdout.write(markdown_table())
    elif args == ["--env"]:
        sys.stdout.write(env_example())
    else:
        sys.stderr.write("usage: python -m core.settings --markdown | --env\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
