"""The platform's signing secret and the credentials derived from it.

One secret (``DORADO_SECRET_KEY``, or a file created once: ``DORADO_SECRET_KEY_FILE``, by
default under ``DORADO_HOME``) signs dashboard sessions and authenticates the API to the internal
inference service. Derived values are HMACs of a purpose label, so no two uses share a key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from pathlib import Path

from core.settings import Settings

log = logging.getLogger(__name__)

SECRET_FILE = "secret_key"
INTERNAL_PURPOSE = b"dorado/internal-service-token/v1"


def platform_secret(settings: Settings) -> str:
    """``DORADO_SECRET_KEY``, else the secret kept in ``DORADO_SECRET_KEY_FILE`` (default
    ``$DORADO_HOME/secret_key``), created on first use."""
    if settings.secret_key:
        return settings.secret_key
    return persistent_secret(settings.secret_key_file or settings.home / SECRET_FILE)


def internal_token(settings: Settings) -> str:
    """The bearer token the API presents to internal services (the inference service)."""
    key = platform_secret(settings).encode("utf-8")
    return hmac.new(key, INTERNAL_PURPOSE, hashlib.sha256).hexdigest()


def internal_token_ok(settings: Settings, header: str | None) -> bool:
    """Whether an ``Authorization`` header carries the internal token."""
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip(), internal_token(settings)
    )


def persistent_secret(path: Path) -> str:
    """A secret shared by every process that reads ``path``, created once.

    Without ``DORADO_SECRET_KEY`` each gunicorn worker would otherwise pick its own random
    secret and reject the cookies the other one signed. Several machines need the variable.
    """
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(50):
            try:
                value = path.read_text().strip()
            except FileNotFoundError:
                value = ""
            if value:
                return value
            tmp = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
            try:
                os.link(tmp, path)  # atomic: exactly one process's secret wins
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
            time.sleep(0.01)
    except OSError as exc:
        log.warning(
            "cannot keep a secret in %s (%s): dashboard sessions will not survive a "
            "restart and processes will not trust each other: set DORADO_SECRET_KEY",
            path,
            exc,
        )
    return secrets.token_hex(32)
