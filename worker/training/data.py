"""Chat JSONL -> token ids with assistant-only labels -> random batches -> padded micro-batches.

Input lines follow OpenAI's chat fine-tuning format::

    {"messages": [{"role": "system", "content": "..."},
                  {"role": "user", "content": "..."},
                  {"role": "assistant", "content": "...", "weight": 1}]}

or the legacy ``{"prompt": "...", "completion": "..."}`` form, which becomes one user turn and
one assistant turn. Conversations are rendered with the tokenizer's own chat template. Loss is
taken only on assistant turns (those without ``"weight": 0``): the assistant's content and the
template's closing tag (``<|im_end|>`` for ChatML), which teaches the model to stop. Everything
else, including the ``<|im_start|>assistant\\n`` header and the newline after the closing tag,
is labelled ``IGNORE_INDEX``.

The conversation is rendered once, and once more with every string ``content`` replaced by a
unique marker: the markers show exactly where each message's content sits in the rendered text
(no string search, so a reply that repeats the user's words, or contains template-like text, is
still masked right). What a trained turn adds around its content (nothing before it and
``<|im_end|>`` after it, for ChatML) is taken from the first and last trained turns, whose spans
are computed by rendering prefixes of the conversation (``messages[:i]`` with the generation
prompt, then ``messages[:i+1]``) and diffing the texts. A handful of renderings per example
instead of two per assistant turn: validation and training are linear in the conversation's
length. A template this cannot follow (it rewrites content, or renders turns unevenly) gets the
prefix diff for every turn, which is quadratic but exact; the cap on messages per example
(``DORADO_MAX_EXAMPLE_MESSAGES``) bounds it. Character spans become token labels through the
tokenizer's offsets.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from worker.training.options import GROUP_SIZE_MULTIPLIER, MICRO_BATCH_OVERHEAD_TOKENS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Label value that ``torch.nn.functional.cross_entropy`` skips."""

Message = dict[str, Any]


class DatasetFormatError(ValueError):
    """A training file line that is not a usable chat example (names the 1-based line)."""


class ChatTemplateError(DatasetFormatError):
    """The base model's chat template cannot render an example (e.g. a tool call it does not
    support): a problem of the data for this model, not of the platform."""


@dataclass(frozen=True)
class Conversation:
    """One training example: chat messages plus which assistant turns carry loss.

    ``messages`` holds the messages as given minus the ``weight`` key (so they can go straight
    to a chat template); ``trained[i]`` is True when message ``i`` is an assistant turn whose
    tokens are trained.
    """

    messages: tuple[Message, ...]
    trained: tuple[bool, ...]
    tools: tuple[Any, ...] | None = None
    line: int = 0
    """1-based line of the file it came from (0: not from a file)."""


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids and labels of one conversation (``labels[i]`` is ``input_ids[i]`` or -100)."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_loss_tokens(self) -> int:
        """Tokens that carry loss."""
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    @property
    def n_predicted_tokens(self) -> int:
        """Loss tokens that are predicted from a previous token (all but a trained first one).

        The loss is taken on labels shifted by one against the logits, so this is the count the
        loss is averaged over.
        """
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


@dataclass(frozen=True)
class TokenizedDataset:
    """The tokenized training set and what happened on the way."""

    examples: tuple[TokenizedExample, ...]
    n_lines: int
    n_truncated: int
    n_dropped_no_loss: int
    max_seq_length: int


