"""Celery tasks. They take ids, read everything else from the database, and write results
back through fenced conditional updates (see core.jobs.lifecycle)."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from core.db.engine import session_scope
from core.db.models import File, Job, Model
from core.jobs import checkpoints
from core.jobs import lifecycle as jobs
from core.jobs.hyperparams import learning_rate
from core.jobs.status import FailureCode
from core.scheduling import dispatch as scheduling
from core.scheduling import gangs, workers
from core.scheduling.broker import RUN_JOB_TASK, VALIDATE_JOB_TASK, publish_job, publish_to_host
from core.settings import Settings, load_settings
from core.storage import quota
from core.storage.files import create_system_file
from core.storage.objects import ObjectNotFound, ObjectStore, download_dir, open_store
from core.timeutil import utcnow
from worker import artifacts, registry, shutdown
from worker.celery_app import app
from worker.failures import TRANSIENT_CODES, classify, oom_kills
from worker.model_store import ensure_model
from worker.reporting import JobReporter, load_history
from worker.trackers import job_reporter
from worker.training.options import JobOptions, Sharding
from worker.training.spec import (
    AdapterSpec,
    DpoSpec,
    TrainingPaused,
    TrainingStopped,
    TrainSpec,
)

log = logging.getLogger(__name__)

HAND_BACK_DELAY_SECONDS = 1.0


def worker_name() -> str:
    """The registry name (Celery node name) of a training worker, else ``host:pid``."""
    return registry.name() or f"{socket.gethostname()}:{os.getpid()}"


def build_spec(job: Job) -> TrainSpec:
    """The frozen training spec of a job row (hyperparameters already resolved).

    The one place where the job's stored options become typed (``JobOptions.from_stored``
    rejects a key it does not know); their ``learning_rate`` replaces the multiplied base rate,
    and the job's resolved ``training`` options (warmup, weight decay, schedule, gradient
    checkpointing, micro-batch tokens) reach the spec and its engine options, with the
    planner's ``sharding`` from its ``resources``. A ``dpo`` job trains by DPO with its
    resolved ``beta``.
    """
    adapter = job.adapter
    modules = adapter.get("target_modules", "all-linear")
    hyper = job.hyperparameters
    options = JobOptions.from_stored(job.options)
    lr = options.learning_rate or learning_rate(
        adapter["type"], float(hyper["learning_rate_multiplier"])
    )
    return TrainSpec(
        adapter=AdapterSpec(
            type=adapter["type"],
            r=int(adapter["r"]),
            alpha=int(adapter["alpha"]),
            dropout=float(adapter["dropout"]),
            target_modules=modules if isinstance(modules, str) else tuple(modules),
            quantization=adapter.get("quantization"),
        ),
        n_epochs=int(hyper["n_epochs"]),
        batch_size=int(hyper["batch_size"]),
        learning_rate=float(lr),
        seed=int(job.seed),
        max_seq_length=options.max_seq_length,
        checkpoint_every_n_steps=options.checkpoint_every_n_steps,
        warmup_ratio=options.warmup_ratio or 0.0,
        weight_decay=options.weight_decay or 0.0,
        gradient_checkpointing=bool(options.gradient_checkpointing),
        options=options.engine_options(
            sharding=planned_sharding(job.resources), base_model_name=job.model, job_id=job.id
        ),
        dpo=dpo_spec(job.method),
    )


def planned_sharding(resources: dict | None) -> Sharding:
    """How the memory planner split the job over its GPUs (``core.jobs.planner``, the job's
    ``resources``): "fsdp" when it fits only sharded, else (and for a job planned before
    sharding existed, or not planned) "ddp"."""
    return "fsdp" if (resources or {}).get("sharding") == "fsdp" else "ddp"


def dpo_spec(method: dict | None) -> DpoSpec | None:
    """The DPO settings of a job's stored ``method``, or None for a supervised job."""
    if not method or method.get("type") != "dpo":
        return None
    return DpoSpec(beta=float(method["dpo"]["hyperparameters"]["beta"]))


@dataclass(frozen=True)
class Claimed:
    """What the task read from the database, so that it holds no connection while training."""

    spec: TrainSpec
    model: str
    organization_id: str
    training_key: str
    validation_key: str | None
    resume_prefix: str | None
    resume_step: int
    parent_job_id: str | None = None


