"""Preference (DPO) lines: OpenAI's format validated line by line, and files matched to methods."""

from __future__ import annotations

import io
import json

import pytest

from core.jobs.hyperparams import DEFAULT_DPO_BETA, DpoHyperparameters, resolve_dpo
from core.storage.datasets import (
    DatasetLimits,
    check_format_for_method,
    read_lines,
    validate_lines,
)


def pair(i: int = 0, **overrides) -> dict:
    line = {
        "input": {"messages": [{"role": "user", "content": f"Question {i}?"}]},
        "preferred_output": [{"role": "assistant", "content": f"Arr, answer {i}!"}],
        "non_preferred_output": [{"role": "assistant", "content": f"Answer {i}."}],
    }
    line.update(overrides)
    return line


def lines(objs: list) -> list[bytes]:
    return [(o if isinstance(o, str) else json.dumps(o)).encode() for o in objs]


def test_a_preference_file_is_valid_and_counted():
    report = validate_lines(lines([pair(i) for i in range(12)]))
    assert report.ok, report.summary()
    assert report.format == "preference"
    assert report.example_count == 12
    assert report.message_count == 36 and report.assistant_message_count == 24


def test_tools_in_the_input_are_allowed():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    objs = [pair(99, input={"messages": [{"role": "user", "content": "x"}], "tools": tools})]
    report = validate_lines(lines(objs + [pair(i) for i in range(10)]))
    assert report.ok, report.summary()


@pytest.mark.parametrize(
    "bad, expected",
    [
        ({"extra": 1}, "unrecognised key(s): extra"),
        ({"input": [{"role": "user", "content": "x"}]}, "'input' must be an object"),
        ({"input": {"messages": []}}, "'input.messages' must be a non-empty list"),
        ({"input": {"messages": [{"role": "user"}]}}, "missing 'content'"),
        ({"input": {"messages": [{"role": "user", "content": "x"}], "n": 1}}, "'input' has"),
        ({"preferred_output": []}, "'preferred_output' must be a non-empty list"),
        (
            {"preferred_output": [{"role": "user", "content": "x"}]},
            "'preferred_output': message 1 has role 'user'",
        ),
        (
            {"non_preferred_output": [{"role": "assistant", "content": "y", "weight": 0}]},
            "'non_preferred_output': message 1 has 'weight'",
        ),
        (
            {"non_preferred_output": [{"role": "assistant", "content": "Arr, answer 0!"}]},
            "identical",
        ),
    ],
)
def test_bad_preference_lines_name_the_line_and_the_problem(bad: dict, expected: str):
    objs = [pair(i) for i in range(12)]
    objs[4] = {**pair(0), **bad}
    report = validate_lines(lines(objs))
    assert not report.ok
    assert [p.line for p in report.problems] == [5]
    assert expected in report.problems[0].message, report.problems[0].message


def test_preference_lines_keep_the_upload_caps():
    """The caps of chat lines hold for preference lines: bytes per line (read bounded) and
    messages per example (the input and both outputs together), and tools in OpenAI's shape."""
    limits = DatasetLimits(max_line_bytes=400, max_example_messages=4)
    objs = [pair(i) for i in range(12)]
    objs[1] = pair(1, preferred_output=[{"role": "assistant", "content": "Arr! " * 200}])
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    objs[2] = pair(2, input={"messages": [*turns, {"role": "user", "content": "q2"}]})
    objs[3] = pair(3, input={"messages": turns[:1], "tools": [{"type": "retrieval"}]})
    raw = b"\n".join(lines(objs)) + b"\n"
    report = validate_lines(read_lines(io.BytesIO(raw), limits.max_line_bytes), limits)
    assert [p.line for p in report.problems] == [2, 3, 4], report.summary()
    assert "at most 400 are allowed (DORADO_MAX_LINE_BYTES)" in report.problems[0].message
    assert "5 messages (input and both outputs); at most 4" in report.problems[1].message
    assert "'input': tools[0] must be an object of type 'function'" in report.problems[2].message


def test_a_missing_output_is_named():
    objs = [pair(i) for i in range(12)]
    del objs[2]["non_preferred_output"]
    report = validate_lines(lines(objs))
    assert report.problems[0].line == 3
    assert "missing 'non_preferred_output'" in report.problems[0].message


def test_chat_and_preference_lines_do_not_mix():
    chat = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    report = validate_lines(lines([pair(i) for i in range(11)] + [chat]))
    assert [p.line for p in report.problems] == [12]
    assert "chat format but the file started in preference format" in report.problems[0].message


@pytest.mark.parametrize(
    "fmt, method, problem",
    [
        ("chat", "supervised", None),
        ("completion", "supervised", None),
        ("preference", "dpo", None),
        ("chat", "dpo", "line 1: the file is in chat format, but a dpo job needs preference"),
        ("preference", "supervised", "line 1: the file holds preference (DPO) examples"),
    ],
)
def test_file_formats_match_methods(fmt: str, method: str, problem: str | None):
    found = check_format_for_method(fmt, method)
    assert found == problem if problem is None else problem in found


def test_dpo_beta_auto_resolves_and_is_bounded():
    resolved = resolve_dpo(DpoHyperparameters(), 20)
    assert resolved == {
        "n_epochs": 5,
        "batch_size": 2,
        "learning_rate_multiplier": 1.0,
        "beta": DEFAULT_DPO_BETA,
    }
    assert resolve_dpo(DpoHyperparameters(beta=0.5, n_epochs=2), 20)["beta"] == 0.5
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="beta"):
            DpoHyperparameters(beta=bad)
