"""The README's quickstart, driven through the official openai SDK."""

from __future__ import annotations

import io
import json
import tarfile
import time
from pathlib import Path

import requests
from openai import OpenAI
from safetensors import safe_open

from tests.e2e.platform import Platform

FINAL = {"succeeded", "failed", "cancelled"}


def client_for(platform: Platform) -> OpenAI:
    return OpenAI(base_url=platform.base_url, api_key=platform.api_key, max_retries=0)


def wait_for_job(client: OpenAI, job_id: str, timeout: float, platform: Platform):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in FINAL:
            return job
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} still {job.status}\n{platform.log_tail()}")


def download_adapter(platform: Platform, job_id: str, dest: Path) -> Path:
    resp = requests.get(
        f"{platform.base_url}/fine_tuning/jobs/{job_id}/adapter",
        headers=platform.headers(),
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(resp.content), mode="r:gz") as tar:
        names = sorted(tar.getnames())
        tar.extractall(dest, filter="data")
    assert names == ["adapter_config.json", "adapter_model.safetensors"]
    return dest


def adapter_summary(adapter_dir: Path) -> tuple[dict, list[str]]:
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    return config, keys


def metrics_events(client: OpenAI, job_id: str) -> list:
    events = list(client.fine_tuning.jobs.list_events(job_id, limit=100))
    return [e for e in reversed(events) if e.type == "metrics"]
