"""Hyperparameters and adapter settings: validation and resolution of ``"auto"``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

from core.errors import InvalidRequest

# lr = BASE_LEARNING_RATE[adapter type] * learning_rate_multiplier. Chosen so that the
# built-in SmolLM2 picks up a new style from ~50 examples in about three epochs.
BASE_LEARNING_RATE: dict[str, float] = {"lora": 1e-3, "dora": 1e-3}
MAX_RANK = 256

Quantization = Literal["nf4", "int8"]
"""How the frozen base model is stored while an adapter trains on it (bitsandbytes): ``"nf4"``
(4-bit NormalFloat with double quantization: QLoRA / QDoRA) or ``"int8"`` (LLM.int8(), LoRA only:
PEFT's DoRA initialisation leaves a CPU 8-bit layer without its scales)."""


class AdapterConfig(BaseModel):
    """The ``adapter`` extra field of a job: which PEFT adapter to train."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["dora", "lora"] = "dora"
    r: int = Field(16, ge=1, le=MAX_RANK)
    alpha: int = Field(32, ge=1, le=4 * MAX_RANK)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"
    quantization: Quantization | None = None

    @field_validator("target_modules")
    @classmethod
    def _modules(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, str):
            if value != "all-linear":
                raise ValueError('must be "all-linear" or a list of module names')
            return value
        if not value or not all(isinstance(v, str) and v.strip() for v in value):
            raise ValueError("must be a non-empty list of module names")
        return value

    @model_validator(mode="after")
    def _quantized_dora(self) -> AdapterConfig:
        if self.type == "dora" and self.quantization == "int8":
            raise ValueError('a DoRA adapter needs quantization "nf4" or null, not "int8"')
        return self


class Hyperparameters(BaseModel):
    """OpenAI's supervised hyperparameters; each may be ``"auto"``."""

    model_config = ConfigDict(extra="forbid")

    n_epochs: Literal["auto"] | int = Field("auto")
    batch_size: Literal["auto"] | int = Field("auto")
    learning_rate_multiplier: Literal["auto"] | float = Field("auto")

    @field_validator("n_epochs")
    @classmethod
    def _epochs(cls, v: Any) -> Any:
        if v != "auto" and not 1 <= v <= 50:
            raise ValueError("must be between 1 and 50")
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, v: Any) -> Any:
        if v != "auto" and not 1 <= v <= 256:
            raise ValueError("must be between 1 and 256")
        return v

    @field_validator("learning_rate_multiplier")
    @classmethod
    def _lrm(cls, v: Any) -> Any:
        if v != "auto" and not 0 < v <= 100:
            raise ValueError("must be greater than 0 and at most 100")
        return v


def check_operator_caps(options: dict[str, Any], *, max_job_seconds: int) -> None:
    """Raise InvalidRequest when a job option asks for more than the operator allows.

    A tenant's option may only tighten an operator's limit: ``max_run_seconds`` above
    ``DORADO_MAX_JOB_SECONDS`` is refused rather than silently raising the platform's cap.
    """
    requested = options.get("max_run_seconds")
    if requested is not None and requested > max_job_seconds:
        raise InvalidRequest(
            f"max_run_seconds is {requested}; this platform allows at most {max_job_seconds} s "
            "per job (DORADO_MAX_JOB_SECONDS). Ask for less, or leave it out for the maximum.",
            param="max_run_seconds",
            code="above_operator_limit",
        )


# OpenAI's published bounds for DPO's beta (FineTuneDPOHyperparameters: a number in (0, 2],
# default "auto") and the value "auto" resolves to, as in its DPO guide and TRL's DPOConfig.
MAX_DPO_BETA = 2.0
DEFAULT_DPO_BETA = 0.1


class DpoHyperparameters(Hyperparameters):
    """OpenAI's DPO hyperparameters: the supervised ones plus ``beta``; each may be ``"auto"``."""

    beta: Literal["auto"] | float = Field("auto")

    @field_validator("beta")
    @classmethod
    def _beta(cls, v: Any) -> Any:
        if v != "auto" and not 0 < v <= MAX_DPO_BETA:
            raise ValueError(f"must be greater than 0 and at most {MAX_DPO_BETA:g}")
        return v


