"""This worker's entry in the workers registry (core.scheduling.workers).

Celery signals (worker/celery_app.py) drive it: once Celery has set the worker up, a training
worker (one consuming ``dorado.jobs``) switches to its pool's queue and starts a heartbeat
thread; the thread registers the worker, refreshes its row every few seconds with the job it
runs, and follows the operator's drain flag by stopping (or resuming) consumption of the
queue, so a drained worker's messages stay in the broker for other workers. On shutdown the
row is marked stopped.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field

from celery import Celery

from core.db.engine import session_scope
from core.scheduling import workers
from core.scheduling.broker import JOBS_QUEUE, jobs_queue
from core.scheduling.gangs import host_queue
from core.settings import Settings, load_settings

log = logging.getLogger(__name__)


@dataclass
class _State:
    name: str | None = None
    pool: str = "default"
    queue: str = JOBS_QUEUE
    current_job: str | None = None
    draining: bool = False
    consuming: bool = True
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


_state = _State()


def name() -> str | None:
    """This worker's registry name (its Celery node name), None outside a training worker."""
    return _state.name


def pool() -> str:
    return _state.pool


def queue() -> str:
    return _state.queue


def set_current_job(job_id: str | None) -> None:
    _state.current_job = job_id


def setup(nodename: str, worker) -> None:
    """On ``celeryd_after_setup``: a training worker consumes its pool's queue instead of
    ``dorado.jobs`` and gets a registry name. Other workers (validators) are left alone."""
    queues = worker.app.amqp.queues
    if JOBS_QUEUE not in queues.consume_from:
        return
    settings = load_settings()
    _state.name, _state.pool = nodename, settings.worker_pool
    _state.queue = jobs_queue(settings.worker_pool)
    if _state.queue != JOBS_QUEUE:
        queues.select_add(_state.queue)
        queues.deselect([JOBS_QUEUE])
    # Its own queue: the wake-up of a multi-node job's first host that booked this one.
    queues.select_add(host_queue(nodename))
    log.info("worker %s serves pool %s (queue %s)", nodename, _state.pool, _state.queue)


def start(app: Celery) -> None:
    """On ``worker_ready``: start the heartbeat thread (training workers only)."""
    if _state.name is None or _state.thread is not None:
        return
    settings = load_settings()
    _state.thread = threading.Thread(
        target=_run, args=(app, settings, _state.name), daemon=True, name="dorado-heartbeat"
    )
    _state.thread.start()
    threading.Thread(target=_warm_rank_server, daemon=True, name="dorado-rank-warmup").start()


def _warm_rank_server() -> None:
    from worker.training.distributed import warm_rank_server

    try:
        seconds = warm_rank_server()
    except Exception:  # the first job starts the server instead (and reports what fails)
        log.exception("could not start the training process server")
        return
    log.info("training process server ready in %.1f s (torch, transformers, peft loaded)", seconds)


def stop() -> None:
    """On ``worker_shutdown``: stop the heartbeat and mark the worker stopped."""
    if _state.name is None:
        return
    _state.stop.set()
    if _state.thread is not None:
        _state.thread.join(timeout=5)
    _stop_rank_server()
    try:
        with session_scope(load_settings().database_url) as session:
            workers.mark_stopped(session, _state.name)
    except Exception:  # database down: the row goes stale and shows as lost
        log.exception("could not mark worker %s stopped", _state.name)


def _stop_rank_server() -> None:
    # The fork server would exit once it sees the worker gone; stop it now so that a worker
    # that has stopped leaves no process behind.
    try:
        from multiprocessing import forkserver

        forkserver._forkserver._stop()  # type: ignore[attr-defined]
    except Exception:  # not started, or already gone
        log.debug("no training process server to stop")


def detect_gpus(settings: Settings) -> tuple[int, int | None]:
    """(GPU count, memory of the smallest GPU in MiB); DORADO_WORKER_GPU_MEMORY_MB wins."""
    count, memory = 0, None
    try:
        import torch

        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            memory = (
                min(torch.cuda.get_device_properties(i).total_memory for i in range(count)) // 2**20
            )
    except Exception:  # no torch, or a broken driver: a CPU worker
        log.warning("could not query CUDA devices", exc_info=True)
    if settings.worker_gpu_memory_mb is not None:
        memory = settings.worker_gpu_memory_mb
    return count, memory


def _register(settings: Settings, name: str) -> None:
    gpus, memory = detect_gpus(settings)
    info = workers.WorkerInfo(
        name=name,
        hostname=socket.gethostname(),
        pid=os.getpid(),
        pool=_state.pool,
        gpus=gpus,
        gpu_memory_mb=memory,
    )
    with session_scope(settings.database_url) as session:
        _state.draining = workers.register(session, info).draining
    log.info(
        "worker %s registered (pool %s, %s GPU(s), %s MiB)", info.name, info.pool, gpus, memory
    )


def _run(app: Celery, settings: Settings, name: str) -> None:
    registered = False
    while not _state.stop.is_set():
        try:
            if not registered:
                _register(settings, name)
                registered = True
            with session_scope(settings.database_url) as session:
                draining = workers.heartbeat(session, name, _state.current_job)
            _state.draining = bool(draining)
            _follow_drain(app, name)
        except Exception:  # database briefly down: keep beating
            log.exception("worker heartbeat failed")
        _state.stop.wait(settings.worker_heartbeat_seconds)


def _follow_drain(app: Celery, name: str) -> None:
    """Stop consuming the pool's queue while draining (messages stay in the broker for other
    workers), resume when undrained. Remote control reaches this worker's own consumer."""
    want = not _state.draining
    if want == _state.consuming:
        return
    if want:
        app.control.add_consumer(_state.queue, destination=[name], reply=False)
        log.info("worker %s undrained: consuming %s again", name, _state.queue)
    else:
        app.control.cancel_consumer(_state.queue, destination=[name], reply=False)
        log.info("worker %s draining: stopped consuming %s", name, _state.queue)
    _state.consuming = want


def draining() -> bool:
    """The drain flag as of the last heartbeat (the claim checks the database itself)."""
    return _state.draining
