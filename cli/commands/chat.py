"""``dorado chat MODEL``: talk to a base model or your ``ft:`` model, the answer streamed as it
is generated (``POST /v1/chat/completions`` with ``stream: true``)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import click

from cli.client import DoradoClient
from cli.commands.common import api_command
from cli.commands.output import console, echo_json, json_option

EXIT_WORDS = {"/exit", "/quit"}


def _turns(first: str | None) -> Iterator[str]:
    """The user's messages: ``--message`` alone, else lines typed (or piped) until EOF."""
    if first is not None:
        yield first
        return
    interactive = sys.stdin.isatty()
    if interactive:
        console.print(
            "Type a message; /reset forgets the conversation, /exit or Ctrl-D ends.", style="dim"
        )
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            return
        if line.strip():
            yield line


def _request(model: str, messages: list[dict[str, str]], options: dict[str, Any]) -> dict:
    body: dict[str, Any] = {"model": model, "messages": messages}
    body.update({k: v for k, v in options.items() if v is not None})
    return body


@click.command("chat")
@click.argument("model")
@click.option("--system", default=None, help="A system message to start with.")
@click.option("-m", "--message", default=None, help="Send this one message and exit.")
@click.option("--max-tokens", type=click.IntRange(1), default=None, help="Answer length cap.")
@click.option("--temperature", type=click.FloatRange(0, 2), default=None, help="Sampling.")
@click.option("--seed", type=int, default=None, help="Seed for a reproducible answer.")
@json_option
@api_command
def chat(
    client: DoradoClient,
    model: str,
    system: str | None,
    message: str | None,
    max_tokens: int | None,
    temperature: float | None,
    seed: int | None,
    as_json: bool,
) -> None:
    """Chat with MODEL (e.g. tiny-random-llama, or the ft:... name of a finished job).

    Reads messages from the terminal (or stdin) until /exit or end of input; --message sends
    one. With --json each answer is the full chat.completion object (not streamed)."""
    options = {"max_tokens": max_tokens, "temperature": temperature, "seed": seed}
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    start = len(history)
    for text in _turns(message):
        if text.strip() in EXIT_WORDS:
            return
        if text.strip() == "/reset":
            del history[start:]
            continue
        history.append({"role": "user", "content": text})
        body = _request(model, history, options)
        if as_json:
            completion = client.post("/chat/completions", body)
            echo_json(completion, compact=message is None)
            answer = completion["choices"][0]["message"].get("content") or ""
        else:
            parts = []
            for delta in client.stream_chat(body):
                parts.append(delta)
                click.echo(delta, nl=False)
            click.echo()
            answer = "".join(parts)
        history.append({"role": "assistant", "content": answer})
