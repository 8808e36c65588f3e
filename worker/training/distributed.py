"""Train one job on several devices of one worker with ``torch.distributed``.

:func:`run_training` is what the worker calls. More than one process goes through
:func:`train_data_parallel`, which starts ``world_size`` rank processes, joins them into a
process group (NCCL on CUDA, one GPU per rank; gloo on CPU) and runs
:func:`worker.training.recipe.train` in each. One process goes the same way with
``isolate`` (``DORADO_WORKER_ISOLATE_TRAINING``, the worker's default): a single rank, with no
group, so that a kernel OOM kill ends the training process and not the worker, which then
reports it (see worker.failures); without ``isolate`` it trains in the caller's process.
Ranks are forked from a multiprocessing fork server that the worker starts once, at boot
(:func:`warm_rank_server`), and that has imported torch, transformers and peft: a rank starts
in a fraction of a second instead of paying those imports (about 5 s of CPU) per job.
The recipe sees the group (``worker.training.parallel``): every rank trains on its share of
every batch, gradients are summed across ranks, and rank 0 alone talks to the reporter, writes
checkpoints and saves the adapter. The result equals a single-process run of the same global
batch up to float rounding.

The reporter stays in the calling process (it holds database connections, a lease heartbeat
thread and the worker's shutdown flag, none of which can cross a process boundary). Rank 0
gets a :class:`ReporterProxy` whose every call is carried over a pipe and answered by the caller,
so cancel, pause, metrics and checkpoints behave exactly as in a single-process run.

The caller supervises the ranks. A rank that dies (killed, segfault, out of memory) without
reporting ends the run with :class:`~worker.training.spec.TrainingProcessLost`; a rank that
raises ends it with that exception; in both cases the other ranks, which may be blocked in a
collective waiting for the dead one, are killed after a short grace period. The process
group's own timeout bounds any collective that hangs without a crash. Ranks ignore SIGINT and
SIGTERM (a shutdown reaches them as a pause through rank 0's reporter) and die with their
parent, so a worker killed outright leaves no rank behind. The launcher sets each rank's
``oom_score_adj`` to the most (1000) as it starts: when memory runs out, the kernel kills a
rank (whose death the worker reports as out of memory) and never the worker first (whose job
would wait for its lease to expire, as a lost worker).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing import connection, get_context
from pathlib import Path
from typing import Any

import torch

from worker.training.spec import (
    CheckpointInfo,
    Reporter,
    TrainingPaused,
    TrainingProcessLost,
    TrainingStopped,
    TrainResult,
    TrainSpec,
)

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 1800.0
"""Default process-group timeout: how long a collective may wait for a silent rank."""

FAILURE_GRACE_SECONDS = 10.0
"""After one rank failed, how long the others get to report their own error and exit."""

EXIT_GRACE_SECONDS = 5.0
"""How long ranks get to exit by themselves once the run is decided."""

RANK_OOM_SCORE_ADJ = 1000
"""A rank's ``oom_score_adj`` (-1000..1000): the kernel's first choice when memory runs out.
Raising it needs no privilege."""

REPORTER_METHODS = frozenset(
    {"metrics", "message", "should_stop", "should_pause", "save_checkpoint"}
)


@dataclass(frozen=True)
class MultiNode:
    """This host's place in a job that runs on several hosts (a gang, core.scheduling.gangs):
    ``nodes`` hosts of ``ranks_per_node`` processes each, meeting at rank 0's ``address`` and
    ``port`` on node 0. Global ranks are numbered host by host."""

    node_rank: int
    nodes: int
    address: str
    port: int

    def __post_init__(self) -> None:
        if not 0 <= self.node_rank < self.nodes:
            raise ValueError(f"node_rank {self.node_rank} outside 0..{self.nodes - 1}")


# A rank's collective failing because a process on another host went away reads like one of
# these (gloo: "Connection closed by peer", NCCL: "remote process exited", a store timeout...).
_PEER_LOST = re.compile(
    r"Dist(Backend|Network|Store)Error|Connection (closed|reset) by peer|Broken pipe|"
    r"remote process|Socket Timeout|timed out|ProcessGroup|gloo|NCCL",
    re.IGNORECASE,
)


def peer_lost(exc: BaseException) -> bool:
    """Whether a rank's error is a collective that lost its peers (as opposed to an error of
    the rank's own: bad data, out of memory)."""
    return isinstance(exc, RuntimeError) and bool(_PEER_LOST.search(f"{type(exc).__name__}: {exc}"))


