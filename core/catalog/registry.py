"""Operator-registered base models: validate, copy into the model store, list, remove.

A model is registered from a local Hugging Face directory, an S3 prefix (``s3://bucket/prefix``,
read with the deployment's S3 endpoint and credentials), a Hugging Face Hub repository
(``owner/name[@revision]`` or ``hf://...``, through ``core.catalog.hub``) or a GGUF file.
Directory, S3 and Hub models are copied to ``models/<name>/`` in the object store,
``.complete`` last (its content is a fresh revision, so a worker's cached copy of an earlier
model of the same name is noticed and replaced); GGUF files are copied to
``model-sources/<name>/model.gguf`` and converted to safetensors by the first worker that needs
the model (conversion needs torch, which core must not import). The row is added only after
the copy, so a model is never visible half-stored. The row keeps the architecture keys of
``config.json``, by which the memory planner (``core.jobs.planner``) sizes jobs; a GGUF model
has none (it trains, unsized).

Only data is accepted, never code: safetensors weights (the header is checked), no pickle
weights, no ``auto_map`` (``trust_remote_code``) in the config or tokenizer config, no Python
files. Only the files a model needs are copied (config, weights, tokenizer, chat template;
a README or anything else in the directory stays where it is), only from the directory's top
level (Hugging Face loads nothing else), and only from inside it: a symbolic link leading out
of the directory is refused, so registering a model can never publish another file of the
machine (``config.json -> ~/.aws/credentials``) to every organization. A GGUF file's header
is parsed before it is registered (:mod:`core.catalog.gguf_file`).
"""

from __future__ import annotations

import json
import re
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import ids
from core.catalog import hub
from core.catalog.gguf_file import inspect_gguf
from core.catalog.lookup import model_prefix
from core.db.models import Job, Model
from core.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from core.jobs import lifecycle as jobs
from core.jobs.planner import Architecture, UnsupportedArchitecture
from core.jobs.status import NON_FINAL_STATUSES
from core.settings import Settings
from core.storage.objects import ObjectStore, delete_prefix, upload_dir
from core.timeutil import utcnow

MODEL_SOURCES_PREFIX = "model-sources"
COMPLETE_MARKER = ".complete"  # the same name as worker.cache.COMPLETE_MARKER
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}$")
# Weights in any format but safetensors; the pickle-based ones run code when loaded.
PICKLE_SUFFIXES = (
    ".bin",
    ".pt",
    ".pth",
    ".pkl",
    ".pickle",
    ".ckpt",
    ".joblib",
    ".npy",
    ".npz",
    ".h5",
    ".msgpack",
)
CODE_SUFFIXES = (".py", ".pyc", ".so")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
# Besides *.safetensors, the files transformers reads to load a causal LM, its tokenizer and
# its chat template; nothing else of a source is copied.
MODEL_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.json",
        "vocab.txt",
        "merges.txt",
        "chat_template.jinja",
        "chat_template.json",
    }
)
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


def model_source_prefix(name: str) -> str:
    """Where a model's original GGUF file is kept until (and after) a worker converts it."""
    return f"{MODEL_SOURCES_PREFIX}/{name}"


def gguf_source_key(name: str) -> str:
    return f"{model_source_prefix(name)}/model.gguf"


def complete_marker_key(name: str) -> str:
    return f"{model_prefix(name)}/{COMPLETE_MARKER}"


def new_revision() -> str:
    """The content of a model's ``.complete`` marker: unique per registration."""
    return ids.new_id("rev-", 16)


@dataclass(frozen=True)
class RemovedModel:
    """A model deleted from the catalogue; delete ``prefixes`` once the removal is committed."""

    name: str
    prefixes: tuple[str, ...]
    cancelled_jobs: tuple[str, ...] = ()


@dataclass
class ModelInfo:
    """A base model as operators see it."""

    id: str
    source: str | None
    builtin: bool
    created_at: Any
    bytes: int
    stored: bool
    jobs: int
    active_jobs: int
    job_ids: list[dict[str, str]] | None = field(default=None)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "object": "model",
            "source": self.source,
            "builtin": self.builtin,
            "created_at": int(self.created_at.timestamp()),
            "bytes": self.bytes,
            "stored": self.stored,
            "jobs": self.jobs,
            "active_jobs": self.active_jobs,
        }
        if self.job_ids is not None:
            out["job_ids"] = self.job_ids
        return out


# --- validation ----------------------------------------------------------------------------


def _refuse(message: str) -> InvalidRequest:
    return InvalidRequest(message, param="source", code="invalid_model")


