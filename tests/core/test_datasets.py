import json

import pytest

from core.storage.datasets import MIN_EXAMPLES, validate_lines


def chat(user: str = "Hi", assistant: str = "Hello!", **extra) -> dict:
    return {
        "messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": assistant},
        ],
        **extra,
    }


def lines(*objs) -> list[bytes]:
    return [(o if isinstance(o, str) else json.dumps(o)).encode() + b"\n" for o in objs]


def test_valid_chat_file_counts_examples():
    report = validate_lines(lines(*[chat(f"q{i}", f"a{i}") for i in range(12)]))
    assert report.ok
    assert report.example_count == 12
    assert report.format == "chat"
    assert report.assistant_message_count == 12


def test_problems_name_their_line():
    objs = [chat() for _ in range(12)]
    objs[2] = "{not json"
    objs[5] = {"messages": [{"role": "user", "content": "only a question"}]}
    objs[7] = {
        "messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]
    }
    objs[9] = [1, 2]
    report = validate_lines(lines(*objs))
    assert not report.ok
    by_line = {p.line: p.message for p in report.problems}
    assert set(by_line) == {3, 6, 8, 10}
    assert "invalid JSON" in by_line[3]
    assert "no assistant message" in by_line[6]
    assert "unrecognised role 'wizard'" in by_line[8]
    assert "not a JSON object" in by_line[10]
    assert "line 3" in report.summary() and "line 10" in report.summary()


def test_too_few_examples():
    report = validate_lines(lines(*[chat() for _ in range(MIN_EXAMPLES - 1)]))
    assert not report.ok
    assert f"at least {MIN_EXAMPLES}" in report.problems[0].message


@pytest.mark.parametrize(
    "bad, expected",
    [
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]},
            "empty content",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "q", "weight": 1},
                    {"role": "assistant", "content": "a"},
                ]
            },
            "only allowed on assistant",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a", "weight": 2},
                ]
            },
            "must be 0 or 1",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a", "colour": "red"},
                ]
            },
            "unrecognised key",
        ),
        ({"messages": [], "x": 1}, "unrecognised key"),
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a", "weight": 0},
                ]
            },
            "weight 0",
        ),
        ({"prompt": "p", "completion": 3}, "'completion' must be a string"),
        ({"text": "hello"}, "no 'messages'"),
    ],
)
def test_line_level_rules(bad, expected):
    objs = [chat() for _ in range(11)] + [bad]
    report = validate_lines(lines(*objs))
    assert [p.line for p in report.problems] == [12]
    assert expected in report.problems[0].message


def test_legacy_prompt_completion_and_mixed_formats():
    legacy = [{"prompt": f"p{i}", "completion": f" c{i}"} for i in range(10)]
    assert validate_lines(lines(*legacy)).ok
    report = validate_lines(lines(*legacy, chat()))
    assert [p.line for p in report.problems] == [11]
    assert "format" in report.problems[0].message


def test_report_keeps_first_twenty_problems_and_counts_all():
    report = validate_lines(lines(*(["{bad"] * 30)))
    assert report.problem_count == 30
    assert len(report.problems) == 20
    assert "(and 10 more)" in report.summary()


def test_blank_lines_ignored_and_invalid_utf8_reported():
    data = lines(*[chat() for _ in range(10)]) + [b"\n", b"\xff\xfe\n"]
    report = validate_lines(data)
    assert [p.line for p in report.problems] == [12]
    assert "UTF-8" in report.problems[0].message
