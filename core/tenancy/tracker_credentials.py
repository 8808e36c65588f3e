"""An organization's experiment-tracker credentials: its Weights & Biases API key.

The worker needs the key itself to log a job's run, so it is sealed (Fernet, under a key
derived from the platform secret with a purpose label of its own), never hashed; the API
shows only a hint. Jobs never carry the key: their ``integrations`` name the project only.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from core.errors import InvalidRequest
from core.settings import Settings
from core.tenancy.auth import get_organization
from core.tenancy.secret import platform_secret
from core.webhooks.signing import SecretBox

PURPOSE = b"dorado/tracker-credentials/v1"
MAX_KEY_LENGTH = 256


def credentials_box(settings: Settings) -> SecretBox:
    """The box that seals tracker credentials with this deployment's platform secret."""
    return SecretBox(platform_secret(settings), purpose=PURPOSE)


def set_wandb_api_key(session: Session, box: SecretBox, org_id: str, api_key: str | None) -> None:
    """Store (or with None, remove) the organization's W&B API key."""
    org = get_organization(session, org_id)
    if api_key is None:
        org.wandb_api_key_encrypted = None
        org.wandb_api_key_hint = None
        return
    if not isinstance(api_key, str) or not api_key.strip():
        raise InvalidRequest(
            "'wandb_api_key' must be a non-empty string (or null to remove it)",
            param="wandb_api_key",
        )
    api_key = api_key.strip()
    if len(api_key) > MAX_KEY_LENGTH or any(c.isspace() for c in api_key):
        raise InvalidRequest(
            f"'wandb_api_key' must be one token of at most {MAX_KEY_LENGTH} characters",
            param="wandb_api_key",
        )
    org.wandb_api_key_encrypted = box.seal(api_key)
    org.wandb_api_key_hint = "..." + api_key[-4:]


def wandb_api_key(session: Session, box: SecretBox, org_id: str) -> str | None:
    """The organization's W&B API key in clear (the worker's use only), or None."""
    org = get_organization(session, org_id)
    return box.open(org.wandb_api_key_encrypted) if org.wandb_api_key_encrypted else None


def has_wandb_api_key(session: Session, org_id: str) -> bool:
    return get_organization(session, org_id).wandb_api_key_encrypted is not None


def integrations_settings_dict(session: Session, org_id: str) -> dict[str, Any]:
    """The organization's integration settings as the API shows them: hints, never keys."""
    org = get_organization(session, org_id)
    return {
        "object": "organization.integrations",
        "wandb": {
            "api_key_set": org.wandb_api_key_encrypted is not None,
            "api_key_hint": org.wandb_api_key_hint,
        },
    }


def check_integrations_usable(
    session: Session, org_id: str, integrations: list[dict[str, Any]], settings: Settings
) -> None:
    """Refuse, at job creation, an integration the worker could not honour: MLflow while the
    operator names no tracking server, W&B while the organization has no API key."""
    for index, item in enumerate(integrations):
        param = f"integrations[{index}]"
        if item["type"] == "mlflow" and not settings.mlflow_tracking_uri:
            raise InvalidRequest(
                "MLflow is not enabled on this deployment: the operator sets "
                "DORADO_MLFLOW_TRACKING_URI to the tracking server",
                param=param,
                code="integration_unavailable",
            )
        if item["type"] == "wandb" and not has_wandb_api_key(session, org_id):
            raise InvalidRequest(
                "The organization has no Weights & Biases API key: an admin key sets it with "
                'POST /v1/organization/integrations {"wandb_api_key": ...} or '
                "`dorado-admin orgs set-wandb-key`",
                param=param,
                code="integration_unavailable",
            )
