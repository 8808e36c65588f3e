"""Every setting the code reads is documented in .env.example and set in the k8s config."""

from __future__ import annotations

import re

import yaml

from tests.deploy.conftest import ROOT, settings_read_by_code

# `# NAME=` (wired by docker-compose.yml) counts as documented, as does `NAME=`.
ENV_LINE = re.compile(r"^\s*(?:#\s*)?([A-Z][A-Z0-9_]*)=", re.MULTILINE)
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}


def env_example_names() -> set[str]:
    return set(ENV_LINE.findall((ROOT / ".env.example").read_text(encoding="utf-8")))


def k8s_config_names() -> set[str]:
    base = ROOT / "infra" / "k8s" / "base"
    config = yaml.safe_load((base / "configmap.yaml").read_text())
    secret = yaml.safe_load((base / "secret.yaml").read_text())
    return set(config["data"]) | set(secret["stringData"])


def test_code_reads_settings() -> None:
    # Guards the grep itself: an empty set would make the other tests pass vacuously.
    assert {"DORADO_DATABASE_URL", "DORADO_BROKER_URL", "DORADO_STORAGE_URL"} <= (
        settings_read_by_code()
    )


def test_every_setting_in_env_example() -> None:
    missing = settings_read_by_code() - env_example_names()
    assert not missing, f"add to .env.example: {sorted(missing)}"


def test_env_example_names_no_unknown_setting() -> None:
    stale = {n for n in env_example_names() if n.startswith("DORADO_")} - settings_read_by_code()
    assert not stale, f".env.example documents settings no code reads: {sorted(stale)}"


def test_s3_credentials_documented() -> None:
    assert S3_CREDENTIALS <= env_example_names()
    assert S3_CREDENTIALS <= k8s_config_names()


def test_every_setting_in_k8s_configmap_or_secret() -> None:
    missing = settings_read_by_code() - k8s_config_names()
    assert not missing, f"add to infra/k8s/base configmap.yaml or secret.yaml: {sorted(missing)}"


def test_secrets_are_not_in_the_configmap() -> None:
    config = yaml.safe_load((ROOT / "infra/k8s/base/configmap.yaml").read_text())["data"]
    for name in (
        "DORADO_DATABASE_URL",
        "DORADO_BOOTSTRAP_API_KEY",
        "DORADO_SECRET_KEY",
        "AWS_SECRET_ACCESS_KEY",
        "DORADO_BROKER_URL",
    ):
        assert name not in config
