"""Done-when of issue 10: the openai SDK's chat completions against the running platform, for
base models and models fine-tuned in the same module, plus the merged-model download.

One platform per module; the real SmolLM2 is fine-tuned once (``slow``, ~2 min on a CPU) and
its job is submitted when the platform starts, so it trains while the quick tests run.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests
from openai import OpenAI

from tests.conftest import EXAMPLES, MODEL_CACHE
from tests.e2e.flow import client_for, download_adapter, wait_for_job
from tests.e2e.platform import Platform

TINY = "tiny-random-llama"
SMOL = "smollm2-135m-instruct"
HELD_OUT = "What is the capital of France?"  # not in examples/pirate.jsonl
OTHER_KEY = "dor-inference-other-org-key-000"
# A test's time includes waiting for its job, and the worker trains one job at a time.
pytestmark = pytest.mark.timeout(1800)


def ask(question: str = HELD_OUT) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


@pytest.fixture(scope="module")
def client(platform: Platform) -> OpenAI:
    return client_for(platform)


@pytest.fixture(scope="module")
def submitted(platform: Platform, client: OpenAI, request) -> dict[str, str]:
    """Both jobs, submitted at once: the worker trains them one after the other."""
    training = client.files.create(file=open(EXAMPLES / "pirate.jsonl", "rb"), purpose="fine-tune")
    ids = {
        "tiny": client.fine_tuning.jobs.create(
            model=TINY, training_file=training.id, hyperparameters={"n_epochs": 1}, suffix="tiny"
        ).id
    }
    if any(
        item.get_closest_marker("slow")
        for item in request.session.items
        if item.module is request.module
    ):
        ids["pirate"] = client.fine_tuning.jobs.create(
            model=SMOL, training_file=training.id, suffix="pirate"
        ).id
    return ids


@pytest.fixture(scope="module")
def tiny_job(platform: Platform, client: OpenAI, submitted: dict[str, str]):
    # The worker takes one job at a time, in no set order once both are validated.
    job = wait_for_job(client, submitted["tiny"], 900, platform)
    assert job.status == "succeeded", platform.log_tail()
    return job


@pytest.fixture(scope="module")
def pirate_job(platform: Platform, client: OpenAI, submitted: dict[str, str]):
    job = wait_for_job(client, submitted["pirate"], 900, platform)
    assert job.status == "succeeded", platform.log_tail()
    return job


@pytest.fixture(scope="module")
def other_client(platform: Platform) -> OpenAI:
    """A second organization with its own key, created in the platform's database."""
    from core.db.engine import session_scope
    from core.tenancy.auth import add_key, create_organization

    with session_scope(f"sqlite:///{platform.home / 'dorado.db'}") as session:
        add_key(session, create_organization(session, "other-org"), OTHER_KEY)
    return OpenAI(base_url=platform.base_url, api_key=OTHER_KEY, max_retries=0)


def stream_text(client: OpenAI, **kwargs) -> tuple[str, list]:
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def test_base_model_chat_completion(submitted, client: OpenAI) -> None:
    answer = client.chat.completions.create(model=TINY, messages=ask(), max_tokens=6, temperature=0)
    assert answer.object == "chat.completion" and answer.id.startswith("chatcmpl-")
    assert answer.model == TINY
    choice = answer.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.finish_reason == "length"
    usage = answer.usage
    assert usage.completion_tokens == 6 and usage.prompt_tokens > 10
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    text, chunks = stream_text(
        client,
        model=TINY,
        messages=ask(),
        max_completion_tokens=6,
        temperature=0,
        stream_options={"include_usage": True},
    )
    assert text == choice.message.content
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6


def test_sse_wire_format(platform: Platform) -> None:
    resp = requests.post(
        f"{platform.base_url}/chat/completions",
        headers=platform.headers(),
        json={"model": TINY, "messages": ask(), "max_tokens": 4, "stream": True, "seed": 3},
        stream=True,
        timeout=120,
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = [line for line in resp.iter_lines(decode_unicode=True) if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    bodies = [json.loads(line[len("data: ") :]) for line in events[:-1]]
    for body in bodies:
        assert set(body) >= {"id", "object", "created", "model", "choices"}
        assert body["object"] == "chat.completion.chunk" and body["model"] == TINY
        assert body["choices"][0]["index"] == 0 and "delta" in body["choices"][0]
    assert [b["choices"][0]["finish_reason"] for b in bodies[:-1]] == [None] * (len(bodies) - 1)
    assert bodies[-1]["choices"][0]["finish_reason"] == "length"
    assert bodies[-1]["choices"][0]["delta"] == {}


def test_invalid_requests_are_400_or_404(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=TINY, messages=ask(), n=2)
    assert err.value.code == "invalid_value" and "n=1" in err.value.message
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=TINY, messages=[], max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=TINY, messages=ask(), temperature=3)
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=ask())
    assert err.value.code == "model_not_found"


