"""Hyperparameters and adapter settings: validation and resolution of ``"auto"``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.errors import InvalidRequest

# lr = BASE_LEARNING_RATE[adapter type] * learning_rate_multiplier. Chosen so that the
# built-in SmolLM2 picks up a new style from ~50 examples in about three epochs.
BASE_LEARNING_RATE: dict[str, float] = {"lora": 1e-3, "dora": 1e-3}
MAX_RANK = 256


class AdapterConfig(BaseModel):
    """The ``adapter`` extra field of a job: which PEFT adapter to train."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["dora", "lora"] = "dora"
    r: int = Field(16, ge=1, le=MAX_RANK)
    alpha: int = Field(32, ge=1, le=4 * MAX_RANK)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"

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


def learning_rate(adapter_type: str, multiplier: float) -> float:
    return BASE_LEARNING_RATE[adapter_type] * multiplier
