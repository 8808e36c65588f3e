"""``dorado jobs follow`` rides out an API restart: the whole platform is stopped (the worker
checkpoints the job) and started again while the command follows, and it still ends with the
job's success."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import requests

from tests.cli.conftest import user_env
from tests.conftest import EXAMPLES, MODEL_CACHE
from tests.e2e.platform import BIN, ROOT, Platform


def wait_for_step(platform: Platform, job_id: str, step: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = requests.get(
            f"{platform.base_url}/fine_tuning/jobs/{job_id}", headers=platform.headers(), timeout=10
        ).json()
        assert job["status"] not in ("succeeded", "failed", "cancelled"), job
        if (job.get("progress") or {}).get("step", 0) >= step:
            return
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} did not reach step {step}\n{platform.log_tail()}")


def test_follow_survives_an_api_restart(tmp_path: Path):
    lease = {"DORADO_LEASE_SECONDS": "20"}
    platform = Platform(tmp_path / "home", "dor-cli-outage-key-00000000", MODEL_CACHE, lease)
    platform.start()
    home = tmp_path / "user-home"
    home.mkdir()
    env = {
        **user_env(home),
        "DORADO_BASE_URL": platform.base_url,
        "DORADO_API_KEY": platform.api_key,
    }
    dorado = str(BIN / "dorado")
    follower = None
    try:
        upload = subprocess.run(
            [dorado, "files", "upload", str(EXAMPLES / "pirate.jsonl"), "--json"],
            env=env, capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        file_id = json.loads(upload.stdout)["id"]
        create = subprocess.run(
            [dorado, "jobs", "create", "--model", "tiny-random-llama", "--training-file", file_id,
             "--method", "lora", "--epochs", "3", "--json"],
            env=env, capture_output=True, text=True, check=True, cwd=ROOT,
        )  # fmt: skip
        job_id = json.loads(create.stdout)["id"]
        follower = subprocess.Popen(
            [dorado, "jobs", "follow", job_id, "--interval", "0.5"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip

        wait_for_step(platform, job_id, 2)
        platform.stop()
        time.sleep(2)
        assert follower.poll() is None  # still waiting for the API
        platform.start()

        out, err = follower.communicate(timeout=300)
        assert follower.returncode == 0, out + err + platform.log_tail()
        assert "lost the API (" in err and "retrying for up to" in err
        assert "the API answers again" in err
        assert "succeeded: ft:tiny-random-llama" in out
    finally:
        if follower is not None and follower.poll() is None:
            follower.kill()
            follower.wait()
        platform.stop()
