"""``dorado-admin models add|list|remove``: the base models every organization can train."""

from __future__ import annotations

import click

from admin.context import AdminContext, pass_admin
from admin.output import emit_message, emit_rows, handle_errors, human_bytes, json_option
from core.catalog import registry as model_registry
from core.storage.objects import delete_prefix, open_store
from core.tenancy import audit


@click.group("models")
def models() -> None:
    """Base models: register one from a directory, an S3 prefix, a Hugging Face repository or
    a GGUF file; list; remove."""


@models.command("add")
@click.argument("source")
@click.option("--name", help="Name in the catalogue (default: from SOURCE's last component).")
@json_option
@pass_admin
@handle_errors
def add(admin: AdminContext, source: str, name: str | None, as_json: bool) -> None:
    """Register SOURCE as a base model for every organization.

    SOURCE is a local Hugging Face directory (config.json, *.safetensors, tokenizer with a chat
    template), s3://bucket/prefix (same layout; read with DORADO_S3_* settings), a Hugging
    Face Hub repository owner/name[@revision] or hf://owner/name[@revision] (downloaded with
    huggingface_hub into its cache, HF_TOKEN from the environment; HF_HUB_OFFLINE=1 uses only
    the cache) or a .gguf file (converted to safetensors by the first worker that needs it).
    Pickle weights and models needing trust_remote_code are refused.
    """
    name = name or model_registry.default_name(source)
    store = open_store(admin.settings)
    with admin.session() as session:
        row = model_registry.add_model(session, store, admin.settings, name=name, source=source)
        audit.record(
            session,
            action="model.add",
            object_type="model",
            object_id=row.id,
            organization_id=None,
            actor=admin.actor,
            details={"source": row.source},
        )
        info = {"id": row.id, "source": row.source}
    size, stored = model_registry.stored_bytes(store, name)
    note = "" if stored else " (a worker converts it to safetensors on first use)"
    emit_message(
        f"Registered base model {name} from {info['source']}: {human_bytes(size)} stored{note}",
        as_json=as_json,
        **info,
        bytes=size,
        stored=stored,
    )


@models.command("list")
@click.option("--jobs", "with_jobs", is_flag=True, help="Also list the jobs using each model.")
@json_option
@pass_admin
@handle_errors
def list_(admin: AdminContext, with_jobs: bool, as_json: bool) -> None:
    """Base models with their source, size in the store and the jobs using them."""
    store = open_store(admin.settings)
    with admin.session() as session:
        rows = [
            m.as_dict() for m in model_registry.list_models(session, store, with_jobs=with_jobs)
        ]
    for row in rows:
        row["size"] = human_bytes(row["bytes"]) if row["stored"] or row["bytes"] else "not built"
        if with_jobs:
            row["used_by"] = ", ".join(f"{j['id']} ({j['status']})" for j in row["job_ids"])
    columns = [
        ("id", "ID"),
        ("source", "Source"),
        ("size", "Size"),
        ("jobs", "Jobs"),
        ("active_jobs", "Unfinished"),
    ]
    if with_jobs:
        columns.append(("used_by", "Used by"))
    if as_json:
        for row in rows:
            row.pop("size", None)
            row.pop("used_by", None)
    emit_rows(rows, columns, as_json=as_json, title="Base models")


@models.command("remove")
@click.argument("name")
@click.option(
    "--force", is_flag=True, help="Remove even while unfinished jobs use it (they are cancelled)."
)
@json_option
@pass_admin
@handle_errors
def remove(admin: AdminContext, name: str, force: bool, as_json: bool) -> None:
    """Remove a registered base model and its weights (built-in models stay)."""
    store = open_store(admin.settings)
    with admin.session() as session:
        removed = model_registry.remove_model(session, name, force=force)
        audit.record(
            session,
            action="model.remove",
            object_type="model",
            object_id=name,
            organization_id=None,
            actor=admin.actor,
            details={"force": force, "cancelled_jobs": list(removed.cancelled_jobs)},
        )
    # After the commit: a failed removal leaves the weights in place.
    deleted = sum(delete_prefix(store, prefix) for prefix in removed.prefixes)
    cancelled = f"; cancelled {', '.join(removed.cancelled_jobs)}" if removed.cancelled_jobs else ""
    emit_message(
        f"Removed base model {name} ({deleted} stored objects deleted){cancelled}",
        as_json=as_json,
        id=name,
        deleted_objects=deleted,
        cancelled_jobs=list(removed.cancelled_jobs),
    )
