"""Training files cannot cost unbounded memory or time: the caps on one line's bytes and one
example's messages are 400s naming the line, line reading stays flat in memory, malformed tool
calls are rejected at upload, and tokenizing a long conversation renders it a few times, not
twice per assistant turn."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from core.storage.datasets import DatasetLimits
from core.storage.files import validate_upload
from tests.conftest import MODEL_CACHE
from tests.security.conftest import chat_lines, upload
from tests.security.helpers import make_app


def conversation(n_messages: int) -> dict:
    return {
        "messages": [
            {"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}"}
            for i in range(n_messages)
        ]
    }


def jsonl(*rows: dict) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_a_line_over_the_cap_is_a_400_naming_it(monkeypatch, tmp_path):
    api = make_app(monkeypatch, tmp_path / "home", DORADO_MAX_LINE_BYTES="2048")
    long_row = {"messages": [{"role": "user", "content": "x" * 4000}, *conversation(2)["messages"]]}
    body = chat_lines(2, "a") + jsonl(long_row) + chat_lines(10, "b")
    resp = upload(api.client, api.headers, body)
    assert resp.status_code == 400, resp.get_json()
    error = resp.get_json()["error"]
    assert "line 3" in error["message"] and "DORADO_MAX_LINE_BYTES" in error["message"]
    assert [p["line"] for p in error["problems"]] == [3]
    assert "at most 2048 are allowed" in error["problems"][0]["message"]
    # Lines under the cap are fine.
    assert upload(api.client, api.headers, chat_lines(12, "ok")).status_code == 200


def test_an_example_with_too_many_messages_is_a_400_naming_it(monkeypatch, tmp_path):
    api = make_app(monkeypatch, tmp_path / "home", DORADO_MAX_EXAMPLE_MESSAGES="100")
    body = chat_lines(11, "a") + jsonl(conversation(101))
    resp = upload(api.client, api.headers, body)
    assert resp.status_code == 400
    message = resp.get_json()["error"]["message"]
    assert "line 12: example has 101 messages; at most 100" in message
    assert "DORADO_MAX_EXAMPLE_MESSAGES" in message
    fine = chat_lines(11, "a") + jsonl(conversation(100))
    assert upload(api.client, api.headers, fine).status_code == 200


def test_line_reading_stays_flat_in_memory_with_a_huge_line(tmp_path: Path):
    """A 16 MiB single line against a 64 KiB cap: reading it must not allocate its size (an
    unbounded readline() held it whole, then its decoded text and parsed objects)."""
    path = tmp_path / "huge.jsonl"
    head, tail = b'{"messages": [{"role": "user", "content": "', b'"}]}'
    with path.open("wb") as handle:
        handle.write(chat_lines(10, "a"))
        handle.write(head + b"y" * (16 * 1024 * 1024) + tail + b"\n")
        handle.write(chat_lines(1, "b"))
    limits = DatasetLimits(max_line_bytes=64 * 1024)
    with path.open("rb") as handle:
        tracemalloc.start()
        try:
            report = validate_upload(handle, limits)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert [p.line for p in report.problems] == [11]
    size = len(head) + 16 * 1024 * 1024 + len(tail)
    assert f"line is {size} bytes long" in report.problems[0].message
    assert report.example_count == 11
    assert peak < 1024 * 1024, f"peak {peak} bytes while reading a 16 MiB line"


CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize(
    "assistant, expected",
    [
        ({"tool_calls": "f()"}, "'tool_calls' must be a non-empty list"),
        ({"tool_calls": []}, "'tool_calls' must be a non-empty list"),
        ({"tool_calls": ["f"]}, "tool_calls[0] is not an object"),
        ({"tool_calls": [{**CALL, "id": None}]}, "tool_calls[0] needs a non-empty string 'id'"),
        ({"tool_calls": [{**CALL, "type": "code"}]}, "only 'function' is supported"),
        ({"tool_calls": [{**CALL, "function": "f"}]}, "must be an object with 'name'"),
        (
            {"tool_calls": [{**CALL, "function": {"name": "", "arguments": "{}"}}]},
            "needs a non-empty string 'name'",
        ),
        (
            {"tool_calls": [{**CALL, "function": {"name": "f", "arguments": {"a": 1}}}]},
            "arguments must be a string holding JSON",
        ),
        (
            {"tool_calls": [{**CALL, "function": {"name": "f", "arguments": "{oops"}}]},
            "arguments is not valid JSON",
        ),
        ({"function_call": {"name": "f"}}, "arguments must be a string holding JSON"),
    ],
)
def test_malformed_tool_calls_are_rejected_at_upload(monkeypatch, tmp_path, assistant, expected):
    api = make_app(monkeypatch, tmp_path / "home")
    bad = {
        "messages": [
            {"role": "user", "content": "call it"},
            {"role": "assistant", "content": None, **assistant},
            {"role": "assistant", "content": "done"},
        ]
    }
    resp = upload(api.client, api.headers, chat_lines(11, "a") + jsonl(bad))
    assert resp.status_code == 400
    problem = resp.get_json()["error"]["problems"][0]
    assert problem["line"] == 12 and expected in problem["message"], problem


def test_well_formed_tool_calls_are_accepted(monkeypatch, tmp_path):
    api = make_app(monkeypatch, tmp_path / "home")
    good = {
        "messages": [
            {"role": "user", "content": "call it"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
            {"role": "assistant", "content": "It is 42."},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    }
    assert upload(api.client, api.headers, chat_lines(11, "a") + jsonl(good)).status_code == 200


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from worker.model_builders import build_builtin

    cached = MODEL_CACHE / "tiny-random-llama"
    if not (cached / "tokenizer.json").exists():
        cached = tmp_path_factory.mktemp("models") / "tiny-random-llama"
        build_builtin("tiny-random-llama", cached)
    return AutoTokenizer.from_pretrained(cached)


def test_a_long_conversation_is_rendered_a_few_times_not_twice_per_turn(tiny_tokenizer):
    """2,000 messages (1,000 assistant turns) took 21 s when every turn rendered the whole
    history twice; now the template runs a fixed number of times, whatever the length."""
    from worker.training.data import parse_line, tokenize_conversation

    renders = []
    render = tiny_tokenizer.apply_chat_template

    def counting(messages, *args, **kwargs):
        renders.append(len(messages))
        return render(messages, *args, **kwargs)

    tiny_tokenizer.apply_chat_template = counting
    try:
        example = tokenize_conversation(tiny_tokenizer, parse_line(conversation(2000)))
    finally:
        del tiny_tokenizer.apply_chat_template
    assert example.n_loss_tokens > 1000 * 3
    assert len(renders) <= 6, f"{len(renders)} renderings"
    assert sum(renders) <= 6 * 2000