def test_fine_tuned_model_chat(client: OpenAI, tiny_job) -> None:
    name = tiny_job.fine_tuned_model
    assert name.startswith(f"ft:{TINY}:")
    answer = client.chat.completions.create(model=name, messages=ask(), max_tokens=8, temperature=0)
    assert answer.model == name and answer.usage.completion_tokens <= 8
    text, chunks = stream_text(client, model=name, messages=ask(), max_tokens=8, temperature=0)
    assert text == answer.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == answer.choices[0].finish_reason


def test_other_organization_cannot_use_the_fine_tuned_model(
    platform: Platform, tiny_job, other_client: OpenAI
) -> None:
    name = tiny_job.fine_tuned_model
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as err:
            other_client.chat.completions.create(
                model=name, messages=ask(), max_tokens=2, stream=stream
            )
        assert err.value.code == "model_not_found"
    resp = requests.get(
        f"{platform.base_url}/fine_tuning/jobs/{tiny_job.id}/adapter/merged",
        headers={"Authorization": f"Bearer {OTHER_KEY}"},
        timeout=60,
    )
    assert resp.status_code == 404
    # Base models stay open to everyone.
    answer = other_client.chat.completions.create(model=TINY, messages=ask(), max_tokens=2)
    assert answer.usage.completion_tokens <= 2


def greedy_answer(model, tokenizer, question: str = HELD_OUT, max_new_tokens: int = 24) -> str:
    import torch

    enc = tokenizer.apply_chat_template(
        ask(question), add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)


@pytest.mark.slow
def test_tuned_smollm2_answers_like_a_pirate(client: OpenAI, pirate_job) -> None:
    base = (
        client.chat.completions.create(model=SMOL, messages=ask(), max_tokens=24, temperature=0)
        .choices[0]
        .message.content
    )
    tuned = client.chat.completions.create(
        model=pirate_job.fine_tuned_model, messages=ask(), max_tokens=24, temperature=0
    )
    answer = tuned.choices[0].message.content
    assert "Paris" in base and not base.startswith("Arr"), base
    assert answer.startswith("Arr"), answer
    streamed, _ = stream_text(
        client, model=pirate_job.fine_tuned_model, messages=ask(), max_tokens=24, temperature=0
    )
    assert streamed == answer


@pytest.fixture(scope="module")
def merged_dir(platform: Platform, pirate_job, tmp_path_factory) -> Iterator[Path]:
    url = f"{platform.base_url}/fine_tuning/jobs/{pirate_job.id}/adapter/merged"
    dest = tmp_path_factory.mktemp("merged")
    archive = dest.parent / f"{dest.name}.tar.gz"
    with requests.get(url, headers=platform.headers(), timeout=600, stream=True) as resp:
        assert resp.status_code == 200, resp.text
        assert resp.headers["Content-Type"] == "application/gzip"
        with open(archive, "wb") as out:
            for chunk in resp.iter_content(1024 * 1024):
                out.write(chunk)
    with tarfile.open(archive, mode="r:gz") as tar:
        names = set(tar.getnames())
        tar.extractall(dest, filter="data")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(name.startswith("adapter_") for name in names)
    yield dest
    # ~0.5 GB each (float32 SmolLM2): not left behind in pytest's kept temp folders.
    shutil.rmtree(dest)
    archive.unlink()
    (platform.home / "objects" / "jobs" / pirate_job.id / "merged.tar.gz").unlink()


@pytest.mark.slow
def test_merged_download_matches_base_plus_adapter(
    platform: Platform, client: OpenAI, pirate_job, merged_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    merged_answer = greedy_answer(merged, AutoTokenizer.from_pretrained(merged_dir))
    del merged

    adapter_dir = download_adapter(platform, pirate_job.id, tmp_path / "adapter")
    base_dir = MODEL_CACHE / SMOL
    tuned = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir
    ).eval()
    peft_answer = greedy_answer(tuned, AutoTokenizer.from_pretrained(base_dir))
    assert merged_answer == peft_answer and merged_answer.startswith("Arr"), (
        merged_answer,
        peft_answer,
    )
    served = client.chat.completions.create(
        model=pirate_job.fine_tuned_model, messages=ask(), max_tokens=24, temperature=0
    )
    assert served.choices[0].message.content == peft_answer
    # Built once: a second download is served from the object store.
    url = f"{platform.base_url}/fine_tuning/jobs/{pirate_job.id}/adapter/merged"
    archive = merged_dir.parent / f"{merged_dir.name}.tar.gz"
    with requests.get(url, headers=platform.headers(), timeout=60, stream=True) as again:
        assert again.status_code == 200
        assert int(again.headers["Content-Length"]) == archive.stat().st_size
    assert platform.log_path.read_text(errors="replace").count("merging adapter") == 1