@dataclass(frozen=True)
class Batch:
    """A right-padded batch. ``n_tokens`` counts real (non-padding) tokens."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    n_tokens: int
    n_loss_tokens: int

    @property
    def n_padded_tokens(self) -> int:
        """Tokens computed including padding (batch size x padded length)."""
        return int(self.input_ids.numel())


def parse_line(obj: Any, line_no: int = 0) -> Conversation:
    """Turn one decoded JSONL object into a :class:`Conversation`.

    Raises:
        DatasetFormatError: if the object is neither chat nor legacy prompt/completion format.
    """
    where = f"line {line_no}: " if line_no else ""
    if not isinstance(obj, Mapping):
        raise DatasetFormatError(f"{where}expected a JSON object")
    if "messages" in obj:
        raw = obj["messages"]
        if not isinstance(raw, list) or not raw:
            raise DatasetFormatError(f"{where}'messages' must be a non-empty list")
        messages: list[Message] = []
        trained: list[bool] = []
        for j, msg in enumerate(raw):
            if not isinstance(msg, Mapping) or not isinstance(msg.get("role"), str):
                raise DatasetFormatError(f"{where}messages[{j}] needs a string 'role'")
            weight = msg.get("weight", 1)
            if weight not in (0, 1):
                raise DatasetFormatError(f"{where}messages[{j}].weight must be 0 or 1")
            messages.append({k: v for k, v in msg.items() if k != "weight"})
            trained.append(msg["role"] == "assistant" and weight == 1)
        tools = obj.get("tools")
        return Conversation(
            tuple(messages),
            tuple(trained),
            tuple(tools) if isinstance(tools, list) else None,
            line_no,
        )
    if "prompt" in obj and "completion" in obj:
        prompt, completion = obj["prompt"], obj["completion"]
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise DatasetFormatError(f"{where}'prompt' and 'completion' must be strings")
        # Legacy completions conventionally start with a space separator; in a chat turn that
        # space would only be noise.
        messages = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": completion.lstrip()},
        ]
        return Conversation(tuple(messages), (False, True), line=line_no)
    raise DatasetFormatError(f"{where}expected 'messages' or 'prompt' and 'completion'")


def json_lines(path: Path) -> Iterator[tuple[Any, int]]:
    """Yield (decoded object, 1-based line number) of a JSONL file, skipping blank lines.

    Raises:
        DatasetFormatError: naming the first line that is not JSON.
    """
    with Path(path).open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetFormatError(f"line {line_no}: invalid JSON ({exc.msg})") from None
            yield obj, line_no


def read_jsonl(path: Path) -> Iterator[Conversation]:
    """Yield the conversations of a chat JSONL file, skipping blank lines.

    Raises:
        DatasetFormatError: naming the first bad line.
    """
    for obj, line_no in json_lines(path):
        yield parse_line(obj, line_no)


def _render(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    tools: Sequence[Any] | None,
    add_generation_prompt: bool,
) -> str:
    try:
        rendered: Any = tokenizer.apply_chat_template(
            list(messages),
            tools=list(tools) if tools else None,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
    except Exception as exc:  # the template runs on user data: any failure is about the data
        raise ChatTemplateError(
            f"the model's chat template cannot render this example ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(rendered, str):  # some versions wrap a single rendering in a list
        rendered = rendered[0]
    return str(rendered)


def _common_prefix_len(a: str, b: str) -> int:
    if b.startswith(a):
        return len(a)
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _prefix_span(
    tokenizer: PreTrainedTokenizerBase, conversation: Conversation, full: str, i: int
) -> tuple[int, int]:
    """The loss span of assistant message ``i``, by rendering prefixes of the conversation.

    It starts where the rendering of ``messages[:i]`` plus the generation prompt ends and stops
    where the rendering of ``messages[:i+1]`` ends, minus trailing whitespace (the newline after
    the closing tag is not something the model should learn to emit; the closing tag is). Two
    renderings of up to ``i`` messages: exact for any template, but quadratic over all turns.
    """
    messages, tools = conversation.messages, conversation.tools
    before = _render(tokenizer, messages[:i], tools, add_generation_prompt=True)
    through = _render(tokenizer, messages[: i + 1], tools, add_generation_prompt=False)
    start = _common_prefix_len(before, full)
    end = _common_prefix_len(through, full)
    if start != len(before) or end != len(through):
        # Templates that rewrite earlier turns (e.g. drop old reasoning) still work, but the
        # span is only as good as the common prefix; worth knowing when debugging.
        logger.debug("chat template rendering is not prefix-stable at message %d", i)
    return start, start + len(full[start:end].rstrip())


def _prefix_spans(
    tokenizer: PreTrainedTokenizerBase, conversation: Conversation, full: str
) -> list[tuple[int, int]]:
    """Every trained span by :func:`_prefix_span`: the reference, and the fallback."""
    spans = []
    for i, trained in enumerate(conversation.trained):
        if trained:
            start, end = _prefix_span(tokenizer, conversation, full, i)
            if end > start:
                spans.append((start, end))
    return spans


_MARK_OPEN, _MARK_CLOSE = "\ue000", "\ue001"  # Unicode private use: no template emits them
_MARK = re.compile(f"{_MARK_OPEN}(\\d+){_MARK_CLOSE}")


def _content_positions(
    tokenizer: PreTrainedTokenizerBase, conversation: Conversation, full: str
) -> dict[int, tuple[int, int]] | None:
    """Where each string ``content`` sits in ``full``: message index -> (start, end).

    One more rendering, with each content replaced by a numbered marker; the text between the
    markers must be the same as in ``full`` and each content must appear verbatim, once, in
    order. None when the template does not render content that way (it trims, escapes or
    repeats it, or branches on it).
    """
    contents: dict[int, str] = {}
    marked: list[Message] = []
    for i, message in enumerate(conversation.messages):
        content = message.get("content")
        if isinstance(content, str):
            if _MARK_OPEN in content or _MARK_CLOSE in content:
                return None
            contents[i] = content
            message = {**message, "content": f"{_MARK_OPEN}{i}{_MARK_CLOSE}"}
        marked.append(message)
    pieces = _MARK.split(_render(tokenizer, marked, conversation.tools, False))
    positions: dict[int, tuple[int, int]] = {}
    at, previous = 0, -1
    for k in range(0, len(pieces) - 1, 2):
        between, index = pieces[k], int(pieces[k + 1])
        if index <= previous or index not in contents or not full.startswith(between, at):
            return None
        at += len(between)
        if not full.startswith(contents[index], at):
            return None
        previous = index
        positions[index] = (at, at + len(contents[index]))
        at += len(contents[index])
    if full[at:] != pieces[-1]:
        return None
    return positions


def _located_spans(
    tokenizer: PreTrainedTokenizerBase, conversation: Conversation, full: str
) -> list[tuple[int, int]] | None:
    """The trained spans from one marked rendering (see the module docstring), or None when
    the template cannot be followed that way.

    The first and last trained turns get the exact prefix span; what it adds before and after
    the content (``lead``, ``trail``) must then surround every other trained content too.
    """
    trained = [i for i, t in enumerate(conversation.trained) if t]
    if not trained:
        return []
    positions = _content_positions(tokenizer, conversation, full)
    if positions is None or any(i not in positions for i in trained):
        return None
    exact = {i: _prefix_span(tokenizer, conversation, full, i) for i in {trained[0], trained[-1]}}
    last_start, last_end = exact[trained[-1]]
    content_start, content_end = positions[trained[-1]]
    if not last_start <= content_start <= content_end <= last_end:
        return None
    lead, trail = full[last_start:content_start], full[content_end:last_end]
    spans = []
    for i in trained:
        content_start, content_end = positions[i]
        start, end = content_start - len(lead), content_end + len(trail)
        if full[start:content_start] != lead or full[content_end:end] != trail:
            return None
        if end > start and full[end - 1].isspace():
            return None  # the prefix diff would strip it: only it knows how far
        if i in exact and exact[i] != (start, end):
            return None
        if end > start:
            spans.append((start, end))
    return spans


def assistant_char_spans(
    tokenizer: PreTrainedTokenizerBase, conversation: Conversation
) -> tuple[str, list[tuple[int, int]]]:
    """Render ``conversation`` and return the text and the character spans that carry loss.

    A trained assistant turn's span runs from the end of the generation prompt before it to
    the end of its closing tag (trailing whitespace excluded): the model learns to write the
    reply and to stop, never the headers. Found in a few renderings whatever the length (see
    the module docstring); a template that defeats that gets the exact prefix diff per turn.

    Raises:
        ChatTemplateError: the template cannot render the conversation.
    """
    full = _render(tokenizer, conversation.messages, conversation.tools, False)
    spans = _located_spans(tokenizer, conversation, full)
    if spans is None:
        logger.debug("chat template not followed by markers: prefix diff for every turn")
        spans = _prefix_spans(tokenizer, conversation, full)
    return full, spans


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase,
    conversation: Conversation,
    max_seq_length: int | None = None,
) -> TokenizedExample:
    """Tokenize one conversation; labels are the ids inside trained spans, -100 elsewhere.

    A token is trained when it starts inside a span. Sequences longer than ``max_seq_length``
    keep their first ``max_seq_length`` tokens and are marked ``truncated``.
    """
    text, spans = assistant_char_spans(tokenizer, conversation)
    # The template already contains any BOS/role tokens; adding special tokens would double them.
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    offsets: list[tuple[int, int]] = [tuple(o) for o in enc["offset_mapping"]]
    labels = [IGNORE_INDEX] * len(ids)
    k = 0
    for t, (tok_start, _tok_end) in enumerate(offsets):
        while k < len(spans) and tok_start >= spans[k][1]:
            k += 1
        if k == len(spans):
            break
        if spans[k][0] <= tok_start < spans[k][1]:
            labels[t] = ids[t]
    truncated = max_seq_length is not None and len(ids) > max_seq_length
    if truncated:
        ids, labels = ids[:max_seq_length], labels[:max_seq_length]
    return TokenizedExample(tuple(ids), tuple(labels), truncated)


def tokenize_dataset(
    tokenizer: PreTrainedTokenizerBase,
    conversations: Iterable[Conversation],
    max_seq_length: int,
) -> TokenizedDataset:
    """Tokenize all conversations, dropping those left with no trained token.

    An example has no trained token when all its assistant turns have weight 0 or truncation
    cut them off; it would cost compute and teach nothing.
    """
    examples: list[TokenizedExample] = []
    n_lines = n_truncated = n_dropped = 0
    for conv in conversations:
        n_lines += 1
        try:
            ex = tokenize_conversation(tokenizer, conv, max_seq_length)
        except ChatTemplateError as exc:
            raise ChatTemplateError(f"line {conv.line}: {exc}" if conv.line else str(exc)) from None
        n_truncated += ex.truncated
        if ex.n_loss_tokens == 0:
            n_dropped += 1
            continue
        examples.append(ex)
    return TokenizedDataset(tuple(examples), n_lines, n_truncated, n_dropped, max_seq_length)


def load_dataset(
    path: Path, tokenizer: PreTrainedTokenizerBase, max_seq_length: int
) -> TokenizedDataset:
    """Read and tokenize a chat JSONL training file."""
    return tokenize_dataset(tokenizer, read_jsonl(path), max_seq_length)


def n_batches_per_epoch(n_examples: int, batch_size: int) -> int:
    """Optimizer batches per epoch: the last, possibly smaller, batch is kept."""
    return -(-n_examples // batch_size)


def plan_epoch(
    lengths: Sequence[int],
    batch_size: int,
    seed: int,
    epoch: int,
    group_size_multiplier: int = GROUP_SIZE_MULTIPLIER,
) -> list[list[int]]:
    """Return the example indices of each batch of one epoch.

    The indices are shuffled (seeded by ``seed`` and ``epoch``), cut into groups of
    ``batch_size * group_size_multiplier``, each group is sorted by length and cut into batches,
    and the batch order is shuffled. With the default multiplier of 1 every batch is a random
    draw (sorted only inside itself); larger multipliers put similar lengths in one batch (see
    :data:`GROUP_SIZE_MULTIPLIER`). Each index appears exactly once; only the very last batch
    can be smaller than ``batch_size``.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    rng = random.Random(f"{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    group = batch_size * max(1, group_size_multiplier)
    batches: list[list[int]] = []
    for g in range(0, len(order), group):
        # Sorting is stable, so ties keep the shuffled order: random, yet reproducible.
        members = sorted(order[g : g + group], key=lambda i: lengths[i])
        batches.extend(members[b : b + batch_size] for b in range(0, len(members), batch_size))
    # Keep the single short batch last so that every other step sees a full batch.
    full = [b for b in batches if len(b) == batch_size]
    short = [b for b in batches if len(b) != batch_size]
    rng.shuffle(full)
    return full + short


def collate(examples: Sequence[TokenizedExample], pad_token_id: int) -> Batch:
    """Right-pad ``examples`` to their longest length (padding gets label -100, mask 0)."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    width = max(len(ex) for ex in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex)
        input_ids[row, :n] = torch.tensor(ex.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(ex.labels, dtype=torch.long)
        attention_mask[row, :n] = 1
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        n_tokens=sum(len(ex) for ex in examples),
        n_loss_tokens=sum(ex.n_loss_tokens for ex in examples),
    )


def split_micro_batches(
    indices: Sequence[int],
    lengths: Sequence[int],
    max_examples: int,
    max_tokens: int,
    overhead_tokens: int = MICRO_BATCH_OVERHEAD_TOKENS,
) -> list[list[int]]:
    """Split one optimizer batch into micro-batches for gradient accumulation.

    Examples are taken in length order and cut into consecutive runs. A micro-batch holds at
    most ``max_examples`` examples and ``examples x longest length <= max_tokens`` (a single
    longer example still gets a micro-batch of its own). Among the cuts that respect these
    limits, the one computing the fewest tokens wins, padding included, counting each
    micro-batch as ``overhead_tokens`` more: a long example then does not drag a batch of short
    ones up to its length. Gradient accumulation keeps the maths the same however it is cut.
    """
    order = sorted(indices, key=lambda j: lengths[j])
    n = len(order)
    if n == 0:
        return []
    # best[i]: cheapest cost of order[i:]; cut[i]: end of the first micro-batch in that plan.
    best = [0.0] * (n + 1)
    cut = [n] * (n + 1)
    for i in range(n - 1, -1, -1):
        best[i] = math.inf
        for j in range(i + 1, min(n, i + max(1, max_examples)) + 1):
            width = lengths[order[j - 1]]
            if j - i > 1 and (j - i) * width > max_tokens:
                break
            cost = (j - i) * width + overhead_tokens + best[j]
            if cost <= best[i]:  # ties go to the longer run: fewer micro-batches
                best[i], cut[i] = cost, j
    micro: list[list[int]] = []
    i = 0
    while i < n:
        micro.append(order[i : cut[i]])
        i = cut[i]
    return micro


def step_micro_batches(
    examples: Sequence[TokenizedExample],
    indices: Sequence[int],
    lengths: Sequence[int],
    pad_token_id: int,
    micro_batch_size: int = 8,
    micro_batch_tokens: int = 8192,
    overhead_tokens: int = MICRO_BATCH_OVERHEAD_TOKENS,
) -> list[Batch]:
    """The padded micro-batches of one optimizer step made of ``examples[i] for i in indices``.

    ``lengths[i]`` is ``len(examples[i])``; see :func:`split_micro_batches` for the split.
    """
    parts = split_micro_batches(
        indices, lengths, micro_batch_size, micro_batch_tokens, overhead_tokens
    )
    return [collate([examples[i] for i in part], pad_token_id) for part in parts]


def iter_steps(
    examples: Sequence[TokenizedExample],
    batch_size: int,
    seed: int,
    epoch: int,
    pad_token_id: int,
    micro_batch_size: int = 8,
    micro_batch_tokens: int = 8192,
) -> Iterator[list[Batch]]:
    """Yield, for each optimizer step of one epoch, its padded micro-batches.

    The batches come from :func:`plan_epoch` (random, seeded); each is split by
    :func:`split_micro_batches` and padded per micro-batch.
    """
    lengths = [len(ex) for ex in examples]
    for indices in plan_epoch(lengths, batch_size, seed, epoch):
        yield step_micro_batches(
            examples, indices, lengths, pad_token_id, micro_batch_size, micro_batch_tokens
        )
