"""Organizations and API keys. Keys are stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from functools import cache

from sqlalchemy import Select, bindparam, func, select, update
from sqlalchemy.orm import Session

from core import ids
from core.db.models import ApiKey, Organization
from core.errors import AuthenticationFailed, InvalidRequest, NotFound
from core.timeutil import to_unix, utcnow

KEY_PREFIX = "dor-"
VISIBLE_PREFIX_CHARS = 12
LAST_USED_RESOLUTION = timedelta(seconds=60)
# admin: everything of its organization, keys included; member: everything in /v1 but key
# management and /v1/admin; read-only: GET/HEAD only (downloads included).
SCOPES = ("admin", "member", "read-only")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(30)


def create_organization(
    session: Session, name: str, *, is_operator: bool = False, max_queued_jobs: int | None = None
) -> Organization:
    """A new organization; ``max_queued_jobs`` is its queue cap (None: unlimited), which
    callers set from ``DORADO_DEFAULT_MAX_QUEUED_JOBS``."""
    org = Organization(
        id=ids.org_id(),
        name=name,
        created_at=utcnow(),
        is_operator=is_operator,
        max_queued_jobs=max_queued_jobs,
    )
    session.add(org)
    session.flush()
    return org


def add_key(
    session: Session, org: Organization, key: str, *, name: str = "", scope: str = "admin"
) -> ApiKey:
    """Store ``key`` (already generated or supplied by an operator) for ``org``."""
    check_scope(scope)
    row = ApiKey(
        id=ids.api_key_id(),
        organization_id=org.id,
        name=name,
        prefix=key[:VISIBLE_PREFIX_CHARS],
        key_hash=hash_key(key),
        scope=scope,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    return row


@cache
def _find_key_statement() -> Select:
    # Built once: every request runs it, and building costs more than the cached execution.
    return select(ApiKey).where(ApiKey.key_hash == bindparam("key_hash"))


def find_key(session: Session, key: str) -> ApiKey | None:
    return session.scalar(_find_key_statement(), {"key_hash": hash_key(key)})


def authenticate(session: Session, key: str | None) -> ApiKey:
    """The active key row for a bearer token, or AuthenticationFailed."""
    if not key:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
        )
    row = find_key(session, key)
    if row is None or row.revoked_at is not None:
        shown = key[:VISIBLE_PREFIX_CHARS] + "..." if len(key) > VISIBLE_PREFIX_CHARS else "***"
        raise AuthenticationFailed(f"Incorrect API key provided: {shown}")
    now = utcnow()
    # Throttled: a write on every request would make reads contend with workers' writes.
    if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
        session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
    return row


def check_scope(scope: str) -> str:
    """``scope`` if it is one of SCOPES, else InvalidRequest."""
    if scope not in SCOPES:
        raise InvalidRequest(
            f"Invalid scope '{scope}'. Use one of: {', '.join(SCOPES)}",
            param="scope",
            code="invalid_scope",
        )
    return scope


def get_organization(session: Session, org_id: str) -> Organization:
    org = session.get(Organization, org_id)
    if org is None:
        raise NotFound(f"No such organization: {org_id}", param="organization_id")
    return org


def list_organizations(session: Session) -> list[Organization]:
    """Every organization, oldest first (operators only: there are few)."""
    return list(
        session.scalars(select(Organization).order_by(Organization.created_at, Organization.id))
    )


def active_key_counts(session: Session) -> dict[str, int]:
    """Number of unrevoked keys per organization id."""
    rows = session.execute(
        select(ApiKey.organization_id, func.count())
        .where(ApiKey.revoked_at.is_(None))
        .group_by(ApiKey.organization_id)
    )
    return {org_id: count for org_id, count in rows}


def active_key_count(session: Session, org_id: str) -> int:
    """Number of unrevoked keys of one organization."""
    return (
        session.scalar(
            select(func.count())
            .select_from(ApiKey)
            .where(ApiKey.organization_id == org_id, ApiKey.revoked_at.is_(None))
        )
        or 0
    )


@dataclass(frozen=True)
class NewKey:
    """A key just created: ``secret`` is shown once and never stored."""

    row: ApiKey
    secret: str


def create_key(
    session: Session,
    org_id: str,
    *,
    name: str = "",
    scope: str = "member",
    max_active_keys: int | None = None,
) -> NewKey:
    """A new random key for ``org_id``; only its hash is kept.

    With ``max_active_keys``, an organization already holding that many unrevoked keys gets
    InvalidRequest (``key_limit_reached``): keys are not a way around per-key limits.
    """
    org = get_organization(session, org_id)
    if max_active_keys is not None:
        # Lock the organization row: two concurrent creations cannot both take the last slot.
        session.execute(select(Organization.id).where(Organization.id == org_id).with_for_update())
        active = active_key_count(session, org_id)
        if active >= max_active_keys:
            raise InvalidRequest(
                f"This organization has {active} active API keys, its limit is "
                f"{max_active_keys}. Revoke an unused key before creating another.",
                param=None,
                code="key_limit_reached",
            )
    secret = generate_key()
    return NewKey(add_key(session, org, secret, name=name[:200], scope=check_scope(scope)), secret)


def list_keys(session: Session, org_id: str, *, include_revoked: bool = True) -> list[ApiKey]:
    """The organization's keys (never their secrets), oldest first."""
    stmt = select(ApiKey).where(ApiKey.organization_id == org_id)
    if not include_revoked:
        stmt = stmt.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(stmt.order_by(ApiKey.created_at, ApiKey.id)))


