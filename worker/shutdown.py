"""Graceful shutdown: on SIGTERM (or Ctrl-C) the worker's running job saves a checkpoint at its
next step and goes back to the queue, to continue on another worker."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)

_SHUTTING_DOWN = threading.Event()


def begin() -> None:
    if not _SHUTTING_DOWN.is_set():
        log.info("worker shutting down: the running job will checkpoint and be re-queued")
    _SHUTTING_DOWN.set()


def in_progress() -> bool:
    return _SHUTTING_DOWN.is_set()


def wait(seconds: float) -> None:
    """Sleep, but wake at once when the worker starts shutting down."""
    _SHUTTING_DOWN.wait(seconds)
