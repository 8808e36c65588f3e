"""Request bodies (pydantic). Field rules follow OpenAI's documented limits."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.jobs.hyperparams import (
    AdapterConfig,
    DpoHyperparameters,
    Hyperparameters,
    TrainingOptions,
)
from core.scheduling.gangs import MAX_NODES


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: Hyperparameters | None = None


class DpoMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: DpoHyperparameters | None = None


class Method(BaseModel):
    """OpenAI's ``method``: its ``type`` and at most the settings object of that type."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _settings_match_type(self) -> Method:
        for other in ("supervised", "dpo", "reinforcement"):
            if other != self.type and getattr(self, other) is not None:
                raise ValueError(f"method.{other} is given but method.type is '{self.type}'")
        return self


class WandbOptions(BaseModel):
    """Where the W&B run goes; the API key is the organization's, never the job's."""

    model_config = ConfigDict(extra="forbid")
    project: str = Field(min_length=1, max_length=128)
    name: str | None = Field(None, max_length=128)
    entity: str | None = Field(None, max_length=128)
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] | None = Field(
        None, max_length=50
    )


class WandbIntegration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["wandb"]
    wandb: WandbOptions


class MlflowOptions(BaseModel):
    """Dorado's own: the experiment (created if missing) and run name on the operator's
    MLflow tracking server (DORADO_MLFLOW_TRACKING_URI)."""

    model_config = ConfigDict(extra="forbid")
    experiment: str = Field(min_length=1, max_length=256)
    run_name: str | None = Field(None, max_length=256)


class MlflowIntegration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["mlflow"]
    mlflow: MlflowOptions


Integration = Annotated[WandbIntegration | MlflowIntegration, Field(discriminator="type")]


class JobCreateRequest(BaseModel):
    """``POST /v1/fine_tuning/jobs``. Unknown fields are rejected, not silently dropped."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    training_file: str = Field(min_length=1, max_length=64)
    validation_file: str | None = Field(None, max_length=64)
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    seed: int | None = Field(None, ge=0, le=2_147_483_647)
    suffix: str | None = Field(None, min_length=1, max_length=64)
    metadata: dict[str, str] | None = None
    integrations: list[Integration] | None = Field(None, max_length=5)
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    # Dorado extras (the SDK sends them with extra_body).
    learning_rate: float | None = Field(None, gt=0, le=1)
    max_seq_length: int | None = Field(None, ge=16, le=131072)
    checkpoint_every_n_steps: int | None = Field(None, ge=1, le=2_147_483_647)
    keep_checkpoints: int | None = Field(None, ge=1, le=100)
    # At most DORADO_MAX_JOB_SECONDS (checked by the route: the schema has no settings).
    max_run_seconds: int | None = Field(None, ge=1, le=2_147_483_647)
    # Training precision instead of the worker's choice (worker.training.options.Precision).
    precision: Literal["auto", "fp32", "bf16", "fp16"] | None = None
    # The worker pool to run in (docs/operations.md "Pools"); default: the smallest that fits.
    pool: str | None = Field(None, min_length=1, max_length=64)
    # Worker hosts the job trains on together (a gang, core.scheduling.gangs); default 1.
    nodes: int | None = Field(None, ge=1, le=MAX_NODES)
    # Optimizer and memory options (warmup, weight decay, schedule, checkpointing, micro-batch).
    training: TrainingOptions = Field(default_factory=TrainingOptions)

    def options(self) -> dict[str, Any]:
        keys = (
            "learning_rate",
            "max_seq_length",
            "checkpoint_every_n_steps",
            "keep_checkpoints",
            "max_run_seconds",
            "pool",
            "precision",
            "nodes",
        )
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}

    def integration_dicts(self) -> list[dict[str, Any]]:
        """The integrations as stored and echoed: OpenAI's shape, unset fields as null."""
        return [item.model_dump() for item in self.integrations or []]

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return value
        if len(value) > 16:
            raise ValueError("at most 16 key-value pairs")
        for key, item in value.items():
            if len(key) > 64:
                raise ValueError(f"key '{key[:20]}...' is longer than 64 characters")
            if len(item) > 512:
                raise ValueError(f"value of '{key}' is longer than 512 characters")
        return value

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, value: str | None) -> str | None:
        if value is not None and not all(c.isalnum() or c in "-_" for c in value):
            raise ValueError("may contain only letters, digits, '-' and '_'")
        return value

    @property
    def method_type(self) -> str:
        """``method.type``; a request without ``method`` is supervised."""
        return self.method.type if self.method else "supervised"

    def resolved_hyperparameters(self) -> Hyperparameters:
        """The hyperparameters of the method (``DpoHyperparameters`` for dpo), else the
        top-level ``hyperparameters``, else all ``"auto"``."""
        if self.method and self.method.dpo and self.method.dpo.hyperparameters:
            return self.method.dpo.hyperparameters
        if self.method and self.method.supervised and self.method.supervised.hyperparameters:
            return self.method.supervised.hyperparameters
        if self.method_type == "dpo":
            top = self.hyperparameters.model_dump() if self.hyperparameters else {}
            return DpoHyperparameters(**top)
        return self.hyperparameters or Hyperparameters()


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message; content parts must be text (this service has no vision or audio)."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_TextPart] | None = None

    def plain(self) -> dict[str, str]:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        # Chat templates know "system"; OpenAI's newer "developer" role means the same here.
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content or ""}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The subset of OpenAI's chat completion request that Dorado serves."""

    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # Accepted so that clients sending them keep working; they change nothing here.
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only n=1 is supported")
        return value

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)
