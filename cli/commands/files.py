"""``dorado files``: upload a training file (validated by the API line by line), list, show."""

from __future__ import annotations

from pathlib import Path

import click

from cli.client import DoradoClient
from cli.commands.common import api_command
from cli.commands.output import (
    console,
    echo_json,
    json_option,
    print_object,
    print_table,
    timestamp,
    transfer_bar,
)

FILE_COLUMNS = [
    ("id", "ID"),
    ("filename", "FILENAME"),
    ("bytes", "BYTES"),
    ("example_count", "EXAMPLES"),
    ("status", "STATUS"),
    ("created", "CREATED"),
]


@click.group("files")
def files_group() -> None:
    """Upload and inspect training files."""


def _file_summary(obj: dict) -> dict:
    stats = obj.get("statistics") or {}
    return {
        "id": obj["id"],
        "filename": obj.get("filename"),
        "purpose": obj.get("purpose"),
        "bytes": obj.get("bytes"),
        "status": obj.get("status"),
        "examples": obj.get("example_count"),
        **{
            k: v
            for k, v in stats.items()
            if k != "example_count" and not isinstance(v, dict | list)
        },
        "created": timestamp(obj.get("created_at")),
    }


@files_group.command("upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--purpose", default="fine-tune", show_default=True, help="The file's purpose.")
@json_option
@api_command
def upload(client: DoradoClient, path: Path, purpose: str, as_json: bool) -> None:
    """Upload a JSONL file; the API validates every line and names the bad ones.

    A rejected file exits with code 1 and lists each problem as ``line N: message``."""
    with transfer_bar(
        f"uploading {path.name}",
        enabled=not as_json,
        after_done=f"validating {path.name} on the server",
    ) as progress:
        uploaded = client.upload_file(path, purpose, progress)
    if as_json:
        echo_json(uploaded)
        return
    print_object(_file_summary(uploaded), title="Uploaded and validated")
    console.print(f"Train on it: dorado jobs create --model MODEL --training-file {uploaded['id']}")


@files_group.command("list")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10000))
@click.option("--purpose", default=None, help="Only files of this purpose.")
@json_option
@api_command
def list_files(client: DoradoClient, limit: int, purpose: str | None, as_json: bool) -> None:
    """Your files, newest first."""
    page = client.get("/files", limit=limit, purpose=purpose)
    if as_json:
        echo_json(page["data"])
        return
    rows = [{**f, "created": timestamp(f.get("created_at"))} for f in page["data"]]
    print_table(rows, FILE_COLUMNS, empty="No files.")


@files_group.command("get")
@click.argument("file_id")
@json_option
@api_command
def get_file(client: DoradoClient, file_id: str, as_json: bool) -> None:
    """One file and what validation found in it."""
    obj = client.get(f"/files/{file_id}")
    if as_json:
        echo_json(obj)
    else:
        print_object(_file_summary(obj))
