"""Line-level validation of fine-tuning JSONL files (shared by the API and the worker).

Validation streams the file: memory stays flat whatever its size, because no line longer than
``DORADO_MAX_LINE_BYTES`` is ever read whole (:func:`read_lines`), and the cost of one example
is bounded by ``DORADO_MAX_EXAMPLE_MESSAGES``. Every problem names its line; the report keeps
the first ``MAX_REPORTED_PROBLEMS`` and counts the rest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from core.settings import DEFAULT_MAX_EXAMPLE_MESSAGES, DEFAULT_MAX_LINE_BYTES

if TYPE_CHECKING:
    from core.settings import Settings

MIN_EXAMPLES = 10
MAX_REPORTED_PROBLEMS = 20
_SKIP_CHUNK_BYTES = 64 * 1024

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
PREFERENCE_EXAMPLE_KEYS = {"input", "preferred_output", "non_preferred_output"}
PREFERENCE_INPUT_KEYS = {"messages", "tools", "parallel_tool_calls", "functions"}
PREFERENCE_OUTPUTS = ("preferred_output", "non_preferred_output")
FILE_FORMATS_BY_METHOD = {"supervised": ("chat", "completion"), "dpo": ("preference",)}
"""Which file formats (``ValidationReport.format``) each fine-tuning method trains on."""


@dataclass(frozen=True)
class DatasetLimits:
    """What one line of a training file may hold (see ``core.settings``)."""

    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_example_messages: int = DEFAULT_MAX_EXAMPLE_MESSAGES

    @classmethod
    def from_settings(cls, settings: Settings) -> DatasetLimits:
        return cls(settings.max_line_bytes, settings.max_example_messages)


@dataclass(frozen=True)
class OverlongLine:
    """A line longer than the limit, skipped unread; ``size`` in bytes, newline excluded."""

    size: int


def read_lines(stream: BinaryIO, max_line_bytes: int) -> Iterator[bytes | OverlongLine]:
    """The lines of ``stream``; a line over ``max_line_bytes`` is skipped in small chunks and
    reported as an :class:`OverlongLine`, so memory stays bounded by the limit."""
    while True:
        line = stream.readline(max_line_bytes + 1)
        if not line:
            return
        if line.endswith(b"\n") or len(line) <= max_line_bytes:
            yield line
            continue
        size = len(line)
        while True:
            part = stream.readline(_SKIP_CHUNK_BYTES)
            size += len(part)
            if not part:
                break
            if part.endswith(b"\n"):
                size -= 1
                break
        yield OverlongLine(size)


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
    # Preference files: the characters of the inputs, which both rows of a pair repeat.
    prompt_chars: int = 0

    @property
    def ok(self) -> bool:
        return self.problem_count == 0

    def add(self, line: int, message: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_REPORTED_PROBLEMS:
            self.problems.append(Problem(line, message))

    def stats(self) -> dict[str, Any]:
        stats = {
            "format": self.format,
            "example_count": self.example_count,
            "message_count": self.message_count,
            "assistant_message_count": self.assistant_message_count,
            "total_chars": self.total_chars,
            "max_example_chars": self.max_example_chars,
        }
        if self.format == "preference":
            stats["prompt_chars"] = self.prompt_chars
        return stats

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


def _check_function(function: Any, where: str) -> str | None:
    """A called function as OpenAI sends it: a name and its arguments as a JSON string."""
    if not isinstance(function, dict):
        return f"{where} must be an object with 'name' and 'arguments'"
    name, arguments = function.get("name"), function.get("arguments")
    if not isinstance(name, str) or not name.strip():
        return f"{where} needs a non-empty string 'name'"
    if not isinstance(arguments, str):
        return f"{where}.arguments must be a string holding JSON"
    try:
        json.loads(arguments)
    except json.JSONDecodeError:
        return f"{where}.arguments is not valid JSON"
    return None


def _check_calls(msg: dict[str, Any], where: str, role: str) -> str | None:
    """``tool_calls`` / ``function_call``: only on assistant messages, in OpenAI's shape (a
    chat template reads these fields, and one that is malformed cannot be rendered)."""
    for key in ("tool_calls", "function_call"):
        if key in msg and role != "assistant":
            return f"{where}: '{key}' is only allowed on assistant messages"
    if "tool_calls" in msg:
        calls = msg["tool_calls"]
        if not isinstance(calls, list) or not calls:
            return f"{where}: 'tool_calls' must be a non-empty list"
        for n, call in enumerate(calls):
            at = f"{where} tool_calls[{n}]"
            if not isinstance(call, dict):
                return f"{at} is not an object"
            if not isinstance(call.get("id"), str) or not call["id"]:
                return f"{at} needs a non-empty string 'id'"
            if call.get("type", "function") != "function":
                return f"{at} has type {call.get('type')!r}; only 'function' is supported"
            error = _check_function(call.get("function"), f"{at}.function")
            if error:
                return error
    if "function_call" in msg:
        return _check_function(msg["function_call"], f"{where} function_call")
    if "tool_call_id" in msg and (not isinstance(msg["tool_call_id"], str) or role != "tool"):
        return f"{where}: 'tool_call_id' must be a string, on a tool message"
    return None


def _check_tools(obj: dict[str, Any]) -> str | None:
    tools = obj.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        return "'tools' must be a list"
    for n, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            return f"tools[{n}] must be an object of type 'function'"
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            return f"tools[{n}].function needs a string 'name'"
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
    call_error = _check_calls(msg, where, role)
    if call_error:
        return call_error, role
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


def check_example(
    obj: Any, limits: DatasetLimits = DatasetLimits()
) -> tuple[str | None, str | None, dict[str, int]]:
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
        if len(messages) > limits.max_example_messages:
            return (
                f"example has {len(messages)} messages; at most {limits.max_example_messages} "
                "are allowed (DORADO_MAX_EXAMPLE_MESSAGES)",
                "chat",
                {},
            )
        tools_error = _check_tools(obj)
        if tools_error:
            return tools_error, "chat", {}
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
    if any(key in obj for key in PREFERENCE_EXAMPLE_KEYS):
        error, counts = check_preference_example(obj, limits)
        return error, "preference", counts
    return "example has no 'messages' (or 'prompt'/'completion')", None, {}


def _check_messages(
    messages: Any, where: str, *, only_role: str | None = None
) -> tuple[str | None, dict[str, int]]:
    """Validate a non-empty list of chat messages (``only_role``: every one must have it)."""
    if not isinstance(messages, list) or not messages:
        return f"{where} must be a non-empty list of messages", {}
    assistants = chars = 0
    for i, msg in enumerate(messages):
        error, role = _check_message(msg, i)
        if error:
            return f"{where}: {error}", {}
        if only_role and role != only_role:
            return f"{where}: message {i + 1} has role {role!r}; only {only_role!r} is allowed", {}
        if "weight" in msg:
            # Every token of a preference output is compared; a weight would be ignored.
            return f"{where}: message {i + 1} has 'weight', which preference data cannot use", {}
        assistants += role == "assistant"
        chars += len(_content_text(msg.get("content")) or "")
    return None, {"messages": len(messages), "assistant": assistants, "chars": chars}


def check_preference_example(
    obj: dict[str, Any], limits: DatasetLimits = DatasetLimits()
) -> tuple[str | None, dict[str, int]]:
    """Validate one line of OpenAI's preference (DPO) format. Returns (error, counts).

    ``{"input": {"messages": [...], "tools"?: [...]}, "preferred_output": [assistant messages],
    "non_preferred_output": [assistant messages]}``; the counts are of the input plus both
    outputs, and ``prompt_chars`` those of the input alone (a pair trains two rows, each
    holding the input).
    """
    unknown = sorted(set(obj) - PREFERENCE_EXAMPLE_KEYS)
    if unknown:
        return f"example has unrecognised key(s): {', '.join(unknown)}", {}
    missing = [key for key in ("input", *PREFERENCE_OUTPUTS) if key not in obj]
    if missing:
        return f"preference example is missing {', '.join(repr(k) for k in missing)}", {}
    prompt = obj["input"]
    if not isinstance(prompt, dict):
        return "'input' must be an object with 'messages'", {}
    unknown = sorted(set(prompt) - PREFERENCE_INPUT_KEYS)
    if unknown:
        return f"'input' has unrecognised key(s): {', '.join(unknown)}", {}
    tools_error = _check_tools(prompt)
    if tools_error:
        return f"'input': {tools_error}", {}
    error, total = _check_messages(prompt.get("messages"), "'input.messages'")
    if error:
        return error, {}
    prompt_chars = total["chars"]
    for key in PREFERENCE_OUTPUTS:
        error, counts = _check_messages(obj[key], f"'{key}'", only_role="assistant")
        if error:
            return error, {}
        total = {k: total[k] + counts[k] for k in total}
    if total["messages"] > limits.max_example_messages:
        return (
            f"example has {total['messages']} messages (input and both outputs); at most "
            f"{limits.max_example_messages} are allowed (DORADO_MAX_EXAMPLE_MESSAGES)",
            {},
        )
    if obj["preferred_output"] == obj["non_preferred_output"]:
        return "'preferred_output' and 'non_preferred_output' are identical", {}
    return None, {**total, "prompt_chars": prompt_chars}


def check_format_for_method(report_format: str | None, method: str) -> str | None:
    """Why a file of ``report_format`` cannot train a ``method`` job, or None if it can."""
    wanted = FILE_FORMATS_BY_METHOD.get(method, ())
    if report_format is None or report_format in wanted:
        return None
    if method == "dpo":
        return (
            f"line 1: the file is in {report_format} format, but a dpo job needs preference "
            "examples ({'input': {'messages': [...]}, 'preferred_output': [...], "
            "'non_preferred_output': [...]})"
        )
    return (
        f"line 1: the file holds preference (DPO) examples, but a {method} job needs chat "
        "examples ({'messages': [...]}); use method.type 'dpo' for preference data"
    )


def validate_lines(
    lines: Iterable[bytes | OverlongLine], limits: DatasetLimits = DatasetLimits()
) -> ValidationReport:
    """Validate a JSONL stream of raw lines (blank lines are ignored); read a file with
    :func:`read_lines` so that an overlong line is never held whole."""
    report = ValidationReport()
    for number, raw in enumerate(lines, start=1):
        size = raw.size if isinstance(raw, OverlongLine) else len(raw.rstrip(b"\r\n"))
        if isinstance(raw, OverlongLine) or size > limits.max_line_bytes:
            report.add(
                number,
                f"line is {size} bytes long; at most {limits.max_line_bytes} are allowed "
                "(DORADO_MAX_LINE_BYTES)",
            )
            continue
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
        error, fmt, counts = check_example(obj, limits)
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
        report.prompt_chars += counts.get("prompt_chars", 0)
        report.max_example_chars = max(report.max_example_chars, counts["chars"])
    if report.problem_count == 0 and report.example_count < MIN_EXAMPLES:
        report.add(
            0,
            f"the file has {report.example_count} example(s); at least {MIN_EXAMPLES} are required",
        )
    return report


def validate_stream(stream: BinaryIO, limits: DatasetLimits = DatasetLimits()) -> ValidationReport:
    """Validate a JSONL file object from its current position, in bounded memory."""
    return validate_lines(read_lines(stream, limits.max_line_bytes), limits)