@dataclass(frozen=True)
class ParallelPlan:
    """How many processes train one job, and over which ``torch.distributed`` backend."""

    world_size: int
    backend: str

    @property
    def device_type(self) -> str:
        """ "cuda" for NCCL (one GPU per rank), else "cpu"."""
        return "cuda" if self.backend == "nccl" else "cpu"


def plan_parallelism(gpus_per_job: str, cpu_processes: int) -> ParallelPlan:
    """The plan for a worker's jobs from its settings.

    Args:
        gpus_per_job: ``"all"`` (every visible CUDA device) or a number of GPUs per job.
        cpu_processes: gloo processes per job when no CUDA device is visible.

    More GPUs asked for than are visible is capped (with a warning) at those visible.

    Raises:
        RuntimeError: a setting that is not a count >= 1 (a worker misconfiguration, not
            something the job's owner can fix).
    """
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_gpus:
        value = gpus_per_job.strip().lower()
        wanted = n_gpus if value in ("", "all") else _count(value, "DORADO_WORKER_GPUS_PER_JOB")
        if wanted > n_gpus:
            logger.warning(
                "%d GPUs per job configured but %d visible; using %d", wanted, n_gpus, n_gpus
            )
        return ParallelPlan(min(wanted, n_gpus), "nccl")
    return ParallelPlan(_count(str(cpu_processes), "DORADO_WORKER_CPU_PROCESSES"), "gloo")


def _count(value: str, setting: str) -> int:
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise RuntimeError(f"{setting} must be a number >= 1 (or 'all' for GPUs), got {value!r}")
    return count


class SilentReporter:
    """The reporter of ranks other than 0 (never consulted by the recipe; a safe default)."""

    def metrics(self, *args: Any, **kwargs: Any) -> None:
        """Ignore metrics."""

    def message(self, text: str, level: str = "info") -> None:
        """Ignore messages."""

    def should_stop(self) -> bool:
        """Never stop on its own (rank 0 decides for all)."""
        return False

    def should_pause(self) -> bool:
        """Never pause on its own (rank 0 decides for all)."""
        return False

    def save_checkpoint(self, info: CheckpointInfo) -> None:
        """Ignore checkpoints."""


class ReporterProxy:
    """Rank 0's reporter: forwards every call to the launcher's reporter and waits for it.

    ``save_checkpoint`` returns only once the launcher has persisted the directory, which the
    recipe deletes afterwards; both processes share the machine's file system.
    """

    def __init__(self, conn: connection.Connection) -> None:
        self._conn = conn

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self._conn.send(("call", name, args, kwargs))
        status, value = self._conn.recv()
        if status == "error":
            raise value
        return value

    def metrics(self, *args: Any, **kwargs: Any) -> None:
        """Forward metrics."""
        self._call("metrics", *args, **kwargs)

    def message(self, text: str, level: str = "info") -> None:
        """Forward an event message."""
        self._call("message", text, level)

    def should_stop(self) -> bool:
        """Ask the launcher's reporter."""
        return bool(self._call("should_stop"))

    def should_pause(self) -> bool:
        """Ask the launcher's reporter."""
        return bool(self._call("should_pause"))

    def save_checkpoint(self, info: CheckpointInfo) -> None:
        """Have the launcher persist the checkpoint directory."""
        self._call("save_checkpoint", info)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (``""``: on every interface, for a rendezvous
    other hosts reach), for the group's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def default_backend() -> str:
    """NCCL when CUDA is available, else gloo."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a RuntimeError naming it."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _prefer_as_oom_victim(pid: int | None) -> None:
    # Set by the launcher as soon as the rank exists: a rank's first allocations (importing
    # torch) come before any line of its own could run.
    if pid is None:  # not started
        return
    try:
        Path(f"/proc/{pid}/oom_score_adj").write_text(str(RANK_OOM_SCORE_ADJ))
    except OSError:  # not Linux, or the rank already exited: the kernel picks by size alone
        logger.debug("could not raise the oom_score_adj of rank process %s", pid)


# What every rank imports, loaded once per worker by the fork server its ranks start from: a
# spawned rank paid these imports (about 5 s of CPU here) at the start of every job.
RANK_PRELOAD = [
    "worker.training.rank_server",
    "torch",
    "transformers",
    "peft",
    "worker.training.recipe",
]


def _rank_context() -> Any:
    """Ranks are forked from a fork server (a clean process started once per worker, which
    imported :data:`RANK_PRELOAD`), never from the worker itself, whose threads (Celery's pool,
    the lease heartbeat) a plain fork would copy in whatever state they hold."""
    ctx = get_context("forkserver")
    ctx.set_forkserver_preload(RANK_PRELOAD)
    return ctx


def _warmup() -> None:
    """The rank server's first child: returns at once."""


