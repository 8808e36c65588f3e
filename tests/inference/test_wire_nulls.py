"""Chat completion bodies hold no null where OpenAI's spec types a field as a string."""

from __future__ import annotations

import json

from worker.inference.engine import Completion
from worker.inference.server import completion_object, sse_events


def test_completion_and_chunks_omit_system_fingerprint():
    done = Completion(text="Arr", finish_reason="stop", prompt_tokens=3, completion_tokens=1)
    body = completion_object("chatcmpl-1", 1, "m", done)
    assert "system_fingerprint" not in body
    chunks = [
        json.loads(e[len("data: ") :])
        for e in sse_events("chatcmpl-1", 1, "m", "Arr", iter([done]), include_usage=True)
        if e.startswith("data: {")
    ]
    assert chunks and all("system_fingerprint" not in c for c in chunks)
