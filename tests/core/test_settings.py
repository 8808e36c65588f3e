"""core.settings: one validated source for every DORADO_* variable, and database URLs as
people write them (core.database_url, core.db.engine.check_database)."""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path

import pydantic
import pytest

from core.database_url import normalize_database_url
from core.db.engine import check_database, get_engine
from core.errors import ConfigurationError, DatabaseUnavailable, DatabaseUrlError
from core.observability.jsonlog import json_logging_requested
from core.observability.metrics import multiprocess_dir
from core.settings import Settings, SettingsError, env_name, load_settings


@pytest.fixture
def env(monkeypatch, tmp_path):
    """No DORADO_* (nor AWS region, nor prometheus folder) from the caller's environment."""
    for name in list(os.environ):
        if name.upper().startswith("DORADO_") or name in (
            "AWS_DEFAULT_REGION",
            "PROMETHEUS_MULTIPROC_DIR",
            "prometheus_multiproc_dir",
        ):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_embedded_defaults_unchanged(env, tmp_path) -> None:
    settings = load_settings()
    home = (tmp_path / ".dorado").resolve()
    assert settings.home == home
    assert settings.database_url == f"sqlite:///{home}/dorado.db"
    assert settings.storage_url == f"file://{home}/objects"
    assert settings.broker_url == "filesystem://"
    assert settings.uses_filesystem_broker
    assert settings.model_cache_dir == home / "cache" / "models"
    assert settings.s3_region == "us-east-1"
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert (settings.lease_seconds, settings.max_job_seconds, settings.max_job_retries) == (
        120,
        86400,
        3,
    )
    assert settings.max_upload_bytes == 512 * 1024 * 1024
    assert settings.max_json_bytes == 2 * 1024 * 1024
    assert settings.secret_key_file is None and settings.bootstrap_api_key is None
    assert settings.inference_base_url == "http://127.0.0.1:8001"
    assert (settings.log_level, settings.log_format, settings.metrics_dir) == ("INFO", "text", None)
    assert settings.session_cookie_secure is False


def test_values_from_the_environment(env, tmp_path) -> None:
    env.setenv("DORADO_HOME", str(tmp_path / "h"))
    env.setenv("DORADO_MODEL_CACHE", "$DORADO_HOME/models")
    env.setenv("DORADO_PORT", "9000")
    env.setenv("DORADO_SWEEP_INTERVAL_SECONDS", "2.5")
    env.setenv("DORADO_POOLS", "default=23034, big")
    env.setenv("DORADO_LOG_LEVEL", "debug")
    env.setenv("DORADO_INFERENCE_PORT", "")  # empty: the default
    env.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    settings = load_settings()
    assert settings.database_url == f"sqlite:///{tmp_path / 'h'}/dorado.db"
    assert settings.model_cache_dir == tmp_path / "h" / "models"
    assert (settings.port, settings.sweep_interval_seconds) == (9000, 2.5)
    assert settings.declared_pools == {"default": 23034, "big": None}
    assert settings.log_level == "DEBUG"
    assert settings.inference_port is None
    assert settings.s3_region == "eu-west-1"
    env.setenv("DORADO_S3_REGION", "ap-south-1")
    assert load_settings().s3_region == "ap-south-1"  # DORADO_S3_REGION wins


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DORADO_MAX_JOB_SECONDS", "abc", "DORADO_MAX_JOB_SECONDS='abc': not an integer"),
        ("DORADO_PORT", "80.5", "DORADO_PORT='80.5': not an integer"),
        ("DORADO_SWEEP_INTERVAL_SECONDS", "soon", "DORADO_SWEEP_INTERVAL_SECONDS='soon': not a"),
        ("DORADO_SESSION_COOKIE_SECURE", "maybe", "DORADO_SESSION_COOKIE_SECURE='maybe': not a"),
        ("DORADO_LOG_LEVEL", "loud", "DORADO_LOG_LEVEL='loud': not a log level"),
        ("DORADO_LOG_FORMAT", "xml", "DORADO_LOG_FORMAT='xml': not a log format"),
        ("DORADO_WORKER_GPUS_PER_JOB", "two", "DORADO_WORKER_GPUS_PER_JOB='two': use \"all\""),
        ("DORADO_POOLS", "big=lots", "DORADO_POOLS='big=lots': 'big=lots' is not"),
        ("DORADO_DATABASE_URL", "mysql://u:pw@h/db", "DORADO_DATABASE_URL='mysql://u:***@h/db'"),
        ("DORADO_DATABASE_URL", "nonsense", "DORADO_DATABASE_URL='nonsense': not a database URL"),
    ],
)
def test_a_bad_value_names_the_variable_on_one_line(env, name, value, message) -> None:
    env.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)
    assert "pw" not in str(raised.value)  # a database password is never echoed


