"""docker-compose.yml: valid against the Compose Specification schema, and wired as intended.

The schema is the compose-spec JSON schema that check-jsonschema vendors (offline). Docker
Compose interpolates ``${VAR:-default}`` before it validates, so the test does the same with
an empty environment (every default applies).
"""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import ROOT

COMPOSE = ROOT / "docker-compose.yml"
VARIABLE = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_]\w*))")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose-style interpolation of every string in ``value`` ($$ stays a literal $)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, default = match.group(2), match.group(3) or ""
        current = env.get(name)
        if op in (":-",) and not current:
            return default
        if op == "-" and current is None:
            return default
        if op in (":?", "?") and not current:
            raise AssertionError(f"required variable {name} unset: {default}")
        return current or ""

    return VARIABLE.sub(sub, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), {})


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    pytest.importorskip("check_jsonschema", reason="dev dependency check-jsonschema missing")
    path = resources.files("check_jsonschema") / "builtin_schemas/vendor/compose-spec.json"
    return json.loads(path.read_text(encoding="utf-8"))


def test_validates_against_compose_spec(compose: dict[str, Any], compose_schema) -> None:
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(compose_schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors
    )


def test_schema_rejects_a_broken_file(compose: dict[str, Any], compose_schema) -> None:
    from jsonschema import Draft202012Validator

    broken = json.loads(json.dumps(compose))
    broken["services"]["api"]["depends_on"]["migrate"]["condition"] = "service_done"
    broken["services"]["api"]["helthcheck"] = {}
    assert len(list(Draft202012Validator(compose_schema).iter_errors(broken))) >= 2


def test_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= {
        "postgres",
        "redis",
        "minio",
        "minio-init",
        "migrate",
        "api",
        "worker",
        "worker-cpu",
        "validator",
        "scheduler",
        "inference",
        "inference-cpu",
    }


def test_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("api", "worker", "worker-cpu", "validator", "scheduler"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["redis"]["condition"] == "service_healthy", name
    for name in ("api", "worker", "worker-cpu"):
        assert (
            services[name]["depends_on"]["minio-init"]["condition"]
            == "service_completed_successfully"
        )
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    for name in ("postgres", "redis", "minio", "api", "worker"):
        assert "healthcheck" in services[name], name
    for name in ("migrate", "minio-init"):
        assert services[name]["restart"] == "no"


def test_commands(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["command"] == ["dorado", "migrate"]
    assert services["scheduler"]["command"] == ["dorado", "scheduler"]
    assert services["api"]["command"][-1] == "api.wsgi:app"
    assert "mc mb --ignore-existing" in services["minio-init"]["command"][0]


def test_gpu_worker_and_cpu_fallback(compose: dict[str, Any]) -> None:
    worker, cpu = compose["services"]["worker"], compose["services"]["worker-cpu"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "profiles" not in worker
    assert cpu["profiles"] == ["cpu"]
    assert "deploy" not in cpu
    assert "cpu" in cpu["build"]["args"]["TORCH_SPEC"]


def test_service_wiring(compose: dict[str, Any]) -> None:
    env = compose["services"]["api"]["environment"]
    assert env["DORADO_DATABASE_URL"].startswith("postgresql+psycopg2://dorado:")
    assert "@postgres:5432/dorado" in env["DORADO_DATABASE_URL"]
    assert env["DORADO_BROKER_URL"] == "redis://redis:6379/0"
    assert env["DORADO_STORAGE_URL"] == "s3://dorado"
    assert env["DORADO_S3_ENDPOINT_URL"] == "http://minio:9000"
    minio = compose["services"]["minio"]["environment"]
    assert (minio["MINIO_ROOT_USER"], minio["MINIO_ROOT_PASSWORD"]) == (
        env["AWS_ACCESS_KEY_ID"],
        env["AWS_SECRET_ACCESS_KEY"],
    )
    # Published on loopback unless API_BIND_ADDRESS says otherwise.
    assert compose["services"]["api"]["ports"] == ["127.0.0.1:8000:8000"]
    assert set(compose["volumes"]) >= {"pgdata", "miniodata", "models"}


def test_interpolation_reads_the_environment() -> None:
    doc = interpolate(yaml.safe_load(COMPOSE.read_text()), {"POSTGRES_PASSWORD": "s3cret"})
    assert ":s3cret@postgres" in doc["services"]["api"]["environment"]["DORADO_DATABASE_URL"]


def test_validator_serves_the_validation_queue(compose: dict[str, Any]) -> None:
    command = compose["services"]["validator"]["command"]
    assert command[command.index("-Q") + 1] == "dorado.validate"
    assert "deploy" not in compose["services"]["validator"]  # no GPU needed


def test_inference_service_behind_the_api(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["api"]["environment"]["DORADO_INFERENCE_URL"] == "http://inference:8001"
    gpu, cpu = services["inference"], services["inference-cpu"]
    for service in (gpu, cpu):
        assert service["command"][:2] == ["dorado-worker", "serve-inference"]
        assert service["command"][service["command"].index("--port") + 1] == "8001"
        assert "8001" in service["healthcheck"]["test"][-1]
        assert "ports" not in service  # it trusts its caller: reachable by the API only
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "profiles" not in gpu
    assert cpu["profiles"] == ["cpu"] and "deploy" not in cpu
    assert cpu["networks"]["default"]["aliases"] == ["inference"]
