"""The user commands' own logic, without a platform: request bodies, settings precedence and
the follow display."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import click
import pytest
from rich.console import Console

from cli.client import ClientError, ConfigError, load_config, normalize_base_url
from cli.commands.adapters import unpack
from cli.commands.follow import OUTCOME_EXIT_CODES, Metrics, render
from cli.commands.jobs import job_request

BASE = dict(
    model="tiny-random-llama",
    training_file="file-a",
    validation_file=None,
    method="dora",
    rank=None,
    alpha=None,
    dropout=None,
    target_modules=None,
    n_epochs=None,
    batch_size=None,
    learning_rate_multiplier=None,
    suffix=None,
    seed=None,
)


def test_unset_options_are_not_sent():
    assert job_request(**BASE) == {
        "model": "tiny-random-llama",
        "training_file": "file-a",
        "adapter": {"type": "dora"},
    }


def test_options_map_to_the_api_fields():
    body = job_request(
        **{
            **BASE,
            "method": "lora",
            "rank": 8,
            "alpha": 16,
            "target_modules": "q_proj, v_proj",
            "n_epochs": "3",
            "batch_size": "auto",
            "learning_rate_multiplier": "0.5",
            "seed": 7,
        },
        metadata=("team=nlp", "run=a=b"),
        extras={"max_run_seconds": 60},
    )
    assert body["adapter"] == {
        "type": "lora",
        "r": 8,
        "alpha": 16,
        "target_modules": ["q_proj", "v_proj"],
    }
    assert body["hyperparameters"] == {
        "n_epochs": 3,
        "batch_size": "auto",
        "learning_rate_multiplier": 0.5,
    }
    assert body["metadata"] == {"team": "nlp", "run": "a=b"}
    assert body["seed"] == 7 and body["max_run_seconds"] == 60


@pytest.mark.parametrize("field, value", [("n_epochs", "three"), ("learning_rate_multiplier", "x")])
def test_bad_numbers_are_usage_errors(field: str, value: str):
    with pytest.raises(click.BadParameter):
        job_request(**{**BASE, field: value})


def test_metadata_needs_key_value():
    with pytest.raises(click.BadParameter, match="KEY=VALUE"):
        job_request(**BASE, metadata=("nokey",))


@pytest.mark.parametrize(
    "given", ["http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/"]
)
def test_base_url_with_or_without_v1(given: str):
    assert normalize_base_url(given) == "http://h:8000"


def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = tmp_path / "config.toml"
    config.write_text('api_key = "from-file"\nbase_url = "http://file:1"\n')
    monkeypatch.setenv("DORADO_CONFIG", str(config))
    monkeypatch.delenv("DORADO_API_KEY", raising=False)
    monkeypatch.delenv("DORADO_BASE_URL", raising=False)
    assert (load_config().api_key, load_config().base_url) == ("from-file", "http://file:1")
    monkeypatch.setenv("DORADO_API_KEY", "from-env")
    monkeypatch.setenv("DORADO_BASE_URL", "http://env:2/v1")
    assert (load_config().api_key, load_config().base_url) == ("from-env", "http://env:2")
    assert load_config("http://option:3").base_url == "http://option:3"
    config.write_text("api_key = 5\n")
    monkeypatch.delenv("DORADO_API_KEY")
    with pytest.raises(ConfigError, match="must be a string"):
        load_config()


def test_default_url_is_the_launchers_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DORADO_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.delenv("DORADO_BASE_URL", raising=False)
    assert load_config().base_url == "http://127.0.0.1:8000"


def test_metrics_keep_the_last_validation_loss():
    metrics = Metrics()
    metrics.update({"step": 2, "total_steps": 10, "train_loss": 2.0, "valid_loss": 2.5})
    metrics.update({"step": 3, "total_steps": 10, "train_loss": 1.9, "valid_loss": None})
    assert (metrics.step, metrics.train_loss, metrics.valid_loss) == (3, 1.9, 2.5)
    metrics.update({"step": 10, "full_valid_loss": 1.7, "tokens_per_second": 1234.0})
    assert metrics.valid_loss == 1.7 and metrics.tokens_per_second == 1234.0


def test_the_live_panel_shows_step_losses_throughput_and_eta():
    job = {
        "id": "ftjob-x",
        "model": "m",
        "status": "running",
        "progress": {"step": 4, "total_steps": 10, "percent": 40.0},
        "estimated_finish": int(time.time()) + 95,
    }
    metrics = Metrics(train_loss=1.23456, valid_loss=1.5, tokens_per_second=2345.6)
    console = Console(record=True, width=100)
    console.print(render(job, metrics))
    text = console.export_text()
    assert "status: running" in text and "step 4/10" in text
    assert "loss 1.2346" in text and "val loss 1.5000" in text and "2,346 tokens/s" in text
    assert "ETA 1m3" in text  # 1m35s, give or take the second the test took


def test_each_outcome_has_its_own_exit_code():
    assert OUTCOME_EXIT_CODES["succeeded"] == 0
    codes = [OUTCOME_EXIT_CODES[s] for s in ("failed", "cancelled", "paused")]
    assert 0 not in codes and len(set(codes)) == 3


def _archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_unpack_lists_the_files(tmp_path: Path):
    archive = _archive(tmp_path / "a.tar.gz", {"adapter_config.json": b"{}", "b.bin": b"x"})
    assert unpack(archive, tmp_path / "out") == ["adapter_config.json", "b.bin"]
    assert (tmp_path / "out" / "adapter_config.json").read_bytes() == b"{}"


def test_unpack_refuses_paths_outside_the_folder(tmp_path: Path):
    archive = _archive(tmp_path / "evil.tar.gz", {"../escaped.txt": b"x"})
    with pytest.raises(ClientError, match="not a valid"):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()