def warm_rank_server() -> float:
    """Start the fork server that ranks start from and wait until its imports are done (a
    worker calls this once it is up, so that its first job starts as fast as the next, and the
    server's memory is there before any job's); the seconds it took."""
    started = time.monotonic()
    proc = _rank_context().Process(target=_warmup, name="dorado-rank-warmup")
    proc.start()
    proc.join()
    return time.monotonic() - started


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: a rank must not train on (and hold a GPU) after its worker was killed.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the launcher's cleanup still applies
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@dataclass(frozen=True)
class _RankConfig:
    world_size: int
    port: int
    backend: str
    timeout_seconds: float
    parent_pid: int
    log_setup: Callable[[], None] | None
    address: str = "127.0.0.1"
    rank_offset: int = 0
    local_world_size: int = 1


def _rank_main(
    local_rank: int,
    config: _RankConfig,
    conn: connection.Connection,
    args: tuple[TrainSpec, Path, Path, Path],
    kwargs: dict[str, Any],
) -> None:
    """Entry point of one rank process."""
    # A shutdown reaches the ranks as a pause decided by rank 0's reporter; the signal itself
    # (sent to the worker's whole process group by some supervisors) must not kill them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    if not _alive(config.parent_pid):  # the worker died before the line above
        os._exit(1)
    if config.log_setup is not None:
        config.log_setup()
    import torch.distributed as dist

    from worker.training.recipe import train

    rank = config.rank_offset + local_rank
    os.environ["LOCAL_RANK"] = str(local_rank)  # which of this host's GPUs (recipe.select_device)
    if config.backend == "gloo":
        # The ranks share the machine's cores; more threads than cores each only thrash.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // config.local_world_size))
    try:
        if config.world_size > 1:  # one isolated process trains alone, without a group
            dist.init_process_group(
                config.backend,
                init_method=f"tcp://{config.address}:{config.port}",
                rank=rank,
                world_size=config.world_size,
                timeout=timedelta(seconds=config.timeout_seconds),
            )
        reporter = ReporterProxy(conn) if rank == 0 else SilentReporter()
        result = train(*args, reporter, **kwargs)
        conn.send(("result", result))
    except BaseException as exc:
        conn.send(("raised", _portable(exc)))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        conn.close()


def train_data_parallel(
    world_size: int,
    spec: TrainSpec,
    base_model_dir: Path,
    training_file: Path,
    output_dir: Path,
    reporter: Reporter,
    *,
    validation_file: Path | None = None,
    resume_from: Path | None = None,
    backend: str | None = None,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    log_setup: Callable[[], None] | None = None,
    multinode: MultiNode | None = None,
    watchdog: Callable[[], str | None] | None = None,
    watch_seconds: float = 5.0,
) -> TrainResult:
    """Run :func:`~worker.training.recipe.train` on ``world_size`` processes of this host;
    the result of its first.

    ``reporter`` is called in this process, on behalf of rank 0. ``log_setup`` (a picklable
    function) configures logging in each rank process. With ``multinode`` these are this
    host's share of a group of ``world_size * nodes`` ranks that meets at the node-0 host's
    address; only there does a rank 0 (and the reporter) run. ``watchdog``, called every
    ``watch_seconds``, returns why to give the run up (another host of the job was lost), or
    None; its answer ends the run with ``TrainingProcessLost``, as does a rank whose collective
    lost its peers on another host.

    Raises:
        whatever rank 0's ``train`` raised (``TrainingStopped``, ``TrainingPaused``, ...), the
        first error of another rank, an error the reporter raised, or ``TrainingProcessLost``
        when a rank died without a word.
    """
    if world_size < 1:
        raise ValueError("world_size must be >= 1")
    ctx = _rank_context()
    nodes = multinode.nodes if multinode else 1
    config = _RankConfig(
        world_size=world_size * nodes,
        port=multinode.port if multinode else free_port(),
        backend=backend or default_backend(),
        timeout_seconds=timeout_seconds,
        parent_pid=os.getpid(),
        log_setup=log_setup,
        address=multinode.address if multinode else "127.0.0.1",
        rank_offset=multinode.node_rank * world_size if multinode else 0,
        local_world_size=world_size,
    )
    args = (spec, Path(base_model_dir), Path(training_file), Path(output_dir))
    kwargs = {"validation_file": validation_file, "resume_from": resume_from}
    ranks: list[Any] = []
    conns: list[connection.Connection] = []
    try:
        for rank in range(world_size):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(
                target=_rank_main,
                args=(rank, config, theirs, args, kwargs),
                name=f"dorado-rank-{rank}",
            )
            proc.start()
            _prefer_as_oom_victim(proc.pid)
            theirs.close()
            ranks.append(proc)
            conns.append(ours)
        supervisor = _Supervisor(
            ranks,
            conns,
            reporter,
            watchdog=watchdog,
            watch_seconds=watch_seconds,
            remote_peers=nodes > 1,
        )
        return supervisor.run()
    finally:
        # Ranks that finished exit by themselves; any still blocked (in a collective waiting
        # for a failed peer, say) are killed.
        deadline = time.monotonic() + EXIT_GRACE_SECONDS
        for proc in ranks:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
        for proc in ranks:
            if proc.is_alive():
                proc.kill()
            proc.join()
        for conn in conns:
            conn.close()