def check_name(name: str) -> str:
    if not MODEL_NAME.match(name or ""):
        raise InvalidRequest(
            f"Invalid model name '{name}': use 1-100 lowercase letters, digits, '.', '_' or "
            "'-', starting with a letter or digit",
            param="name",
            code="invalid_model_name",
        )
    return name


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise _refuse(f"{path.name} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _refuse(f"{path.name} must hold a JSON object")
    return data


def _check_safetensors(path: Path) -> None:
    """The file starts with a safetensors header (8-byte length + JSON), not a pickle."""
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) != 8:
            raise _refuse(f"{path.name} is not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", head)
        if not 2 <= length <= MAX_SAFETENSORS_HEADER:
            raise _refuse(f"{path.name} is not a safetensors file (bad header)")
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            header = None
    if not isinstance(header, dict):
        raise _refuse(f"{path.name} is not a safetensors file (bad header)")


def is_model_file(name: str) -> bool:
    """True for a file a model needs (weights, config, tokenizer, chat template), by name."""
    return name in MODEL_FILES or name.endswith(".safetensors")


def _refused_by_suffix(name: str) -> bool:
    return name.lower().endswith(PICKLE_SUFFIXES + CODE_SUFFIXES)


def _inside(path: Path, directory: Path) -> bool:
    """Whether ``path`` (followed through symbolic links) stays inside ``directory``.

    In the Hugging Face cache a snapshot's files are links into the repository's ``blobs``
    folder, which is as much the model's as the snapshot: links there are inside too.
    """
    real, root = path.resolve(), directory.resolve()
    roots = [root]
    if root.parent.name == "snapshots":
        roots.append(root.parent.parent / "blobs")
    return any(real.is_relative_to(r) for r in roots)


def _source_files(directory: Path) -> list[Path]:
    """The model files of ``directory``'s top level (and the refused kinds, to name them)."""
    files = []
    for path in sorted(directory.iterdir()):
        name = path.name
        if name.startswith(".") or not (is_model_file(name) or _refused_by_suffix(name)):
            continue
        if not _inside(path, directory):
            raise _refuse(
                f"{name} is a symbolic link to {path.resolve()}, outside {directory}: only "
                "files inside the model directory are registered (copy them in, e.g. cp -L)"
            )
        if not path.resolve().is_file():
            raise _refuse(f"{name} in {directory} is not a regular file")
        files.append(path)
    return files


