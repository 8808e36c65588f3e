"""Adapter files on the inference host: local cache <- object store (``jobs/<id>/adapter/``)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from core.storage.objects import ObjectNotFound, ObjectStore, download_dir
from worker.cache import fill_once

log = logging.getLogger(__name__)

REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class AdapterUnavailable(LookupError):
    """The adapter's files are not in the object store (job deleted, or never finished)."""


@dataclass(frozen=True)
class AdapterRef:
    """Which adapter to attach: ``name`` (the job id) is its PEFT adapter name and cache key."""

    name: str
    prefix: str

    def __post_init__(self) -> None:
        # The name becomes a directory and a PEFT module key: ids only, never paths.
        if not _SAFE_NAME.match(self.name) or "." in self.name:
            raise ValueError(f"invalid adapter name: {self.name!r}")


def ensure_adapter(store: ObjectStore, cache_dir: Path, ref: AdapterRef) -> Path:
    """A local directory holding ``ref``'s PEFT files (downloaded once, shared by processes)."""

    def fill(tmp: Path) -> None:
        try:
            download_dir(store, ref.prefix, tmp)
        except ObjectNotFound as exc:
            raise AdapterUnavailable(f"adapter files missing under {ref.prefix}") from exc
        missing = [n for n in REQUIRED_FILES if not (tmp / n).is_file()]
        if missing:
            raise AdapterUnavailable(f"adapter under {ref.prefix} lacks {', '.join(missing)}")
        log.info("adapter %s downloaded from %s", ref.name, ref.prefix)

    return fill_once(cache_dir, ref.name, fill)
