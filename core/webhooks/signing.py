"""Standard Webhooks signatures, exactly as ``openai.Webhooks.verify_signature`` checks them,
and the encryption of signing secrets at rest.

A secret is ``whsec_`` + base64 of 24 random bytes; the HMAC key is those bytes. The signature
is ``v1,`` + base64(HMAC-SHA256(key, f"{webhook-id}.{webhook-timestamp}.{body}")); the SDK
refuses a timestamp more than 300 s from its clock, so every attempt is signed afresh.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time

from cryptography.fernet import Fernet

SECRET_PREFIX = "whsec_"
ENCRYPTION_PURPOSE = b"dorado/webhook-signing-secrets/v1"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def secret_hint(secret: str) -> str:
    """What may be shown later: the prefix and the last four characters."""
    return f"{SECRET_PREFIX}...{secret[-4:]}"


def signature(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signed_headers(
    secret: str, webhook_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` headers for ``body``."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signature(secret, webhook_id, ts, body),
    }


class SecretBox:
    """Encrypts signing secrets (Fernet: AES-128-CBC + HMAC) under a key derived from the
    platform secret: a database dump alone does not reveal them, the delivery loop can."""

    def __init__(self, platform_secret: str, purpose: bytes = ENCRYPTION_PURPOSE) -> None:
        # A purpose label per kind of secret: no two kinds share an encryption key.
        key = hmac.new(platform_secret.encode(), purpose, hashlib.sha256).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode()

    def open(self, sealed: str) -> str:
        return self._fernet.decrypt(sealed.encode()).decode()