class _Supervisor:
    """Serves rank 0's reporter calls and watches every rank until all have finished."""

    def __init__(
        self,
        ranks: list[Any],
        conns: list[connection.Connection],
        reporter: Reporter,
        *,
        watchdog: Callable[[], str | None] | None = None,
        watch_seconds: float = 5.0,
        remote_peers: bool = False,
    ) -> None:
        self.ranks = ranks
        self.conns = conns
        self.reporter = reporter
        self.watchdog = watchdog
        self.watch_seconds = watch_seconds
        self.remote_peers = remote_peers
        self.next_watch = time.monotonic() + watch_seconds
        self.outcomes: dict[int, tuple[str, Any]] = {}
        self.first_error: BaseException | None = None
        self.reporter_error: BaseException | None = None
        self.host_lost: TrainingProcessLost | None = None
        self.gave_up_at: float | None = None

    def run(self) -> TrainResult:
        open_conns = dict(enumerate(self.conns))
        watching = {proc.sentinel: rank for rank, proc in enumerate(self.ranks)}
        while len(self.outcomes) < len(self.ranks):
            if self.gave_up_at is not None and time.monotonic() > self.gave_up_at:
                break
            self._watch()
            ready = connection.wait([*open_conns.values(), *watching], timeout=1.0)
            for item in ready:
                if item in watching:
                    rank = watching.pop(item)
                    self._exited(rank, open_conns)
                    continue
                rank = next(r for r, c in open_conns.items() if c is item)
                self._receive(rank, open_conns[rank], open_conns)
        return self._result()

    def _receive(
        self, rank: int, conn: connection.Connection, open_conns: dict[int, connection.Connection]
    ) -> bool:
        """Handle one message from ``rank``; False when its pipe is closed."""
        try:
            message = conn.recv()
        except (EOFError, OSError):
            open_conns.pop(rank, None)  # the rank exited; its sentinel tells how
            return False
        except Exception as exc:  # a message that did not unpickle
            message = ("raised", RuntimeError(f"rank {rank} failed: {exc}"))
        kind = message[0]
        if kind == "call":
            self._serve(conn, message)
            return True
        open_conns.pop(rank, None)
        self.outcomes[rank] = (kind, message[1])
        if kind == "raised":
            self._failed(message[1])
        return True

    def _serve(self, conn: connection.Connection, message: tuple[Any, ...]) -> None:
        _, name, args, kwargs = message
        if name not in REPORTER_METHODS:
            conn.send(("error", RuntimeError(f"unknown reporter call {name!r}")))
            return
        try:
            value = getattr(self.reporter, name)(*args, **kwargs)
        except Exception as exc:
            # Rank 0 raises a copy; the original (which may not pickle faithfully) is what the
            # caller gets, once rank 0 reports that it failed.
            self.reporter_error = self.reporter_error or exc
            conn.send(("error", _portable(exc)))
            return
        conn.send(("ok", value))

    def _exited(self, rank: int, open_conns: dict[int, connection.Connection]) -> None:
        conn = open_conns.pop(rank, None)
        # Its last message may still be in the pipe: read it before judging the exit.
        while conn is not None and rank not in self.outcomes and conn.poll():
            if not self._receive(rank, conn, {rank: conn}):
                break
        if rank in self.outcomes:
            return
        self.ranks[rank].join(timeout=5)  # the sentinel fires before the exit is reaped
        code = self.ranks[rank].exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        lost = TrainingProcessLost(
            f"training process {rank} of {len(self.ranks)} died without a word ({how})",
            exit_code=code,
        )
        self.outcomes[rank] = ("lost", lost)
        logger.error("%s", lost)
        self._failed(lost)

    def _watch(self) -> None:
        """Ask the watchdog (another host of the job lost?) every ``watch_seconds``."""
        if self.watchdog is None or self.host_lost is not None:
            return
        if time.monotonic() < self.next_watch:
            return
        self.next_watch = time.monotonic() + self.watch_seconds
        try:
            problem = self.watchdog()
        except Exception:  # the database briefly down: ask again next time
            logger.warning("could not check the job's other hosts", exc_info=True)
            return
        if problem is None:
            return
        self.host_lost = TrainingProcessLost(problem)
        logger.error("giving the run up: %s", problem)
        self._failed(self.host_lost)
        # Ranks may be blocked in a collective with the lost host for as long as the group's
        # timeout: end them now.
        self.gave_up_at = time.monotonic()

    def _failed(self, exc: BaseException) -> None:
        if self.first_error is None:
            self.first_error = exc
        if self.gave_up_at is None:
            self.gave_up_at = time.monotonic() + FAILURE_GRACE_SECONDS

    def _result(self) -> TrainResult:
        kind, value = self.outcomes.get(0, ("missing", None))
        # A result means every rank passed the final barrier: a host lost after that (one
        # that finished and left first, say) no longer matters.
        if kind == "result" and self.first_error in (None, self.host_lost):
            return value
        # The root cause first: the reporter's own failure, then a rank that died silently
        # (the others then fail in a collective), then pause or stop, which rank 0 decides
        # and every rank raises, then the first error that arrived.
        if self.reporter_error is not None:
            raise self.reporter_error
        if self.host_lost is not None:
            raise self.host_lost
        for other_kind, other in self.outcomes.values():
            if other_kind == "lost":
                raise other
        if kind == "raised" and isinstance(value, (TrainingPaused, TrainingStopped)):
            raise value
        if self.first_error is not None:
            if self.remote_peers and peer_lost(self.first_error):
                raise TrainingProcessLost(
                    f"a process on another host of the job went away: {self.first_error}"
                ) from self.first_error
            raise self.first_error
        raise TrainingProcessLost("rank 0 ended without a result")


