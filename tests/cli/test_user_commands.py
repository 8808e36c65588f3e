"""``dorado files / jobs / adapters / chat`` against a real platform (API, worker, validator,
scheduler and inference service as processes), driven as subprocesses like a user's terminal."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cli.client import ClientConfig, DoradoClient, normalize_base_url
from tests.cli.conftest import Dorado
from tests.conftest import EXAMPLES, MODEL_CACHE
from tests.e2e.platform import Platform

PIRATE = EXAMPLES / "pirate.jsonl"
EXIT_API_ERROR, EXIT_SETUP, EXIT_JOB_FAILED, EXIT_JOB_CANCELLED = 1, 3, 5, 6


def upload(user: Dorado, path: Path = PIRATE) -> str:
    result = user("files", "upload", str(path), "--json")
    assert result.code == 0, result.stderr
    return result.json()["id"]


def test_upload_names_each_bad_line(user: Dorado, tmp_path: Path):
    good = PIRATE.read_text().splitlines()[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([good, "{not json", good, '{"messages": []}']) + "\n")

    result = user("files", "upload", str(bad))

    assert result.code == EXIT_API_ERROR
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: Invalid training file: 2 problem(s)")
    assert "[invalid_file]" in lines[0]
    assert lines[1].strip().startswith("line 2:") and lines[2].strip().startswith("line 4:")


def test_upload_shows_the_validation_report(user: Dorado):
    result = user("files", "upload", str(PIRATE))
    assert result.code == 0, result.stderr
    assert "Uploaded and validated" in result.stdout
    assert "examples" in result.stdout and "52" in result.stdout
    file_id = re.search(r"file-\w+", result.stdout).group(0)
    assert user("files", "get", file_id, "--json").json()["example_count"] == 52
    assert file_id in user("files", "list").stdout


def test_create_follow_download_and_load_with_peft(user: Dorado, tmp_path: Path):
    file_id = upload(user)
    created = user(
        "jobs", "create", "--model", "tiny-random-llama", "--training-file", file_id,
        "--method", "lora", "-r", "8", "--alpha", "16", "--epochs", "1", "--suffix", "cli",
        "--follow", "--interval", "0.5",
    )  # fmt: skip
    assert created.code == 0, created.stdout + created.stderr
    out = created.stdout
    assert "Step 1/" in out and "training loss=" in out  # metrics events as they arrived
    assert "The job has successfully completed" in out
    assert "succeeded: ft:tiny-random-llama:default:cli:" in out
    job_id = re.search(r"ftjob-\w+", out).group(0)

    job = user("jobs", "get", job_id, "--json").json()
    assert job["status"] == "succeeded" and job["adapter"]["type"] == "lora"
    listed = user("jobs", "list")
    assert listed.code == 0 and job_id in listed.stdout and "succeeded" in listed.stdout

    adapter_dir = tmp_path / "adapter"
    got = user("adapters", "download", job_id, "-o", str(adapter_dir), "--json")
    assert got.code == 0, got.stderr
    assert got.json()["files"] == ["adapter_config.json", "adapter_model.safetensors"]

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(MODEL_CACHE / "tiny-random-llama")
    tuned = PeftModel.from_pretrained(base, adapter_dir)
    assert tuned.peft_config["default"].r == 8
    assert not tuned.peft_config["default"].use_dora

    again = user("adapters", "download", job_id, "-o", str(adapter_dir))
    assert again.code == 2 and "is not empty" in again.stderr

    merged_dir = tmp_path / "merged"
    merged = user("adapters", "download", job_id, "--merged", "-o", str(merged_dir))
    assert merged.code == 0, merged.stderr
    assert AutoModelForCausalLM.from_pretrained(merged_dir).config.model_type == "llama"

    answer = user("chat", job["fine_tuned_model"], "-m", "Ahoy", "--max-tokens", "3")
    assert answer.code == 0 and answer.stdout.strip(), answer.stderr

    # Following a finished job replays its events and ends at once; --json for scripts.
    replay = user("jobs", "follow", job_id, "--json")
    assert replay.code == 0
    lines = [json.loads(line) for line in replay.stdout.splitlines()]
    assert {e["object"] for e in lines[:-1]} == {"fine_tuning.job.event"}
    assert lines[-1]["object"] == "fine_tuning.job" and lines[-1]["id"] == job_id
    created_at = [e["created_at"] for e in lines[:-1]]
    assert created_at == sorted(created_at)  # oldest first

    # Paging back through the API (newest first, after= towards older) misses nothing.
    assert_events_paged(user, job_id, [e["id"] for e in lines[:-1]])


def assert_events_paged(user: Dorado, job_id: str, expected: list[str]) -> None:
    url, key = user.env["DORADO_BASE_URL"], user.env["DORADO_API_KEY"]
    config = ClientConfig(normalize_base_url(url), key)
    with DoradoClient(config) as client:
        assert [e["id"] for e in client.new_events(job_id, None, page_size=2)] == expected
        middle = len(expected) // 2
        rest = client.new_events(job_id, expected[middle], page_size=3)
        assert [e["id"] for e in rest] == expected[middle + 1 :]
        assert client.new_events(job_id, expected[-1]) == []


def test_failed_job_exits_non_zero_with_its_error(user: Dorado):
    file_id = upload(user)
    result = user(
        "jobs", "create", "--model", "tiny-random-llama", "--training-file", file_id,
        "--target-modules", "nope", "--follow", "--interval", "0.5",
    )  # fmt: skip
    assert result.code == EXIT_JOB_FAILED, result.stdout + result.stderr
    assert "failed:" in result.stdout and "nope" in result.stdout


def test_cancelled_job_exits_with_its_own_code(user: Dorado):
    file_id = upload(user)
    created = user(
        "jobs", "create", "--model", "tiny-random-llama", "--training-file", file_id,
        "--epochs", "50", "--batch-size", "1", "--json",
    )  # fmt: skip
    job_id = created.json()["id"]
    cancelled = user("jobs", "cancel", job_id)
    assert cancelled.code == 0 and job_id in cancelled.stdout
    followed = user("jobs", "follow", job_id, "--interval", "0.5")
    assert followed.code == EXIT_JOB_CANCELLED, followed.stdout + followed.stderr
    assert "cancelled" in followed.stdout


def test_api_errors_are_one_line(user: Dorado):
    missing = user("jobs", "get", "ftjob-doesnotexist")
    assert missing.code == EXIT_API_ERROR
    assert missing.stderr.startswith("error: ") and missing.stderr.count("\n") == 1
    assert "Traceback" not in missing.stderr

    bad = user("jobs", "create", "--model", "tiny-random-llama", "--training-file", "file-x")
    assert bad.code == EXIT_API_ERROR and "file-x" in bad.stderr

    wrong_key = user("jobs", "list", DORADO_API_KEY="dor-wrong-key-00000000000000")
    assert wrong_key.code == EXIT_API_ERROR and wrong_key.stderr.startswith("error: ")


def test_key_and_url_from_the_config_file(dorado: Dorado, platform: Platform):
    config = dorado.home / ".config" / "dorado" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'base_url = "{platform.base_url}"\napi_key = "{platform.api_key}"\n')
    result = dorado("jobs", "list", "--json")
    assert result.code == 0, result.stderr
    assert isinstance(result.json(), list)


def test_chat_streams_an_answer(user: Dorado):
    result = user("chat", "tiny-random-llama", "-m", "Hello", "--max-tokens", "4", "--seed", "1")
    assert result.code == 0, result.stderr
    assert result.stdout.strip()  # a random model says something random
    completion = user(
        "chat", "tiny-random-llama", "-m", "Hello", "--max-tokens", "4", "--json"
    ).json()
    assert completion["object"] == "chat.completion"


@pytest.mark.parametrize("args", [["jobs", "list"], ["files", "upload", str(PIRATE)]])
def test_missing_key_names_what_to_set(dorado: Dorado, args: list[str]):
    result = dorado(*args)
    assert result.code == EXIT_SETUP
    assert "DORADO_API_KEY" in result.stderr and "config.toml" in result.stderr


def test_unreachable_server_names_what_to_set(dorado: Dorado):
    result = dorado("jobs", "list", DORADO_API_KEY="k", DORADO_BASE_URL="http://127.0.0.1:9/v1")
    assert result.code == EXIT_SETUP
    assert "cannot reach the Dorado API at http://127.0.0.1:9" in result.stderr
    assert "DORADO_BASE_URL" in result.stderr
