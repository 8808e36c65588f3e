"""``dorado``: set up and run the platform (API, worker, scheduler, inference) on one machine."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading

import click

from cli.commands import adapters, chat, files, jobs
from cli.supervisor import CrashLoop, Supervisor
from core.bootstrap import prepare_database
from core.db.engine import check_database
from core.errors import ConfigurationError
from core.observability.logconfig import configure_logging
from core.processes import API_TIMEOUT_S, api_server_options, gunicorn_options, inference_command
from core.processes import executable as _bin
from core.settings import load_settings

log = logging.getLogger("dorado")


def api_command(host: str, port: int, workers: int = 2) -> list[str]:
    """The API's gunicorn command line (the container images use infra/gunicorn.conf.py)."""
    return [
        _bin("gunicorn"),
        "--bind",
        f"{host}:{port}",
        "--workers",
        str(workers),
        "--timeout",
        str(API_TIMEOUT_S),
        *api_server_options(),
        *gunicorn_options(),
        "api.wsgi:app",
    ]


def worker_command(concurrency: int = 1, name: str | None = None) -> list[str]:
    # The threads pool runs the task in the worker's own process, so a SIGTERM reaches the
    # running job: it checkpoints and goes back to the queue (see worker.shutdown).
    return [
        _bin("celery"),
        "-A",
        "worker.celery_app:app",
        "worker",
        "--loglevel",
        "INFO",
        "--pool",
        "threads",
        "--concurrency",
        str(concurrency),
        "--prefetch-multiplier",
        "1",
        "-Q",
        "dorado.jobs",
        "-n",
        f"{name or f'dorado-{os.getpid()}'}@%h",
    ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def validator_command(name: str | None = None) -> list[str]:
    """A small CPU worker for the quick ``validating_files`` step (tokenizing files)."""
    return [
        _bin("celery"),
        "-A",
        "worker.celery_app:app",
        "worker",
        "--loglevel",
        "INFO",
        "--pool",
        "threads",
        "--concurrency",
        "2",
        "--prefetch-multiplier",
        "1",
        "-Q",
        "dorado.validate",
        "-n",
        f"{name or f'validator-{os.getpid()}'}@%h",
    ]


class _Launcher(click.Group):
    """A setting that cannot work ends the command with its one-line message (exit 1)."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ConfigurationError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Launcher)
def main() -> None:
    """Dorado: a self-hosted LoRA/DoRA fine-tuning platform."""
    configure_logging()


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema, register built-in models, ensure an API key."""
    settings = load_settings()
    check_database(settings.database_url)
    key = prepare_database(settings)
    _announce_key(key)


def _announce_key(key: str | None) -> None:
    if key:
        click.secho("\nA new API key was generated. It is shown only this once:", bold=True)
        click.secho(f"    {key}\n", fg="green", bold=True)
        click.echo(
            "Use it as 'Authorization: Bearer <key>' (or OPENAI_API_KEY with the openai "
            "SDK). Set DORADO_BOOTSTRAP_API_KEY to choose your own.\n"
        )


@main.command()
def scheduler() -> None:
    """Run the periodic sweeper (re-queue lost jobs, re-publish lost messages) and the
    webhook delivery loop."""
    from core.scheduling.sweeper import run_forever
    from core.webhooks.delivery import start_in_thread

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    settings = load_settings()
    start_in_thread(settings, stop)
    run_forever(settings, stop)


@main.command()
@click.option("--skip-models", is_flag=True, help="Do not build the built-in base models now.")
def run(skip_models: bool) -> None:
    """Set up what is missing and start API, worker, scheduler and inference service; Ctrl-C
    stops them all."""
    settings = load_settings()
    check_database(settings.database_url)
    key = prepare_database(settings)
    if not skip_models:
        _prepare_models()
    supervisor = Supervisor()
    env = dict(os.environ, DORADO_HOME=str(settings.home))
    inference_port = None
    if settings.inference_url:
        log.info("chat completions go to the inference service at %s", settings.inference_url)
    elif importlib.util.find_spec("transformers") is None:
        log.warning(
            "the worker extra is not installed here; /v1/chat/completions will answer "
            "503 until DORADO_INFERENCE_URL names an inference service"
        )
    else:
        inference_port = settings.inference_port or _free_port()
        env["DORADO_INFERENCE_URL"] = f"http://127.0.0.1:{inference_port}"
    supervisor.start("api", api_command(settings.host, settings.port), env)
    supervisor.start("worker", worker_command(), env)
    supervisor.start("validator", validator_command(), env)
    supervisor.start("scheduler", [sys.executable, "-m", "cli.main", "scheduler"], env)
    if inference_port is not None:
        supervisor.start("inference", inference_command(inference_port), env)
    _announce_key(key)
    click.echo(
        f"Dorado API on http://{settings.host}:{settings.port}/v1  "
        f"(data in {settings.home}); Ctrl-C stops everything."
    )
    stopping = threading.Event()
    # Explicit handlers: a shell starts background jobs with SIGINT ignored, and Python keeps
    # an ignored SIGINT ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        supervisor.run(stopping)
    except CrashLoop as exc:
        supervisor.stop_all()
        raise click.ClickException(str(exc)) from None
    log.info("stopping (the worker checkpoints a running job first)")
    supervisor.stop_all()


def _prepare_models() -> None:
    worker_cli = _bin("dorado-worker")
    if shutil.which(worker_cli) is None and not os.path.exists(worker_cli):
        log.warning(
            "the worker extra is not installed here; built-in models will be built "
            "by the first worker that needs them"
        )
        return
    subprocess.run([worker_cli, "prepare-models"], check=True)


# The user commands: REST clients of a running platform (docs/cli.md).
main.add_command(files.files_group)
main.add_command(jobs.jobs_group)
main.add_command(adapters.adapters_group)
main.add_command(chat.chat)

if __name__ == "__main__":
    main()
