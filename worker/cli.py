"""``dorado-worker``: worker-side maintenance commands (they need the [worker] extra)."""

from __future__ import annotations

import click

from core.catalog.lookup import BUILTIN_MODELS
from core.observability.logconfig import configure_logging
from core.settings import load_settings
from core.storage.objects import open_store
from worker.startup import prepare_worker_process


@click.group()
def main() -> None:
    """Worker-side commands."""
    configure_logging()
    prepare_worker_process()


@main.command("prepare-models")
@click.option(
    "--name",
    "names",
    multiple=True,
    help="Only these models: built-in ones, or ones registered with `dorado-admin "
    "models add` (a GGUF is converted now instead of by the first job).",
)
def prepare_models(names: tuple[str, ...]) -> None:
    """Build the base models into the model store and the local cache (once)."""
    from worker.model_store import ModelUnavailable, ensure_model

    settings = load_settings()
    store = open_store(settings)
    for name in names or [builtin.name for builtin in BUILTIN_MODELS]:
        try:
            path = ensure_model(settings, store, name)
        except ModelUnavailable as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"{name}: ready in {path}")


@main.command("serve-inference")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; expose it only to the API (the service trusts callers).",
)
@click.option("--port", type=int, default=None, help="Default: DORADO_INFERENCE_PORT, else 8001.")
def serve_inference(host: str, port: int | None) -> None:
    """Run the inference service (chat completions, merged models) in the foreground."""
    import os

    from core.processes import inference_command
    from core.settings import DEFAULT_INFERENCE_PORT

    command = inference_command(
        port or load_settings().inference_port or DEFAULT_INFERENCE_PORT, host
    )
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