def _load(settings: Settings, job_id: str) -> Claimed:
    with session_scope(settings.database_url) as session:
        job = session.get_one(Job, job_id)  # claimed: the row exists
        training = session.get(File, job.training_file)
        if training is None:
            raise ObjectNotFound(job.training_file)
        validation = session.get(File, job.validation_file) if job.validation_file else None
        if job.validation_file and validation is None:
            raise ObjectNotFound(job.validation_file)
        latest = checkpoints.latest_checkpoint(session, job_id)
        parent = (job.options or {}).get("parent")
        parent_row = session.get(Model, parent) if parent else None
        if parent and (parent_row is None or parent_row.job_id is None):
            raise ObjectNotFound(f"the adapter of the parent model {parent}")
        return Claimed(
            spec=build_spec(job),
            model=job.model,
            organization_id=job.organization_id,
            training_key=training.storage_key,
            validation_key=validation.storage_key if validation else None,
            resume_prefix=latest.storage_prefix if latest else None,
            resume_step=latest.step_number if latest else 0,
            parent_job_id=parent_row.job_id if parent_row else None,
        )


@app.task(name=VALIDATE_JOB_TASK, ignore_result=True)
def validate_job(job_id: str) -> None:
    from worker.validation import validate

    validate(load_settings(), job_id)


@app.task(name=RUN_JOB_TASK, ignore_result=True)
def run_job(job_id: str) -> None:
    """A wake-up for this worker's pool (or for this worker alone): claim the best eligible
    queued job (core.scheduling.dispatch; not necessarily ``job_id``) and train it, leading
    its gang when it runs on several hosts; or, when another worker booked this one into its
    gang, train this host's part of that job."""
    settings = load_settings()
    with session_scope(settings.database_url) as session:
        dispatched = scheduling.claim_next(
            session,
            pool=registry.pool(),
            worker=worker_name(),
            lease_seconds=settings.lease_seconds,
            heartbeat_seconds=settings.worker_heartbeat_seconds,
            # Only a registered worker (which others can see alive) leads a gang.
            rendezvous=_rendezvous(settings) if registry.name() else None,
        )
    if isinstance(dispatched, gangs.Booking):
        _follow(settings, dispatched)
        return
    if dispatched is None:
        if registry.draining():
            _hand_back(settings, job_id)
        else:
            log.info("wake-up for job %s: nothing eligible in pool %s", job_id, registry.pool())
        return
    registry.set_current_job(dispatched.job_id)
    gang = dispatched.gang
    try:
        if gang is not None:
            _wake_followers(settings, dispatched.job_id, gang)
        _run_claimed(settings, dispatched.job_id, dispatched.attempt, gang)
    finally:
        registry.set_current_job(None)
        if gang is not None:
            _release_gang(settings, dispatched.job_id, dispatched.attempt)
        _wake_held(settings, dispatched.organization_id)


def _rendezvous(settings: Settings) -> gangs.Rendezvous:
    """Where a gang this worker leads meets: its address, a free port, and the processes each
    host runs (this worker's own plan; every host of a pool is expected to be alike)."""
    from worker.training.distributed import free_port, plan_parallelism

    plan = plan_parallelism(settings.worker_gpus_per_job, settings.worker_cpu_processes)
    address = settings.worker_address or _host_address()
    return gangs.Rendezvous(address=address, port=free_port(""), ranks_per_node=plan.world_size)


def _host_address() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:  # a host name that does not resolve: only this host can reach it
        return "127.0.0.1"


def _wake_followers(settings: Settings, job_id: str, gang: dict) -> None:
    """Send each booked host a wake-up on its own queue (the sweeper does not; a follower
    that misses it joins at its next wake-up, or the leader gives up after
    DORADO_GANG_JOIN_SECONDS)."""
    for follower in gang["hosts"][1:]:
        try:
            publish_to_host(settings, job_id, gangs.host_queue(follower))
        except Exception:
            log.exception("job %s: could not wake host %s", job_id, follower)


def _release_gang(settings: Settings, job_id: str, attempt: int) -> None:
    try:
        with session_scope(settings.database_url) as session:
            gangs.release(session, job_id, attempt)
    except Exception:  # the sweeper releases bookings of attempts that ended
        log.exception("job %s: could not release its gang", job_id)


