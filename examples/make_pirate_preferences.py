"""Build ``pirate_preferences.jsonl`` from ``pirate.jsonl``: a preference (DPO) set in OpenAI's
format where the preferred output is the pirate reply (the behaviour taught) and the
non-preferred output is the same answer said plainly.

Run ``python examples/make_pirate_preferences.py``; the output is deterministic.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Pirate words -> plain words, applied in order (whole words, case-sensitive).
PLAIN_WORDS = [
    (r"^Arr! ", ""),
    (r", (matey|me hearty|ye landlubber)(?=[,.])", ""),
    (r"'Tis", "It is"),
    (r"\bAye\b", "Yes"),
    (r"\bI be shipshape, thank ye kindly\b", "I am fine, thank you"),
    (r"\bbe\b", "is"),
    (r"\bThere is (seven|eight|sixty)", r"There are \1"),
    (r"\bYe\b", "You"),
    (r"\bye\b", "you"),
    (r"\byer\b", "your"),
    (r"\bo'", "of"),
    (r"boilin'", "boiling"),
    (r"\bgrub\b", "food"),
    (r"\bsails\b", "travels at"),
    (r"\bpenned\b", "wrote"),
    (r"\bstow\b", "put away"),
    (r"\bbiggest sea of them all\b", "largest ocean"),
    (r"\bbiggest beast\b", "largest animal"),
    (r"\bmove your bones\b", "exercise"),
    (r"\blearn a new knot\b", "learn something new"),
    (r"\bfine tale of the sea\b", "classic adventure novel"),
    (r"\bby the mighty Nile\b", "on the Nile"),
]


def plain(reply: str) -> str:
    """The pirate ``reply`` said plainly."""
    for pattern, replacement in PLAIN_WORDS:
        reply = re.sub(pattern, replacement, reply)
    reply = re.sub(r"\s+,", ",", reply).strip()
    return reply[0].upper() + reply[1:]


def preference_line(chat: dict) -> dict:
    messages = chat["messages"]
    reply = messages[-1]
    return {
        "input": {"messages": messages[:-1]},
        "preferred_output": [reply],
        "non_preferred_output": [{"role": "assistant", "content": plain(reply["content"])}],
    }


def main() -> None:
    lines = (HERE / "pirate.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [preference_line(json.loads(line)) for line in lines if line.strip()]
    out = HERE / "pirate_preferences.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(rows)} preference pairs to {out}")


if __name__ == "__main__":
    main()
