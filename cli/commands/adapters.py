"""``dorado adapters download``: a job's trained adapter, unpacked into a folder that
``PeftModel.from_pretrained(base, DIR)`` (or, ``--merged``, ``from_pretrained(DIR)``) loads."""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

import click

from cli.client import ClientError, DoradoClient
from cli.commands.common import api_command
from cli.commands.output import console, echo_json, json_option, transfer_bar


@click.group("adapters")
def adapters_group() -> None:
    """Download trained adapters."""


def unpack(archive: Path, dest: Path) -> list[str]:
    """Extract the ``.tar.gz`` the API serves into ``dest``; the member names.

    Only plain files and folders inside ``dest`` are accepted (tarfile's ``data`` filter)."""
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            names = sorted(m.name for m in tar.getmembers() if m.isfile())
            tar.extractall(dest, filter="data")
    except tarfile.TarError as exc:
        raise ClientError(f"the downloaded archive is not a valid .tar.gz: {exc}") from None
    return names


@adapters_group.command("download")
@click.argument("job_id")
@click.option("--merged", is_flag=True, help="The adapter merged into the base model's weights.")
@click.option(
    "--checkpoint", default=None, metavar="CHECKPOINT_ID", help="An intermediate checkpoint's."
)
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder to unpack into (default: ./JOB_ID-adapter or ./JOB_ID-merged); must be empty.",
)
@json_option
@api_command
def download(
    client: DoradoClient,
    job_id: str,
    merged: bool,
    checkpoint: str | None,
    output: Path | None,
    as_json: bool,
) -> None:
    """Download a job's adapter (PEFT format) and unpack it.

    Load it with ``PeftModel.from_pretrained(base_model, DIR)``; with --merged it is a whole
    Hugging Face model: ``AutoModelForCausalLM.from_pretrained(DIR)``."""
    if merged and checkpoint:
        raise click.UsageError("--merged applies to the final adapter only, not --checkpoint")
    dest = output or Path(f"{job_id}-{'merged' if merged else 'adapter'}")
    if dest.exists() and any(dest.iterdir()):
        raise click.UsageError(f"{dest} is not empty; choose another folder with -o")
    params = {"format": "merged"} if merged else {}
    if checkpoint:
        params["checkpoint"] = checkpoint
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        dir=dest.parent, prefix=".dorado-download-", suffix=".tar.gz"
    ) as archive:
        label = "merging and downloading" if merged else "downloading"
        with transfer_bar(f"{label} {job_id}", enabled=not as_json) as progress:
            client.download(
                f"/fine_tuning/jobs/{job_id}/adapter",
                archive,
                params=params,
                progress=progress,
            )
        archive.flush()
        dest.mkdir(parents=True, exist_ok=True)
        names = unpack(Path(archive.name), dest)
    if as_json:
        echo_json({"job_id": job_id, "directory": str(dest.resolve()), "files": names})
        return
    console.print(f"Unpacked into {dest}: {', '.join(names)}")
    if merged:
        console.print(f'Load it: AutoModelForCausalLM.from_pretrained("{dest}")')
    else:
        console.print(f'Load it: PeftModel.from_pretrained(base_model, "{dest}")')