def validate_model_dir(directory: Path) -> list[Path]:
    """Check a Hugging Face model directory; returns the files to copy.

    Those are the top-level files a model needs (:func:`is_model_file`), each a regular file
    inside the directory. Raises InvalidRequest naming the problem: a link leading out of the
    directory, missing config/weights/tokenizer/chat template, pickle weights, custom code
    (``auto_map``, ``*.py``), or a broken safetensors file.
    """
    if not directory.is_dir():
        raise _refuse(f"{directory} is not a directory")
    files = _source_files(directory)
    names = {p.name for p in files}
    pickles = [p.name for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        raise _refuse(
            f"only safetensors weights are accepted, not {', '.join(pickles)}: "
            "pickle-based formats (.bin, .pt, .pth, .ckpt, ...) can run code when "
            "loaded. Remove those files or convert them to safetensors"
        )
    code = [p.name for p in files if p.suffix.lower() in CODE_SUFFIXES]
    if code:
        raise _refuse(
            f"models with custom code are not accepted ({', '.join(code)}); only "
            "architectures built into transformers can be registered"
        )
    if "config.json" not in names:
        raise _refuse(f"{directory} has no config.json: not a Hugging Face model directory")
    config = _read_json(directory / "config.json")
    for json_name in ("config.json", "tokenizer_config.json"):
        data = (
            config
            if json_name == "config.json"
            else (_read_json(directory / json_name) if json_name in names else {})
        )
        if data.get("auto_map") or data.get("trust_remote_code"):
            raise _refuse(
                f"{json_name} has 'auto_map': the model needs trust_remote_code "
                "(custom code), which Dorado never enables"
            )
    if not config.get("model_type"):
        raise _refuse("config.json has no 'model_type'")
    weights = [p for p in files if p.suffix == ".safetensors"]
    if not weights:
        raise _refuse(f"{directory} has no *.safetensors weights (only safetensors are accepted)")
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = set((_read_json(index).get("weight_map") or {}).values())
        missing = sorted(shards - names)
        if missing:
            raise _refuse(f"weight shards listed in {index.name} are missing: {', '.join(missing)}")
    for path in weights:
        _check_safetensors(path)
    if not any(n in names for n in TOKENIZER_FILES):
        raise _refuse(f"{directory} has no tokenizer (one of {', '.join(TOKENIZER_FILES)})")
    template = (
        "chat_template.jinja" in names
        or "chat_template.json" in names
        or bool(
            "tokenizer_config.json" in names
            and _read_json(directory / "tokenizer_config.json").get("chat_template")
        )
    )
    if not template:
        raise _refuse(
            "the tokenizer has no chat template (chat_template in "
            "tokenizer_config.json or chat_template.jinja): Dorado trains on chat "
            "data rendered with the model's template"
        )
    return files


def validate_gguf(path: Path) -> None:
    """A GGUF model file: its whole header parses and its tensors lie inside it."""
    inspect_gguf(path)


# --- sources ---------------------------------------------------------------------------------


def _download_s3_prefix(settings: Settings, url: str, dest: Path) -> None:
    """Copy the top-level objects of ``s3://bucket/prefix`` into ``dest``."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        _copy_s3_prefix(settings, url, dest)
    except (BotoCoreError, ClientError) as exc:
        raise _refuse(f"Could not read {url}: {exc}") from exc


def _copy_s3_prefix(settings: Settings, url: str, dest: Path) -> None:
    import boto3
    from botocore.config import Config

    parsed = urlparse(url)
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    if not bucket:
        raise _refuse(f"Invalid S3 URL '{url}': use s3://bucket/prefix")
    client = boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=10,
            retries={"max_attempts": 3, "mode": "standard"},
        ),
    )
    full = f"{prefix}/" if prefix else ""
    found = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=full):
        for obj in page.get("Contents", []):
            rest = obj["Key"][len(full) :]
            if not rest or "/" in rest or rest.startswith("."):
                continue  # nested folders are never loaded by Hugging Face
            if not (is_model_file(rest) or _refused_by_suffix(rest)):
                continue  # READMEs, images, ...: not part of the model
            if _refused_by_suffix(rest):
                (dest / rest).touch()  # let validation name it; never download it
            else:
                client.download_file(bucket, obj["Key"], str(dest / rest))
            found += 1
    if not found:
        raise _refuse(f"No objects under {url}")


def default_name(source: str) -> str:
    """A catalogue name from a source: its last path component (a Hub repository's name),
    lowercased and tidied."""
    wanted = hub.parse_hub_source(source) if not source.startswith("s3://") else None
    last = wanted.repo_id.split("/")[1] if wanted else Path(source.rstrip("/")).name
    if last.lower().endswith(".gguf"):
        last = last[:-5]
    return re.sub(r"[^a-z0-9._-]+", "-", last.lower()).strip("-._")[:100]


def describe_source(source: str) -> str:
    """The kind of a source argument: ``s3``, ``hf`` (a Hub repository), ``gguf`` or ``dir``."""
    if source.startswith("s3://"):
        return "s3"
    if hub.parse_hub_source(source) is not None:
        return "hf"
    return "gguf" if source.lower().endswith(".gguf") else "dir"


def _stage(store: ObjectStore, name: str, files: list[Path]) -> int:
    with tempfile.TemporaryDirectory(prefix="dorado-model-") as tmp:
        staged = Path(tmp)
        # upload_dir wants one directory: link the chosen files (no copy of the weights).
        for path in files:
            (staged / path.name).symlink_to(path.resolve())
        upload_dir(store, model_prefix(name), staged)
    marker = Path(tempfile.mkstemp(prefix="dorado-rev-")[1])
    try:
        marker.write_text(new_revision())
        store.put_file(complete_marker_key(name), marker)  # last: the model is complete
    finally:
        marker.unlink(missing_ok=True)
    return sum(p.stat().st_size for p in files)


def add_model(
    session: Session, store: ObjectStore, settings: Settings, *, name: str, source: str
) -> Model:
    """Validate ``source`` and copy it into the model store, then add the catalogue row.

    ``source`` is a local directory, an ``s3://bucket/prefix`` or a ``*.gguf`` file path on
    this machine. Raises InvalidRequest (nothing stored) or Conflict (the name is taken).
    """
    check_name(name)
    if session.get(Model, name) is not None:
        raise Conflict(f"A model named '{name}' already exists", param="name", code="model_exists")
    kind = describe_source(source)
    config: dict[str, Any] | None = None
    if kind == "s3":
        with tempfile.TemporaryDirectory(prefix="dorado-s3-model-") as tmp:
            _download_s3_prefix(settings, source, Path(tmp))
            files = validate_model_dir(Path(tmp))
            config = architecture_of(Path(tmp))
            _clear(store, name)
            _stage(store, name, files)
        recorded = source
    elif kind == "hf":
        wanted = hub.parse_hub_source(source)
        assert wanted is not None  # describe_source said so
        snapshot = hub.download(wanted)
        files = validate_model_dir(snapshot)
        config = architecture_of(snapshot)
        _clear(store, name)
        _stage(store, name, files)
        # The snapshot folder is named by the commit: record exactly what was copied.
        recorded = f"hf:{wanted.repo_id}@{snapshot.name}"
    else:
        path = _local_path(source)
        try:
            if kind == "gguf":
                validate_gguf(path)
                _clear(store, name)
                store.put_file(gguf_source_key(name), path)
            else:
                files = validate_model_dir(path)
                config = architecture_of(path)
                _clear(store, name)
                _stage(store, name, files)
        except OSError as exc:
            raise _refuse(f"Cannot read {source}: {exc.strerror or exc}") from exc
        recorded = f"{kind}:{path.resolve()}"
    row = Model(
        id=name,
        kind="base",
        owned_by="dorado",
        builtin=False,
        source=recorded,
        config=config,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row


def architecture_of(directory: Path) -> dict[str, Any] | None:
    """The architecture keys of a validated model directory's config.json (None when the
    memory planner does not know its model type: such a model trains, unsized)."""
    try:
        return Architecture.from_config(_read_json(directory / "config.json")).as_config()
    except UnsupportedArchitecture:
        return None


def _local_path(source: str) -> Path:
    if not source or "\0" in source:
        raise _refuse("The source must be a path, s3://bucket/prefix or a .gguf file")
    try:
        return Path(source).expanduser()
    except RuntimeError as exc:  # ~user that does not exist
        raise _refuse(f"Invalid path {source}: {exc}") from exc


def _clear(store: ObjectStore, name: str) -> None:
    """Remove leftovers of an earlier model of this name (removed, or an add that never
    committed), so that no stale file mixes with the new ones."""
    delete_prefix(store, model_prefix(name))
    delete_prefix(store, model_source_prefix(name))


# --- listing and removal -------------------------------------------------------------------


def stored_bytes(store: ObjectStore, name: str) -> tuple[int, bool]:
    """Bytes a model takes in the store, and whether its weights are ready there."""
    total, complete = 0, False
    for prefix in (model_prefix(name), model_source_prefix(name)):
        for obj in store.list_objects(prefix):
            total += obj.size
            complete = complete or obj.key == complete_marker_key(name)
    return total, complete


def list_models(
    session: Session, store: ObjectStore, *, with_jobs: bool = False
) -> list[ModelInfo]:
    """Every base model with its size in the store and the jobs that use it."""
    rows = list(
        session.scalars(
            select(Model).where(Model.kind == "base").order_by(Model.created_at, Model.id)
        )
    )
    counts = dict(session.execute(select(Job.model, func.count()).group_by(Job.model)).all())
    active = dict(
        session.execute(
            select(Job.model, func.count())
            .where(Job.status.in_(NON_FINAL_STATUSES))
            .group_by(Job.model)
        ).all()
    )
    out = []
    for row in rows:
        size, stored = stored_bytes(store, row.id)
        info = ModelInfo(
            id=row.id,
            source=row.source,
            builtin=row.builtin,
            created_at=row.created_at,
            bytes=size,
            stored=stored,
            jobs=counts.get(row.id, 0),
            active_jobs=active.get(row.id, 0),
        )
        if with_jobs:
            info.job_ids = [
                {"id": j.id, "status": j.status, "organization_id": j.organization_id}
                for j in session.scalars(
                    select(Job).where(Job.model == row.id).order_by(Job.created_at)
                )
            ]
        out.append(info)
    return out


def get_registered_model(session: Session, name: str) -> Model:
    row = session.get(Model, name)
    if row is None or row.kind != "base":
        raise NotFound(f"No base model named '{name}'", param="name", code="model_not_found")
    return row


def remove_model(session: Session, name: str, *, force: bool = False) -> RemovedModel:
    """Delete a registered base model's row; built-ins never go.

    Refused (Conflict) while non-terminal jobs use it, unless ``force``: those jobs are then
    cancelled. Delete the returned prefixes from the store after committing.
    """
    row = get_registered_model(session, name)
    if row.builtin:
        raise PermissionDenied(
            f"'{name}' is a built-in model and cannot be removed",
            param="name",
            code="model_builtin",
        )
    users = list(
        session.scalars(
            select(Job)
            .where(Job.model == name, Job.status.in_(NON_FINAL_STATUSES))
            .order_by(Job.created_at)
        )
    )
    if users and not force:
        shown = ", ".join(f"{j.id} ({j.status})" for j in users[:10])
        raise Conflict(
            f"{len(users)} unfinished job(s) use '{name}': {shown}. Wait for them, "
            "cancel them, or remove with --force (cancels them)",
            param="name",
            code="model_in_use",
        )
    cancelled = []
    for job in users:
        jobs.cancel_job(session, job.organization_id, job.id)
        jobs.add_event(
            session, job.id, f"Base model '{name}' was removed by an operator", level="warn"
        )
        cancelled.append(job.id)
    session.delete(row)
    session.flush()
    return RemovedModel(
        name=name,
        prefixes=(model_prefix(name), model_source_prefix(name)),
        cancelled_jobs=tuple(cancelled),
    )