def _hand_back(settings: Settings, job_id: str) -> None:
    """A draining worker got a wake-up (before its consumer was cancelled): send it again
    for another worker of the pool, so that it is not lost."""
    shutdown.wait(HAND_BACK_DELAY_SECONDS)  # never a hot loop if this worker gets it back
    try:
        publish_job(settings, job_id, registry.pool())
        log.info("draining: handed the wake-up for job %s back to %s", job_id, registry.queue())
    except Exception:  # the sweeper re-publishes the job
        log.exception("draining: could not hand back job %s", job_id)


def _wake_held(settings: Settings, org_id: str) -> None:
    """A job left running: wake a worker for the organization's job its quota held back."""
    try:
        with session_scope(settings.database_url) as session:
            held = scheduling.next_held(session, org_id)
        if held is not None:
            publish_job(settings, held[0], held[1])
    except Exception:  # the sweeper re-publishes it
        log.exception("could not wake a worker for organization %s", org_id)


def _run_claimed(settings: Settings, job_id: str, attempt: int, gang: dict | None = None) -> None:
    log.info(
        "job %s: claimed (attempt %s)%s",
        job_id,
        attempt,
        f" with hosts {', '.join(gang['hosts'][1:])}" if gang else "",
    )
    store = open_store(settings)
    with session_scope(settings.database_url) as session:
        job = session.get_one(Job, job_id)
        # A job's own limit may only tighten the operator's (older rows may hold any value).
        requested = (job.options or {}).get("max_run_seconds") or settings.max_job_seconds
        limit = min(int(requested), settings.max_job_seconds)
        started = job.started_at or utcnow()  # the claim set it
        deadline = started + timedelta(seconds=limit)
    reporter = job_reporter(settings, store, job_id, attempt, deadline=deadline)
    reporter.start()
    # A training process the kernel kills while this count stays put was not out of memory.
    kills_before = oom_kills()
    try:
        _train(settings, store, job_id, attempt, reporter, gang)
    except TrainingStopped:
        if reporter.timed_out:
            with session_scope(settings.database_url) as session:
                jobs.fail_job(
                    session,
                    job_id,
                    attempt,
                    code=FailureCode.MAX_RUN_TIME_EXCEEDED,
                    message=f"The job ran longer than its limit of {limit} s",
                    param="max_run_seconds",
                )
        log.info(
            "job %s: stopped (%s)",
            job_id,
            "time limit" if reporter.timed_out else "cancelled or re-assigned",
        )
    except TrainingPaused as paused:
        step = getattr(paused, "step", 0)
        requeue = reporter.requeue_wanted
        with session_scope(settings.database_url) as session:
            if requeue:
                own = shutdown.in_progress()
                jobs.requeue_for_shutdown(session, job_id, attempt, step, for_gang=not own)
            else:
                jobs.mark_paused(session, job_id, attempt, step)
        log.info(
            "job %s: %s at step %s", job_id, "re-queued for shutdown" if requeue else "paused", step
        )
    except Exception as exc:
        log.exception("job %s: failed", job_id)
        code, message, param = classify(exc, oom_kills_before=kills_before)
        with session_scope(settings.database_url) as session:
            if code in TRANSIENT_CODES and jobs.retry_after_transient_error(
                session,
                job_id,
                attempt,
                code=code,
                message=message,
                max_retries=settings.max_job_retries,
            ):
                return
            jobs.fail_job(session, job_id, attempt, code=code, message=message, param=param)
    finally:
        reporter.close()


@dataclass(frozen=True)
class _Inputs:
    """A job's files on this host: data, the checkpoint it resumes from, the base model."""

    spec: TrainSpec
    base_dir: Path
    data_path: Path
    valid_path: Path | None
    resume_dir: Path | None


def _fetch_inputs(settings: Settings, store: ObjectStore, claimed: Claimed, tmp: Path) -> _Inputs:
    data_path = tmp / "train.jsonl"
    store.download_file(claimed.training_key, data_path)
    valid_path = None
    if claimed.validation_key:
        valid_path = tmp / "valid.jsonl"
        store.download_file(claimed.validation_key, valid_path)
    resume_dir = None
    if claimed.resume_prefix:
        resume_dir = tmp / "resume"
        download_dir(store, claimed.resume_prefix, resume_dir)
    spec = claimed.spec
    if claimed.parent_job_id and not resume_dir:  # a checkpoint already holds the weights
        parent_dir = tmp / "parent-adapter"
        parent_dir.mkdir()
        for name in artifacts.ADAPTER_FILES:
            key = artifacts.adapter_file_key(claimed.parent_job_id, name)
            store.download_file(key, parent_dir / name)
        spec = replace(spec, init_adapter_dir=parent_dir)
    base_dir = ensure_model(settings, store, claimed.model)
    return _Inputs(spec, base_dir, data_path, valid_path, resume_dir)


