"""ORM models: the database is the source of truth for every file, job and event."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.db.engine import Base
from core.timeutil import UTCDateTime, utcnow

JSONType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Operators may use /v1/admin/* and see every organization's jobs.
    is_operator: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # Scheduling quotas; None means unlimited.
    max_running_jobs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_queued_jobs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # When a job of this organization was last dispatched (fair-share tie-break).
    last_dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # When a validator last took a job of this organization (validators take them in turn).
    last_validated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Bytes of uploaded files plus trained adapters this organization may keep; None: no limit.
    storage_quota_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The organization's Weights & Biases API key, sealed (core.tenancy.tracker_credentials).
    wandb_api_key_encrypted: Mapped[str | None] = mapped_column(Text, nullable=True)
    wandb_api_key_hint: Mapped[str | None] = mapped_column(String(32), nullable=True)


class ApiKey(Base):
    """An API key, stored only as a SHA-256 hash plus a short visible prefix."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    prefix: Mapped[str] = mapped_column(String(32))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16), default="admin")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    organization: Mapped[Organization] = relationship()


class File(Base):
    __tablename__ = "files"
    __table_args__ = (Index("ix_files_org_created", "organization_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    status_details: Mapped[str | None] = mapped_column(Text, nullable=True)
    storage_key: Mapped[str] = mapped_column(String(512))
    example_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Model(Base):
    """A base model the platform can train on, or a fine-tuned model a job produced."""

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(256), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # "base" | "fine-tuned"
    owned_by: Mapped[str] = mapped_column(String(64))
    organization_id: Mapped[str | None] = mapped_column(
        ForeignKey("organizations.id"), nullable=True, index=True
    )
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    source: Mapped[str | None] = mapped_column(String(512), nullable=True)
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # A base model's architecture from its config.json (core.jobs.planner.Architecture), which
    # the memory planner sizes jobs by; None: not known (a GGUF file, or registered earlier).
    config: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_org_created", "organization_id", "created_at"),
        Index("ix_jobs_status_created", "status", "created_at"),
        # The dispatch query: queued jobs of one pool, best priority first, oldest first.
        Index("ix_jobs_dispatch", "status", "pool", "priority", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    model: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(32))
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSONType)
    adapter: Mapped[dict[str, Any]] = mapped_column(JSONType)
    method: Mapped[dict[str, Any]] = mapped_column(JSONType)
    seed: Mapped[int] = mapped_column(BigInteger)
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    user_metadata: Mapped[dict[str, str] | None] = mapped_column(
        "metadata", JSONType, nullable=True
    )
    fine_tuned_model: Mapped[str | None] = mapped_column(String(256), nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    result_files: Mapped[list[str]] = mapped_column(JSONType, default=list)
    # Experiment trackers the worker logs the run to (OpenAI's "integrations" shape).
    integrations: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType, nullable=True)
    adapter_key: Mapped[str | None] = mapped_column(String(512), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    estimated_finish: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Delivery and fencing: ``attempt`` grows on every claim, so a stale worker's writes
    # (guarded by ``attempt = :mine``) cannot land after its lease was taken away.
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    # Automatic retries spent (lost workers, transient errors); bounded by settings.
    retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # A pause is a request: the worker checkpoints at its next step, then sets ``paused``.
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # What validation found: examples, tokens, truncated examples (exact, model tokenizer).
    validation: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    # Dorado's extras: max_seq_length, learning_rate, checkpoint_every_n_steps, keep_checkpoints.
    options: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict, server_default="{}")
    worker: Mapped[str | None] = mapped_column(String(256), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Scheduling: higher priority is dispatched first; ``pool`` is the worker pool it runs in.
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    pool: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Bytes this job keeps in the object store (checkpoints, adapter, merged export), counted
    # in its organization's storage quota; refreshed whenever they change.
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # The memory planner's verdict (core.jobs.planner.MemoryPlan.as_dict): GPUs and estimated
    # peak MiB per device; None when the model's architecture is not known.
    resources: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    # A multi-node job's current gang (core.scheduling.gangs): the attempt, its hosts in node
    # order and where they meet (rendezvous address and port); None for one host.
    gang: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)


class Worker(Base):
    """A training worker process, registered on start and kept fresh by its heartbeat."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(256))
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    pool: Mapped[str] = mapped_column(String(64), index=True)
    gpus: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    gpu_memory_mb: Mapped[int | None] = mapped_column(Integer, nullable=True)
    current_job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # A draining worker finishes its current job and claims no new one.
    draining: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # Booked into a multi-node job's gang by the job's first host (core.scheduling.gangs):
    # the job, its attempt, this host's node rank, and when it joined (None: not yet).
    booked_job_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    booked_attempt: Mapped[int | None] = mapped_column(Integer, nullable=True)
    node_rank: Mapped[int | None] = mapped_column(Integer, nullable=True)
    joined_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_seq", "job_id", "seq"),)

    # ``seq`` orders events exactly (timestamps tie within a second); ``id`` is public.
    seq: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    level: Mapped[str] = mapped_column(String(8), default="info")
    type: Mapped[str] = mapped_column(String(16), default="message")
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)


class Checkpoint(Base):
    """A saved training state of a job (adapter + optimizer/scheduler/RNG/data position)."""

    __tablename__ = "checkpoints"
    __table_args__ = (Index("ix_checkpoints_job_step", "job_id", "step_number"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step_number: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(16))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSONType)
    storage_prefix: Mapped[str] = mapped_column(String(512))
    adapter_key: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AuditEvent(Base):
    """Who did what to which object, when and with which key (written by ``core.tenancy.audit``)."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_org_seq", "organization_id", "seq"),
        Index("ix_audit_events_action_seq", "action", "seq"),
    )

    # ``seq`` orders events exactly and is the pagination cursor; ``id`` is public.
    seq: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    organization_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    actor: Mapped[str] = mapped_column(String(256))
    api_key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(64))
    object_id: Mapped[str] = mapped_column(String(256))
    ip: Mapped[str | None] = mapped_column(String(64), nullable=True)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)


class IdempotencyKey(Base):
    """The first response to a POST carrying ``Idempotency-Key``, replayed on retries."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("organization_id", "key", name="uq_idempotency_keys_org_key"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # "in_progress" | "done"
    response_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response_body: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class DashboardSession(Base):
    """A dashboard sign-in. The cookie names it; signing out deletes the row, so a copy of
    the cookie taken before stops working (a signed cookie alone cannot be revoked)."""

    __tablename__ = "dashboard_sessions"

    # SHA-256 of the random session token the cookie carries (a leaked table opens nothing).
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WebhookEndpoint(Base):
    """Where an organization wants job events sent; its signing secret is kept encrypted
    with a key derived from the platform secret (``core.webhooks.signing``)."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    url: Mapped[str] = mapped_column(Text)
    event_types: Mapped[list[str]] = mapped_column(JSONType)
    secret_encrypted: Mapped[str] = mapped_column(Text)
    secret_hint: Mapped[str] = mapped_column(String(32))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True, server_default="1")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WebhookEvent(Base):
    """The outbox: an event, written in the transaction that changed the job's status."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"))
    type: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WebhookDelivery(Base):
    """One event for one endpoint: pending until the receiver answers 2xx, retried with
    backoff under the same ``webhook-id`` (this row's id), failed after its last attempt."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint_created", "endpoint_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("webhook_events.id", ondelete="CASCADE"))
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))  # "pending" | "succeeded" | "failed"
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_latency_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    response_excerpt: Mapped[str | None] = mapped_column(Text, nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
