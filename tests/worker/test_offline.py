"""Worker-side processes never reach for a model hub (issue 22).

The worker's process start-up runs in a child process whose only way out is a proxy that
the test itself listens on (the offline variables unset), so that any hub lookup shows up as
a connection to it: the process trains and saves an adapter for ``tiny-random-llama`` (a
Dorado name that PEFT used to look up on the Hub), then merges it as the inference service
does.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.startup import OFFLINE_ENV

ROOT = Path(__file__).resolve().parents[2]

CHILD = """
import sys
from pathlib import Path

import worker.celery_app  # the worker's process start-up

from huggingface_hub import file_exists
from huggingface_hub.errors import OfflineModeIsEnabled

from tests.worker.helpers import PIRATE, RecordingReporter
from worker.inference.merge import merge_adapter
from worker.model_builders import build_builtin
from worker.training.recipe import train
from worker.training.options import EngineOptions
from worker.training.spec import AdapterSpec, TrainSpec

tmp = Path(sys.argv[1])
try:
    file_exists("HuggingFaceTB/SmolLM2-135M-Instruct", "config.json")
    print("HUB LOOKUP ANSWERED")
except OfflineModeIsEnabled:
    print("hub lookup refused offline")
build_builtin("tiny-random-llama", tmp / "base")
data = tmp / "train.jsonl"
data.write_text("\\n".join(PIRATE.read_text().splitlines()[:8]) + "\\n")
spec = TrainSpec(
    adapter=AdapterSpec(type="dora", r=4, alpha=8),
    n_epochs=1,
    batch_size=4,
    learning_rate=1e-3,
    seed=1,
    options=EngineOptions(device="cpu", base_model_name="tiny-random-llama"),
)
result = train(spec, tmp / "base", data, tmp / "adapter", RecordingReporter())
merge_adapter(tmp / "base", result.adapter_dir, tmp / "merged")
print("adapter", sorted(p.name for p in result.adapter_dir.iterdir()))
"""


@pytest.fixture
def proxy() -> Iterator[tuple[int, list[bytes]]]:
    """A listening socket posing as an HTTP(S) proxy: records each connection's first bytes."""
    server = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    seen.append(conn.recv(256))
                except OSError:
                    seen.append(b"")

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], seen
    server.close()


@pytest.mark.timeout(300)
def test_training_and_merging_an_adapter_reach_no_hub_and_log_no_noise(
    proxy: tuple[int, list[bytes]], tmp_path: Path
) -> None:
    port, seen = proxy
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_ENV}
    for name in ("NO_PROXY", "no_proxy"):
        env.pop(name, None)
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "ALL_PROXY"):
        env[name] = f"http://127.0.0.1:{port}"
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONWARNINGS"] = "default"  # every warning printed, as a worker would log it
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    assert "hub lookup refused offline" in child.stdout
    assert "adapter_model.safetensors" in child.stdout
    assert seen == []
    for noise in (
        "Unable to fetch remote file",
        "Could not find a config file",
        "is_gradient_checkpointing",
    ):
        assert noise not in child.stderr


def test_the_inference_service_goes_offline_before_loading_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    from worker.inference.server import create_app

    monkeypatch.setenv("DORADO_HOME", str(tmp_path / "home"))
    for name in ("DORADO_DATABASE_URL", "DORADO_BROKER_URL", "DORADO_STORAGE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name in OFFLINE_ENV:
        monkeypatch.setenv(name, "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    create_app()
    assert {name: os.environ[name] for name in OFFLINE_ENV} == OFFLINE_ENV
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True
