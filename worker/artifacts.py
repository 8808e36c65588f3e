"""What a finished job leaves in the object store: the adapter and the metrics CSV."""

from __future__ import annotations

import csv
import tarfile
from pathlib import Path

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
OPTIONAL_ADAPTER_FILES = ("base_quantization.json",)
"""Kept with the PEFT files when a run wrote them: how a quantized base was stored
(``worker.training.quantization.QUANTIZATION_FILE``), which serving and merging read."""
METRICS_COLUMNS = (
    "step",
    "train_loss",
    "train_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
)
DPO_METRICS_COLUMNS = tuple(
    f"{prefix}_{name}"
    for prefix in ("train", "valid")
    for name in ("chosen_reward", "rejected_reward", "reward_margin", "preference_accuracy")
)
"""Added after :data:`METRICS_COLUMNS` in a DPO job's CSV (``train_loss`` is then DPO's loss,
``train_accuracy`` the preference accuracy)."""


def adapter_key(job_id: str) -> str:
    return f"jobs/{job_id}/adapter.tar.gz"


def adapter_file_key(job_id: str, name: str) -> str:
    return f"jobs/{job_id}/adapter/{name}"


def adapter_files(adapter_dir: Path) -> list[str]:
    """The names of ``adapter_dir``'s files that leave the worker: the PEFT files, plus each
    optional one present.

    Raises:
        FileNotFoundError: a PEFT file is missing.
    """
    missing = [name for name in ADAPTER_FILES if not (adapter_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"adapter is missing {', '.join(missing)}")
    optional = [name for name in OPTIONAL_ADAPTER_FILES if (adapter_dir / name).is_file()]
    return [*ADAPTER_FILES, *optional]


def pack_adapter(adapter_dir: Path, dest: Path) -> Path:
    """A .tar.gz with the adapter's files at its top level (extract, then from_pretrained)."""
    names = adapter_files(adapter_dir)
    with tarfile.open(dest, "w:gz") as tar:
        for name in names:
            tar.add(adapter_dir / name, arcname=name)
    return dest


def checkpoint_adapter_key(prefix: str) -> str:
    return f"{prefix}/adapter.tar.gz"


def write_metrics_csv(rows: list[dict], dest: Path) -> Path:
    """The result CSV: OpenAI's columns, plus DPO's when the rows carry them."""
    dpo = any("train_reward_margin" in row for row in rows)
    columns = METRICS_COLUMNS + (DPO_METRICS_COLUMNS if dpo else ())
    with open(dest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return dest