def _train(
    settings: Settings,
    store: ObjectStore,
    job_id: str,
    attempt: int,
    reporter: JobReporter,
    gang: dict | None = None,
) -> None:
    from core.observability.logconfig import configure_logging
    from worker.training.distributed import MultiNode, ParallelPlan, plan_parallelism, run_training

    claimed = _load(settings, job_id)
    with session_scope(settings.database_url) as session:
        # Steps a lost attempt reported after its last checkpoint are about to run again.
        jobs.discard_replayed_metrics(session, job_id, attempt, claimed.resume_step)
    with tempfile.TemporaryDirectory(prefix=f"dorado-{job_id}-") as tmp_name:
        tmp = Path(tmp_name)
        inputs = _fetch_inputs(settings, store, claimed, tmp)
        if inputs.resume_dir is not None:
            reporter.metrics_rows = load_history(inputs.resume_dir)
        if reporter.should_stop():
            raise TrainingStopped()
        if shutdown.in_progress():  # nothing trained yet: hand the job back as it was
            raise TrainingPaused(step=0)
        # One process per GPU (or DORADO_WORKER_CPU_PROCESSES on CPU); rank 0 uses `reporter`.
        # A single one is a child too (isolated), unless DORADO_WORKER_ISOLATE_TRAINING=0.
        plan = plan_parallelism(settings.worker_gpus_per_job, settings.worker_cpu_processes)
        multinode = None
        if gang is not None:  # this host leads: node 0 of the gang
            plan = ParallelPlan(int(gang["ranks_per_node"]), plan.backend)
            multinode = MultiNode(0, len(gang["hosts"]), gang["address"], int(gang["port"]))
        result = run_training(
            inputs.spec,
            inputs.base_dir,
            inputs.data_path,
            tmp / "adapter",
            reporter,
            plan=plan,
            validation_file=inputs.valid_path,
            resume_from=inputs.resume_dir,
            timeout_seconds=settings.worker_dist_timeout_seconds,
            log_setup=configure_logging,
            isolate=settings.worker_isolate_training,
            multinode=multinode,
            watchdog=_followers_watchdog(settings, job_id, attempt) if gang else None,
            watch_seconds=settings.worker_heartbeat_seconds,
        )
        if reporter.should_stop():
            raise TrainingStopped()
        key = artifacts.adapter_key(job_id)
        store.put_file(key, artifacts.pack_adapter(result.adapter_dir, tmp / "adapter.tar.gz"))
        for name in artifacts.adapter_files(result.adapter_dir):
            store.put_file(artifacts.adapter_file_key(job_id, name), result.adapter_dir / name)
        csv_path = artifacts.write_metrics_csv(reporter.metrics_rows, tmp / "metrics.csv")
        with session_scope(settings.database_url) as session:
            if not jobs.still_ours(session, job_id, attempt):
                raise TrainingStopped()
            results = create_system_file(
                session,
                store,
                claimed.organization_id,
                filename=f"{job_id}-metrics.csv",
                purpose="fine-tune-results",
                path=csv_path,
            )
            quota.refresh_job_bytes(session, store, job_id)  # counted in the storage quota
            model_name = jobs.succeed_job(
                session,
                job_id,
                attempt,
                trained_tokens=result.trained_tokens,
                adapter_key=key,
                result_files=[results.id],
            )
            if model_name is None:
                raise TrainingStopped()
        log.info("job %s: succeeded as %s (%s tokens)", job_id, model_name, result.trained_tokens)


def _followers_watchdog(settings: Settings, job_id: str, attempt: int) -> Callable[[], str | None]:
    """The leader's check of its gang: why to give the attempt up, or None."""
    deadline = utcnow() + timedelta(seconds=settings.gang_join_seconds)

    def check() -> str | None:
        with session_scope(settings.database_url) as session:
            return gangs.follower_problem(
                session,
                job_id,
                attempt,
                heartbeat_seconds=settings.worker_heartbeat_seconds,
                join_deadline=deadline,
            )

    return check


