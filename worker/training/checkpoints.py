"""Training checkpoints: adapter + optimizer + scheduler + RNG states + data position.

A checkpoint directory holds:

* ``adapter_config.json`` and ``adapter_model.safetensors``: the adapter in PEFT's layout, so a
  checkpoint can be loaded (and served) like a finished adapter;
* ``training_state.pt``: optimizer and scheduler state dicts and the RNG states, as tensors and
  plain containers only, read back with ``torch.load(weights_only=True)`` (no arbitrary pickle);
* ``training_state.json``: the data position (epoch and steps done in it), step and token
  counters, the metrics history and a fingerprint of the run that must match on resume.

A run sharded with FSDP writes the same files from the adapter and optimizer state gathered
onto rank 0 (``worker.training.fsdp``), so any checkpoint resumes on any number of ranks,
sharded or not.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from peft import PeftModel

STATE_JSON = "training_state.json"
STATE_PT = "training_state.pt"
FORMAT_VERSION = 1


class CheckpointMismatch(ValueError):
    """The checkpoint does not belong to this run (different data or hyperparameters)."""


@dataclass
class TrainingState:
    """Counters and position saved with a checkpoint (JSON-serialisable).

    ``epoch`` is the 0-based epoch of the next step and ``step_in_epoch`` the number of that
    epoch's steps already done; epoch plans are seeded per epoch, so this pins the data order.
    """

    step: int
    total_steps: int
    epoch: int
    step_in_epoch: int
    trained_tokens: int
    last_loss: float | None
    fingerprint: dict[str, Any]
    history: list[dict[str, float | None]] = field(default_factory=list)
    version: int = FORMAT_VERSION


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy (if installed) and torch (CPU and CUDA) RNG states as safe containers."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:
        return state
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state["numpy"] = [
        kind,
        torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        pos,
        has_gauss,
        cached,
    ]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))


def save_training_checkpoint(
    directory: Path,
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainingState,
    save_adapter: Any,
    grad_scaler: torch.amp.GradScaler | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> None:
    """Write a complete checkpoint into ``directory`` (created).

    ``save_adapter(model, directory)`` writes the PEFT files, so that checkpoints and the final
    adapter share one code path. ``grad_scaler``: an fp16 run's loss scale, kept so that a
    resumed run scales (and skips overflowing steps) exactly as the uninterrupted one.
    ``optimizer_state`` replaces ``optimizer.state_dict()`` (a sharded optimizer's state,
    gathered in that layout).
    """
    directory.mkdir(parents=True, exist_ok=True)
    save_adapter(model, directory)
    blob: dict[str, Any] = {
        "optimizer": optimizer.state_dict() if optimizer_state is None else optimizer_state,
        "scheduler": scheduler.state_dict(),
        "rng": capture_rng_state(),
    }
    if grad_scaler is not None and grad_scaler.is_enabled():
        blob["grad_scaler"] = grad_scaler.state_dict()
    torch.save(blob, directory / STATE_PT)
    (directory / STATE_JSON).write_text(json.dumps(asdict(state), indent=1), encoding="utf-8")


def read_training_state(directory: Path) -> TrainingState:
    """Read ``training_state.json`` of a checkpoint."""
    raw = json.loads((Path(directory) / STATE_JSON).read_text(encoding="utf-8"))
    if raw.get("version") != FORMAT_VERSION:
        raise CheckpointMismatch(f"unsupported checkpoint format {raw.get('version')!r}")
    return TrainingState(**raw)


def load_checkpoint_adapter(directory: Path, model: PeftModel) -> None:
    """Load a checkpoint's adapter weights into ``model`` (an unsharded PEFT model).

    Raises:
        CheckpointMismatch: the checkpoint's adapter has layers ``model`` lacks.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    device = next(p.device for p in model.parameters() if p.requires_grad)
    weights = load_file(Path(directory) / "adapter_model.safetensors", device=str(device))
    result = set_peft_model_state_dict(model, weights)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise CheckpointMismatch(f"checkpoint adapter has unexpected keys: {unexpected[:3]}")


def load_training_checkpoint(
    directory: Path,
    model: PeftModel | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    fingerprint: dict[str, Any],
    grad_scaler: torch.amp.GradScaler | None = None,
    load_optimizer_state: Callable[[dict[str, Any]], None] | None = None,
) -> TrainingState:
    """Restore adapter weights, optimizer, scheduler and RNG states from ``directory``.

    A sharded run passes ``model=None`` (its adapter weights were loaded with
    :func:`load_checkpoint_adapter` before sharding) and a ``load_optimizer_state`` that takes
    the saved optimizer state (``optimizer.load_state_dict`` by default).

    Raises:
        CheckpointMismatch: the checkpoint was written by a run with another fingerprint.
    """
    directory = Path(directory)
    state = read_training_state(directory)
    if state.fingerprint != fingerprint:
        diff = sorted(
            k
            for k in set(fingerprint) | set(state.fingerprint)
            if fingerprint.get(k) != state.fingerprint.get(k)
        )
        raise CheckpointMismatch(f"checkpoint does not match this run (differs in {diff})")
    if model is not None:
        load_checkpoint_adapter(directory, model)
    blob = torch.load(directory / STATE_PT, map_location="cpu", weights_only=True)
    (load_optimizer_state or optimizer.load_state_dict)(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    if grad_scaler is not None and "grad_scaler" in blob:
        grad_scaler.load_state_dict(blob["grad_scaler"])
    restore_rng_state(blob["rng"])
    return state