def test_several_bad_values_are_all_named(env) -> None:
    env.setenv("DORADO_PORT", "x")
    env.setenv("DORADO_LEASE_SECONDS", "y")
    with pytest.raises(SettingsError, match="DORADO_PORT='x'.*; DORADO_LEASE_SECONDS='y'"):
        load_settings()


def test_settings_are_frozen_and_copied_with_updates(env) -> None:
    settings = load_settings()
    with pytest.raises(pydantic.ValidationError):
        settings.port = 1  # type: ignore[misc]
    other = settings.model_copy(update={"port": 1})
    assert (other.port, settings.port) == (1, 8000)
    assert hash(settings) == hash(load_settings()) and settings == load_settings()


def test_every_field_has_a_description_and_its_own_variable() -> None:
    names = [env_name(field) for field in Settings.model_fields]
    assert len(set(names)) == len(names)
    assert all(name.startswith("DORADO_") for name in names)
    assert all(info.description for info in Settings.model_fields.values())
    assert env_name("model_cache_dir") == "DORADO_MODEL_CACHE"


def test_the_moved_readers_use_settings(env, tmp_path) -> None:
    assert not json_logging_requested() and multiprocess_dir() is None
    env.setenv("DORADO_LOG_FORMAT", "JSON")
    env.setenv("DORADO_METRICS_DIR", str(tmp_path / "metrics"))
    env.setenv("DORADO_SESSION_COOKIE_SECURE", "1")
    assert json_logging_requested()
    assert multiprocess_dir() == str(tmp_path / "metrics")
    assert load_settings().session_cookie_secure is True
    env.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "prom"))
    assert multiprocess_dir() == str(tmp_path / "prom")  # prometheus-client's own name wins


# --- database URLs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p@db:5432/dorado",
        "postgres://u:p@db:5432/dorado",
        "postgresql+psycopg2://u:p@db:5432/dorado",
    ],
)
def test_postgres_urls_map_to_the_installed_driver(url) -> None:
    assert normalize_database_url(url) == "postgresql+psycopg2://u:p@db:5432/dorado"


def test_query_and_sqlite_urls_are_kept() -> None:
    assert normalize_database_url("postgres://h/d?connect_timeout=5") == (
        "postgresql+psycopg2://h/d?connect_timeout=5"
    )
    assert normalize_database_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


@pytest.mark.skipif(importlib.util.find_spec("psycopg") is not None, reason="psycopg installed")
def test_a_driver_that_is_not_installed_says_what_to_write() -> None:
    with pytest.raises(DatabaseUrlError, match="'psycopg' driver is not installed; write "):
        normalize_database_url("postgresql+psycopg://h/d")


@pytest.mark.parametrize("url", ["mysql://h/d", "postgresql+pg8000://h/d", "http://h/d"])
def test_unsupported_urls_are_configuration_errors(url) -> None:
    with pytest.raises(ConfigurationError, match="unsupported"):
        normalize_database_url(url)


def test_environment_url_is_normalised(env) -> None:
    env.setenv("DORADO_DATABASE_URL", "postgres://dorado@db/dorado")
    assert load_settings().database_url == "postgresql+psycopg2://dorado@db/dorado"


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_engine_and_check_accept_urls_as_people_write_them(postgres_url, scheme) -> None:
    url = postgres_url.replace("postgresql+psycopg2", scheme, 1)
    check_database(url)
    with get_engine(url).connect() as connection:
        assert connection.exec_driver_sql("select 1").scalar() == 1
    get_engine(url).dispose()


def test_an_unreachable_database_is_one_readable_line() -> None:
    url = f"postgres://dorado:hunter2@127.0.0.1:{closed_port()}/dorado"
    with pytest.raises(DatabaseUnavailable) as raised:
        check_database(url)
    message = str(raised.value)
    assert message.startswith("DORADO_DATABASE_URL: cannot connect to postgresql+psycopg2://")
    assert "Connection refused" in message and "\n" not in message and "hunter2" not in message


def test_sqlite_needs_no_check(tmp_path: Path) -> None:
    check_database(f"sqlite:///{tmp_path / 'not-yet.db'}")
    assert not (tmp_path / "not-yet.db").exists()