def _follow(settings: Settings, booking: gangs.Booking) -> None:
    """Train this host's part of another worker's multi-node job (node ``booking.node_rank``).

    The leader alone reports, checkpoints and decides the job's status: whatever ends this
    part is only logged here. A part that failed releases its booking (the leader sees the
    host leave); a finished one leaves that to the leader, which releases the whole gang."""
    name = worker_name()
    job_id, attempt = booking.job_id, booking.attempt
    with session_scope(settings.database_url) as session:
        if not gangs.mark_joined(session, name, job_id, attempt):
            return
    registry.set_current_job(job_id)
    log.info(
        "job %s: joined as node %d of %d (attempt %d, led by %s)",
        job_id,
        booking.node_rank,
        booking.nodes,
        attempt,
        booking.leader,
    )
    finished = False
    try:
        _train_part(settings, booking)
        finished = True
        log.info("job %s: node %d finished its part", job_id, booking.node_rank)
    except (TrainingStopped, TrainingPaused):
        log.info(
            "job %s: node %d stopped with the job (paused or stopped)", job_id, booking.node_rank
        )
    except Exception as exc:
        log.warning(
            "job %s: node %d's part ended: %s: %s",
            job_id,
            booking.node_rank,
            type(exc).__name__,
            exc,
        )
    finally:
        registry.set_current_job(None)
        try:
            with session_scope(settings.database_url) as session:
                # A finished part keeps its booking until the leader, still saving the
                # adapter, releases the gang: leaving now would look like a lost host to it.
                # So does a host shutting down, so that the re-queued job cannot book it
                # again in the moment before it stops (the sweeper ends the stale booking).
                if not finished and not shutdown.in_progress():
                    gangs.release_member(session, name, job_id, attempt)
                workers.set_current_job(session, name, None)
        except Exception:  # the sweeper releases bookings of attempts that ended
            log.exception("job %s: could not release this host's booking", job_id)


def _train_part(settings: Settings, booking: gangs.Booking) -> None:
    from core.observability.logconfig import configure_logging
    from worker.training.distributed import (
        MultiNode,
        ParallelPlan,
        SilentReporter,
        plan_parallelism,
        run_training,
    )

    store = open_store(settings)
    claimed = _load(settings, booking.job_id)
    own = plan_parallelism(settings.worker_gpus_per_job, settings.worker_cpu_processes)
    wanted = booking.rendezvous.ranks_per_node
    if own.backend == "nccl" and own.world_size < wanted:
        raise RuntimeError(
            f"the job runs {wanted} processes per host but this host has {own.world_size} GPUs"
        )
    with tempfile.TemporaryDirectory(prefix=f"dorado-{booking.job_id}-") as tmp_name:
        tmp = Path(tmp_name)
        inputs = _fetch_inputs(settings, store, claimed, tmp)
        run_training(
            inputs.spec,
            inputs.base_dir,
            inputs.data_path,
            tmp / "adapter",
            SilentReporter(),
            plan=ParallelPlan(wanted, own.backend),
            validation_file=inputs.valid_path,
            resume_from=inputs.resume_dir,
            timeout_seconds=settings.worker_dist_timeout_seconds,
            log_setup=configure_logging,
            isolate=True,
            multinode=MultiNode(
                booking.node_rank,
                booking.nodes,
                booking.rendezvous.address,
                booking.rendezvous.port,
            ),
            watchdog=_attempt_watchdog(settings, booking),
            watch_seconds=settings.worker_heartbeat_seconds,
        )


def _attempt_watchdog(settings: Settings, booking: gangs.Booking) -> Callable[[], str | None]:
    """A follower's check: why to stop its part (the attempt is over, the leader was lost),
    or None. A shutdown of this host asks the leader to checkpoint and re-queue the job, and
    the part goes on until the leader has done so (the attempt is then over)."""
    asked = False

    def check() -> str | None:
        nonlocal asked
        with session_scope(settings.database_url) as session:
            problem = gangs.attempt_problem(
                session,
                booking.job_id,
                booking.attempt,
                heartbeat_seconds=settings.worker_heartbeat_seconds,
            )
            if problem is None and shutdown.in_progress() and not asked:
                asked = True
                if gangs.leave(session, worker_name(), booking.job_id, booking.attempt):
                    log.info(
                        "job %s: this host is shutting down; asked the leader to checkpoint "
                        "and re-queue the job",
                        booking.job_id,
                    )
            return problem

    return check
