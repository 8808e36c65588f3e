"""Object storage: one protocol, a local-directory backend and an S3 (boto3) backend.

Keys are always built by the platform from ids (``files/<file id>``, ``jobs/<job id>/...``),
never from user-supplied names.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urlparse

from core.settings import Settings

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024


class ObjectNotFound(KeyError):
    pass


@dataclass(frozen=True)
class StoredObject:
    """One object as a listing sees it (``modified`` is timezone-aware UTC)."""

    key: str
    size: int
    modified: datetime


class ObjectStore(Protocol):
    def put_fileobj(self, key: str, fileobj: BinaryIO) -> None: ...
    def put_file(self, key: str, path: Path) -> None: ...
    def iter_chunks(self, key: str) -> Iterator[bytes]: ...
    def download_file(self, key: str, dest: Path) -> None: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def list_keys(self, prefix: str) -> list[str]: ...
    def list_objects(self, prefix: str) -> Iterator[StoredObject]: ...
    def delete(self, key: str) -> None: ...


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid object key: {key!r}")
    return key


class LocalStore:
    """Objects as files under one root; writes go through a temp file and a rename."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put_fileobj(self, key: str, fileobj: BinaryIO) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(fileobj, out, CHUNK)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as handle:
            self.put_fileobj(key, handle)

    def iter_chunks(self, key: str) -> Iterator[bytes]:
        """Opens eagerly (a missing object raises here), then streams."""
        try:
            handle = open(self._path(key), "rb")
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(key) from None

        def chunks() -> Iterator[bytes]:
            with handle:
                while chunk := handle.read(CHUNK):
                    yield chunk

        return chunks()

    def download_file(self, key: str, dest: Path) -> None:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(key)
        return path.stat().st_size

    def list_keys(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.exists():
            return []
        return sorted(
            str(p.relative_to(self.root))
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".upload-")
        )

    def list_objects(self, prefix: str) -> Iterator[StoredObject]:
        """Every object below ``prefix/`` with its size and modification time."""
        base = self.root / _check_key(prefix.rstrip("/"))
        if not base.is_dir():
            return
        for path in sorted(base.rglob("*")):
            if path.name.startswith(".upload-"):
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:  # deleted while listing
                continue
            if path.is_file():
                yield StoredObject(
                    str(path.relative_to(self.root)),
                    stat.st_size,
                    datetime.fromtimestamp(stat.st_mtime, timezone.utc),
                )

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3Store:
    """Any S3-compatible store (AWS S3, MinIO). Uploads are multipart for large objects."""

    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None, region: str):
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": 5, "mode": "standard"},
            ),
        )

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _missing(self, exc: Exception) -> bool:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        return code in ("404", "NoSuchKey", "NotFound")

    def put_fileobj(self, key: str, fileobj: BinaryIO) -> None:
        self.client.upload_fileobj(fileobj, self.bucket, self._key(key))

    def put_file(self, key: str, path: Path) -> None:
        self.client.upload_file(str(path), self.bucket, self._key(key))

    def iter_chunks(self, key: str) -> Iterator[bytes]:
        """Opens eagerly (a missing object raises here), then streams."""
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except ClientError as exc:
            if self._missing(exc):
                raise ObjectNotFound(key) from exc
            raise

        def chunks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(CHUNK)
            finally:
                body.close()

        return chunks()

    def download_file(self, key: str, dest: Path) -> None:
        from botocore.exceptions import ClientError

        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.client.download_file(self.bucket, self._key(key), str(dest))
        except ClientError as exc:
            if self._missing(exc):
                raise ObjectNotFound(key) from exc
            raise

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
            return True
        except ObjectNotFound:
            return False

    def size(self, key: str) -> int:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if self._missing(exc):
                raise ObjectNotFound(key) from exc
            raise
        return int(head["ContentLength"])

    def list_keys(self, prefix: str) -> list[str]:
        full = self._key(prefix.rstrip("/")) + "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)

    def list_objects(self, prefix: str) -> Iterator[StoredObject]:
        """Every object below ``prefix/`` with its size and last-modified time."""
        full = self._key(prefix.rstrip("/")) + "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            for obj in page.get("Contents", []):
                yield StoredObject(obj["Key"][strip:], int(obj["Size"]), obj["LastModified"])

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))


def open_store(settings: Settings) -> ObjectStore:
    """The store named by ``DORADO_STORAGE_URL`` (``file:///dir`` or ``s3://bucket/prefix``)."""
    url = urlparse(settings.storage_url)
    if url.scheme == "file":
        return LocalStore(Path(url.path))
    if url.scheme == "s3":
        return S3Store(url.netloc, url.path, settings.s3_endpoint_url, settings.s3_region)
    raise ValueError(f"unsupported DORADO_STORAGE_URL scheme: {settings.storage_url!r}")


def upload_dir(store: ObjectStore, prefix: str, directory: Path) -> list[str]:
    """Upload every file below ``directory`` under ``prefix/``; returns the keys."""
    keys = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        key = f"{prefix}/{path.relative_to(directory).as_posix()}"
        store.put_file(key, path)
        keys.append(key)
    return keys


def download_dir(store: ObjectStore, prefix: str, dest: Path) -> int:
    """Download every object under ``prefix/`` into ``dest``; returns how many."""
    keys = store.list_keys(prefix)
    for key in keys:
        store.download_file(key, dest / key[len(prefix) + 1 :])
    return len(keys)


def delete_prefix(store: ObjectStore, prefix: str) -> int:
    """Delete every object under ``prefix/``; returns how many."""
    keys = store.list_keys(prefix)
    for key in keys:
        store.delete(key)
    return len(keys)