def auto_epochs(n_examples: int) -> int:
    """OpenAI cookbook rule: aim for 3 epochs, at least ~100 and at most ~25,000 examples seen."""
    if n_examples * 3 < 100:
        return min(25, 100 // max(1, n_examples))
    if n_examples * 3 > 25_000:
        return max(1, 25_000 // n_examples)
    return 3


def auto_batch_size(n_examples: int) -> int:
    """About a tenth of the data per step, between 1 and 8 examples."""
    return max(1, min(8, round(n_examples / 10)))


def resolve(h: Hyperparameters, n_examples: int) -> dict[str, int | float]:
    """Replace every ``"auto"`` with the value training will use."""
    return {
        "n_epochs": auto_epochs(n_examples) if h.n_epochs == "auto" else int(h.n_epochs),
        "batch_size": auto_batch_size(n_examples) if h.batch_size == "auto" else int(h.batch_size),
        "learning_rate_multiplier": (
            1.0 if h.learning_rate_multiplier == "auto" else float(h.learning_rate_multiplier)
        ),
    }


def resolve_dpo(h: DpoHyperparameters, n_examples: int) -> dict[str, int | float]:
    """:func:`resolve` for a DPO job, ``beta`` included (``n_examples`` counts pairs)."""
    beta = DEFAULT_DPO_BETA if h.beta == "auto" else float(h.beta)
    return {**resolve(h, n_examples), "beta": beta}


def learning_rate(adapter_type: str, multiplier: float) -> float:
    """The absolute learning rate of an adapter type at ``multiplier`` times its base rate."""
    return BASE_LEARNING_RATE[adapter_type] * multiplier


# --- training options (the ``training`` extra field) ---------------------------------------

LARGE_MODEL_PARAMETERS = 1_000_000_000
HUGE_MODEL_PARAMETERS = 13_000_000_000


class TrainingOptions(BaseModel):
    """The ``training`` extra field of a job: how the optimizer runs and what memory it uses.

    Each option may be ``"auto"`` (the default), resolved when the job is created by
    :func:`resolve_training` from the model's size; the job echoes the values used in its
    ``options``. ``gradient_checkpointing: "auto"`` is decided by the memory planner
    (``core.jobs.planner``): on only when the job would not fit its GPUs without it.
    The base model's quantization is the adapter's (``AdapterConfig.quantization``): a
    ``training.quantization`` is refused with a 400 that says so.
    """

    model_config = ConfigDict(extra="forbid")

    # Strict: a JSON true or "0.1" is an error, not 1.0 or 0.1.
    warmup_ratio: Literal["auto"] | Annotated[float, Field(strict=True, ge=0.0, le=0.5)] = Field(
        "auto", description="Share of the steps with a linear learning-rate warmup, 0-0.5"
    )
    weight_decay: Literal["auto"] | Annotated[float, Field(strict=True, ge=0.0, le=1.0)] = Field(
        "auto", description="AdamW weight decay of the adapter's matrices, 0-1"
    )
    lr_scheduler: Literal["auto", "linear", "cosine", "constant"] = Field(
        "auto", description="Learning-rate decay after the warmup"
    )
    gradient_checkpointing: Literal["auto"] | StrictBool = Field(
        "auto",
        description='Recompute activations in the backward pass; "auto": only when the job '
        "would not fit its GPUs without it",
    )
    micro_batch_tokens: Literal["auto"] | Annotated[int, Field(strict=True, ge=256, le=262_144)] = (
        Field("auto", description="Padded tokens per forward/backward pass (gradient accumulation)")
    )

    @model_validator(mode="before")
    @classmethod
    def _quantization_is_the_adapters(cls, data: Any) -> Any:
        # An earlier API took it here (and refused it); say where it went, not just "extra".
        if isinstance(data, dict) and "quantization" in data:
            raise ValueError(
                'quantization is an adapter setting: set adapter.quantization ("nf4" or '
                '"int8") instead of training.quantization'
            )
        return data


def training_defaults(parameters: int | None) -> dict[str, Any]:
    """What ``"auto"`` means for a model of ``parameters`` (None: unknown, sized as small).

    Below 1B parameters (the built-in models): no warmup, a linear decay and 8192-token
    micro-batches, the values the engine was tuned with. From 1B: a 3% warmup and a cosine
    decay (the usual recipe for large models, whose early steps are the least stable), and
    micro-batches of 4096 tokens (2048 from 13B) so that activations stay a fraction of a GPU.
    Weight decay is 0 at every size: the adapter starts at zero, and decay pulls it back there.
    """
    size = parameters or 0
    large = size >= LARGE_MODEL_PARAMETERS
    return {
        "warmup_ratio": 0.03 if large else 0.0,
        "weight_decay": 0.0,
        "lr_scheduler": "cosine" if large else "linear",
        "micro_batch_tokens": (2048 if size >= HUGE_MODEL_PARAMETERS else 4096 if large else 8192),
    }


def resolve_training(options: TrainingOptions, parameters: int | None) -> dict[str, Any]:
    """The options with every ``"auto"`` replaced, except ``gradient_checkpointing`` (None:
    the memory planner decides)."""
    defaults = training_defaults(parameters)
    resolved: dict[str, Any] = {}
    for key, default in defaults.items():
        value = getattr(options, key)
        resolved[key] = default if value == "auto" else value
    resolved["warmup_ratio"] = float(resolved["warmup_ratio"])
    resolved["weight_decay"] = float(resolved["weight_decay"])
    checkpointing = options.gradient_checkpointing
    resolved["gradient_checkpointing"] = None if checkpointing == "auto" else checkpointing
    return resolved