def run_training(
    spec: TrainSpec,
    base_model_dir: Path,
    training_file: Path,
    output_dir: Path,
    reporter: Reporter,
    *,
    plan: ParallelPlan | None = None,
    validation_file: Path | None = None,
    resume_from: Path | None = None,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    log_setup: Callable[[], None] | None = None,
    isolate: bool = False,
    multinode: MultiNode | None = None,
    watchdog: Callable[[], str | None] | None = None,
    watch_seconds: float = 5.0,
) -> TrainResult:
    """Train across ``plan.world_size`` processes when it is above 1; else in one process,
    spawned when ``isolate`` (its death, an OOM kill say, then raises
    ``TrainingProcessLost`` here) or this one. ``multinode``, ``watchdog``: this host's share
    of a multi-host job (see :func:`train_data_parallel`)."""
    world_size = 1 if plan is None else plan.world_size
    backend = default_backend() if plan is None else plan.backend
    if world_size == 1 and not isolate and multinode is None:
        from worker.training.recipe import train

        return train(
            spec,
            base_model_dir,
            training_file,
            output_dir,
            reporter,
            validation_file=validation_file,
            resume_from=resume_from,
        )
    logger.info(
        "[job %s] training on %d %s process(es) (%s)%s",
        spec.options.log_label,
        world_size,
        "cuda" if backend == "nccl" else "cpu",
        backend if world_size > 1 or multinode else "isolated",
        f" as node {multinode.node_rank} of {multinode.nodes} (rendezvous "
        f"{multinode.address}:{multinode.port})"
        if multinode
        else "",
    )
    return train_data_parallel(
        world_size,
        spec,
        base_model_dir,
        training_file,
        output_dir,
        reporter,
        validation_file=validation_file,
        resume_from=resume_from,
        backend=backend,
        timeout_seconds=timeout_seconds,
        log_setup=log_setup,
        multinode=multinode,
        watchdog=watchdog,
        watch_seconds=watch_seconds,
    )