def get_key(session: Session, key_id: str, *, org_id: str | None = None) -> ApiKey:
    """A key by id; with ``org_id``, another organization's key is NotFound too."""
    row = session.get(ApiKey, key_id)
    if row is None or (org_id is not None and row.organization_id != org_id):
        raise NotFound(f"No such API key: {key_id}", param="api_key_id")
    return row


def revoke_key(session: Session, key_id: str, *, org_id: str | None = None) -> ApiKey:
    """Revoke a key: the next request made with it is refused (401). Idempotent."""
    row = get_key(session, key_id, org_id=org_id)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row


class _Unset:
    pass


UNSET = _Unset()
# The largest value each quota column holds (INTEGER, INTEGER, BIGINT).
QUOTA_MAXIMUM = {
    "max_running_jobs": 2**31 - 1,
    "max_queued_jobs": 2**31 - 1,
    "storage_quota_bytes": 2**63 - 1,
}
QUOTA_FIELDS = tuple(QUOTA_MAXIMUM)


def set_quotas(session: Session, org_id: str, **quotas: int | None | _Unset) -> Organization:
    """Change an organization's quotas; a value of None means unlimited, UNSET leaves it."""
    org = get_organization(session, org_id)
    for field, value in quotas.items():
        if field not in QUOTA_FIELDS:
            raise InvalidRequest(f"Unknown quota '{field}'", param=field)
        if isinstance(value, _Unset):
            continue
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not 0 <= value <= QUOTA_MAXIMUM[field]
        ):
            raise InvalidRequest(
                f"'{field}' must be null or an integer from 0 to {QUOTA_MAXIMUM[field]}",
                param=field,
                code="invalid_value",
            )
        setattr(org, field, value)
    session.flush()
    return org


def organization_dict(org: Organization, *, active_keys: int | None = None) -> dict:
    """The wire/CLI form of an organization."""
    out = {
        "id": org.id,
        "object": "organization",
        "name": org.name,
        "created_at": to_unix(org.created_at),
        "is_operator": bool(org.is_operator),
        "max_running_jobs": org.max_running_jobs,
        "max_queued_jobs": org.max_queued_jobs,
        "storage_quota_bytes": org.storage_quota_bytes,
    }
    if active_keys is not None:
        out["active_keys"] = active_keys
    return out


def key_dict(row: ApiKey, secret: str | None = None) -> dict:
    """The wire/CLI form of a key: the secret only when it was just created."""
    ts = to_unix
    out = {
        "id": row.id,
        "object": "organization.api_key",
        "organization_id": row.organization_id,
        "name": row.name,
        "prefix": row.prefix,
        "scope": row.scope,
        "created_at": ts(row.created_at),
        "last_used_at": ts(row.last_used_at),
        "revoked_at": ts(row.revoked_at),
    }
    if secret is not None:
        out["key"] = secret
    return out
