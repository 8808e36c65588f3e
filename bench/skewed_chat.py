"""A deterministic chat data set with skewed lengths, shared by the benchmarks.

Most replies are one to three sentences, a long tail runs to a dozen: with SmolLM2's chat
template the examples span roughly 45..230 tokens with a median near 75, like real
instruction data (and like the reference measurement in the issue: 49..231 tokens, median 75).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SUBJECTS = [
    "the tides",
    "a rainbow",
    "bread rising",
    "a compass",
    "the seasons",
    "a lighthouse",
    "volcanoes",
    "the moon's phases",
    "a sailing ship",
    "coral reefs",
    "thunder",
    "glaciers",
    "a sundial",
    "honey bees",
    "the wind",
    "fog at sea",
    "an anchor",
    "starlight",
]
SENTENCES = [
    "It happens because of forces that act slowly and steadily over time.",
    "Sailors have watched it for centuries and learned to read its signs.",
    "The sun plays a larger part in it than most people expect.",
    "Water and air carry heat from one place to another, and that drives much of it.",
    "You can see it best early in the morning, when the light is low.",
    "Scientists measured it carefully only in the last two hundred years.",
    "Small changes add up, so the effect is easy to miss from one day to the next.",
    "Old stories explained it with gods and monsters, but the truth is simpler.",
    "A good way to remember it is to think of a spinning wheel.",
    "Its pattern repeats, which is why almanacs could predict it long ago.",
    "Temperature matters, and so does the shape of the land nearby.",
    "In the end it is all a matter of balance between opposing pulls.",
]


def make_examples(n: int, seed: int = 0) -> list[dict]:
    """``n`` chat examples; reply length ~ 1 + geometric tail, capped at 12 sentences."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        subject = rng.choice(SUBJECTS)
        k = 1
        while k < 12 and rng.random() < 0.62:
            k += 1
        reply = " ".join(rng.choice(SENTENCES) for _ in range(k))
        messages = [
            {"role": "user", "content": f"Question {i}: how does {subject} work?"},
            {"role": "assistant", "content": f"Good question about {subject}. {reply}"},
        ]
        if rng.random() < 0.3:
            messages.insert(0, {"role": "system", "content": "You are a patient teacher."})
        rows.append({"messages": messages})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """Write ``rows`` as JSONL and return ``path``."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
