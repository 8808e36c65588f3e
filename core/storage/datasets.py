"""Line-level validation of fine-tuning JSONL files (shared by the API and the worker).

Validation streams the file: memory stays flat whatever its size. Every problem names its
line; the report keeps the first ``MAX_REPORTED_PROBLEMS`` and counts the rest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MIN_EXAMPLES = 10
MAX_REPORTED_PROBLEMS = 20

CHAT_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
MESSAGE_KEYS = {
    "role",
    "content",
    "name",
    "weight",
    "tool_calls",
    "function_call",
    "tool_call_id",
    "refusal",
}
CHAT_EXAMPLE_KEYS = {"messages", "tools", "parallel_tool_calls", "functions"}
COMPLETION_EXAMPLE_KEYS = {"prompt", "completion"}


@dataclass
class Problem:
    line: int
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "message": self.message}


@dataclass
class ValidationReport:
    """What a file holds and what is wrong with it."""

    example_count: int = 0
    format: str | None = None
    problem_count: int = 0
    problems: list[Problem] = field(default_factory=list)
    message_count: int = 0
    assistant_message_count: int = 0
    total_chars: int = 0
    max_example_chars: int = 0

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def add(self, line: int, message: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_REPORTED_PROBLEMS:
            self.problems.append(Problem(line, message))

    def stats(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "example_count": self.example_count,
            "message_count": self.message_count,
            "assistant_message_count": self.assistant_message_count,
            "total_chars": self.total_chars,
            "max_example_chars": self.max_example_chars,
        }

    def summary(self) -> str:
        """One human sentence naming the problems, for an error message."""
        if self.ok:
            return f"{self.example_count} valid examples"
        shown = "; ".join(f"line {p.line}: {p.message}" for p in self.problems)
        more = self.problem_count - len(self.problems)
        tail = f" (and {more} more)" if more > 0 else ""
        return f"Invalid training file: {self.problem_count} problem(s). {shown}{tail}"


def _content_text(content: Any) -> str | None:
    """Text of a message's content: a string, or OpenAI's list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        for part in content
    ):
        return "".join(part["text"] for part in content)
    return None


def _check_message(msg: Any, index: int) -> tuple[str | None, str | None]:
    """Returns (error, role) for one message."""
    where = f"message {index + 1}"
    if not isinstance(msg, dict):
        return f"{where} is not an object", None
    unknown = sorted(set(msg) - MESSAGE_KEYS)
    if unknown:
        return f"{where} has unrecognised key(s): {', '.join(unknown)}", None
    role = msg.get("role")
    if role not in CHAT_ROLES:
        return f"{where} has an unrecognised role {role!r}", None
    has_call = bool(msg.get("tool_calls") or msg.get("function_call"))
    if "content" not in msg and not has_call:
        return f"{where} ({role}) is missing 'content'", role
    content = msg.get("content")
    if content is None and has_call:
        return None, role
    text = _content_text(content)
    if text is None:
        return f"{where} ({role}) has content that is not a string", role
    if not text.strip() and not has_call:
        return f"{where} ({role}) has empty content", role
    if "weight" in msg:
        if role != "assistant":
            return f"{where}: 'weight' is only allowed on assistant messages", role
        if msg["weight"] not in (0, 1) or isinstance(msg["weight"], bool):
            return f"{where}: 'weight' must be 0 or 1", role
    return None, role


def check_example(obj: Any) -> tuple[str | None, str | None, dict[str, int]]:
    """Validate one parsed line. Returns (error, format, counts)."""
    if not isinstance(obj, dict):
        return "line is not a JSON object", None, {}
    if "messages" in obj:
        unknown = sorted(set(obj) - CHAT_EXAMPLE_KEYS)
        if unknown:
            return f"example has unrecognised key(s): {', '.join(unknown)}", "chat", {}
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            return "'messages' must be a non-empty list", "chat", {}
        assistants = 0
        chars = 0
        for i, msg in enumerate(messages):
            error, role = _check_message(msg, i)
            if error:
                return error, "chat", {}
            if role == "assistant":
                assistants += 1
            chars += len(_content_text(msg.get("content")) or "")
        if assistants == 0:
            return "example has no assistant message", "chat", {}
        if all(m.get("weight") == 0 for m in messages if m.get("role") == "assistant"):
            return "every assistant message has weight 0: nothing to train on", "chat", {}
        return None, "chat", {"messages": len(messages), "assistant": assistants, "chars": chars}
    if "prompt" in obj or "completion" in obj:
        unknown = sorted(set(obj) - COMPLETION_EXAMPLE_KEYS)
        if unknown:
            return f"example has unrecognised key(s): {', '.join(unknown)}", "completion", {}
        for key in ("prompt", "completion"):
            if not isinstance(obj.get(key), str):
                return f"'{key}' must be a string", "completion", {}
        if not obj["completion"].strip():
            return "'completion' is empty", "completion", {}
        chars = len(obj["prompt"]) + len(obj["completion"])
        return None, "completion", {"messages": 2, "assistant": 1, "chars": chars}
    if "input" in obj and "preferred_output" in obj:
        return "preference (DPO) examples are not supported yet", "preference", {}
    return "example has no 'messages' (or 'prompt'/'completion')", None, {}


def validate_lines(lines: Iterable[bytes]) -> ValidationReport:
    """Validate a JSONL stream of raw lines (blank lines are ignored)."""
    report = ValidationReport()
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            report.add(number, "line is not valid UTF-8")
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            report.add(number, f"invalid JSON ({exc.msg} at column {exc.colno})")
            continue
        error, fmt, counts = check_example(obj)
        if fmt and report.format is None:
            report.format = fmt
        elif fmt and fmt != report.format and not error:
            error = f"example is in {fmt} format but the file started in {report.format} format"
        if error:
            report.add(number, error)
            continue
        report.example_count += 1
        report.message_count += counts["messages"]
        report.assistant_message_count += counts["assistant"]
        report.total_chars += counts["chars"]
        report.max_example_chars = max(report.max_example_chars, counts["chars"])
    if report.problem_count == 0 and report.example_count < MIN_EXAMPLES:
        report.add(
            0,
            f"the file has {report.example_count} example(s); at least {MIN_EXAMPLES} are required",
        )
    return report
