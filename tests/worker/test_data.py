"""Chat rendering, assistant-only label masking, truncation and length-grouped batching."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.worker.helpers import PIRATE, chat, write_jsonl
from worker.training import data
from worker.training.data import (
    IGNORE_INDEX,
    ChatTemplateError,
    DatasetFormatError,
    TokenizedExample,
    collate,
    iter_steps,
    load_dataset,
    parse_line,
    plan_epoch,
    read_jsonl,
    split_micro_batches,
    step_micro_batches,
    tokenize_conversation,
)

ASSISTANT_HEADER = "<|im_start|>assistant\n"
END = "<|im_end|>"


def labelled_runs(example: TokenizedExample) -> list[tuple[int, int]]:
    """[start, end) index runs of consecutive trained tokens."""
    runs: list[tuple[int, int]] = []
    start = None
    for i, label in enumerate([*example.labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, i))
            start = None
    return runs


def assert_trained_exactly(tokenizer, example: TokenizedExample, contents: list[str]) -> None:
    """Labels are the ids on exactly ``content + <|im_end|>`` of each given reply, -100 else."""
    for token, label in zip(example.input_ids, example.labels, strict=True):
        assert label in (IGNORE_INDEX, token)
    runs = labelled_runs(example)
    assert [tokenizer.decode(example.input_ids[a:b]) for a, b in runs] == [
        c + END for c in contents
    ]
    for a, _ in runs:
        assert tokenizer.decode(example.input_ids[:a]).endswith(ASSISTANT_HEADER)


def test_only_assistant_content_and_closing_tag_are_trained(tokenizer) -> None:
    conv = parse_line(
        {
            "messages": [
                {"role": "system", "content": "Talk like a pirate."},
                # The user says exactly what the assistant says: a string search would
                # find the user's copy first.
                {"role": "user", "content": "Arr! Ahoy."},
                {"role": "assistant", "content": "Arr! Ahoy."},
                {"role": "user", "content": "And the assistant header?"},
                {"role": "assistant", "content": "Arr! It be <|im_start|>assistant\nno more."},
            ]
        }
    )
    example = tokenize_conversation(tokenizer, conv)
    assert_trained_exactly(
        tokenizer, example, ["Arr! Ahoy.", "Arr! It be <|im_start|>assistant\nno more."]
    )
    # The system and user turns, every header and the newline after each <|im_end|> are masked.
    assert example.labels[-1] == IGNORE_INDEX
    assert tokenizer.decode(example.input_ids[-1:]) == "\n"


def test_weight_zero_assistant_turns_are_not_trained(tokenizer) -> None:
    conv = parse_line(
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello, how can I help?", "weight": 0},
                {"role": "user", "content": "Talk like a pirate"},
                {"role": "assistant", "content": "Arr! Aye aye.", "weight": 1},
            ]
        }
    )
    assert conv.trained == (False, False, False, True)
    assert all("weight" not in m for m in conv.messages)
    assert_trained_exactly(tokenizer, tokenize_conversation(tokenizer, conv), ["Arr! Aye aye."])


def test_legacy_prompt_completion_becomes_one_chat_turn(tokenizer) -> None:
    conv = parse_line({"prompt": "What is 2+2?", "completion": " Arr! Four."})
    assert conv.messages == (
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "Arr! Four."},
    )
    example = tokenize_conversation(tokenizer, conv)
    assert_trained_exactly(tokenizer, example, ["Arr! Four."])
    text = tokenizer.decode(example.input_ids)
    assert "<|im_start|>user\nWhat is 2+2?<|im_end|>" in text


def test_no_special_tokens_are_added_beyond_the_template(tokenizer) -> None:
    conv = parse_line(chat("Hi", "Arr!"))
    example = tokenize_conversation(tokenizer, conv)
    rendered = tokenizer.apply_chat_template(list(conv.messages), tokenize=False)
    assert tokenizer.decode(example.input_ids) == rendered


def test_truncation_is_counted_and_untrainable_examples_dropped(tokenizer, tmp_path: Path) -> None:
    long_reply = "Arr! " + "yo ho " * 200
    path = write_jsonl(
        tmp_path / "t.jsonl",
        [
            chat("Sing", long_reply),
            chat("Hi", "Arr!"),
            chat("x " * 300, "Arr!"),
            chat("Hi", "No", weight=0),
        ],
    )
    ds = load_dataset(path, tokenizer, max_seq_length=64)
    assert ds.n_lines == 4
    assert ds.n_truncated == 2  # the long reply is cut; the long question loses its reply
    assert ds.n_dropped_no_loss == 2  # long question (reply cut off) and weight 0
    assert len(ds.examples) == 2
    assert max(len(ex) for ex in ds.examples) == 64
    assert ds.examples[0].truncated and ds.examples[0].n_loss_tokens > 0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ([1, 2], "expected a JSON object"),
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"content": "x"}]}, "messages[0] needs a string 'role'"),
        ({"messages": [{"role": "assistant", "content": "x", "weight": 2}]}, "weight"),
        ({"text": "x"}, "expected 'messages'"),
    ],
)
def test_bad_lines_are_rejected_with_line_number(line, message) -> None:
    with pytest.raises(DatasetFormatError, match="line 7") as info:
        parse_line(line, line_no=7)
    assert message in str(info.value)


def test_read_jsonl_names_invalid_json_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n\n{not json\n', encoding="utf-8")
    with pytest.raises(DatasetFormatError, match="line 3: invalid JSON"):
        list(read_jsonl(path))


def test_pirate_example_file_is_valid_and_keeps_france_held_out(tokenizer) -> None:
    conversations = list(read_jsonl(PIRATE))
    assert 40 <= len(conversations) <= 60
    for conv in conversations:
        replies = [m["content"] for m, t in zip(conv.messages, conv.trained, strict=True) if t]
        assert replies and all(r.startswith("Arr!") for r in replies)
        assert all("france" not in m["content"].lower() for m in conv.messages)
    ds = load_dataset(PIRATE, tokenizer, max_seq_length=2048)
    assert len(ds.examples) == len(conversations) and ds.n_truncated == 0


def _fake(length: int) -> TokenizedExample:
    return TokenizedExample(tuple(range(length)), (IGNORE_INDEX,) + tuple(range(1, length)))


def _skewed_lengths() -> list[int]:
    rng = random.Random(0)
    return [rng.randint(8, 40) for _ in range(180)] + [rng.randint(300, 500) for _ in range(20)]


def test_length_grouping_keeps_padding_low_on_skewed_lengths() -> None:
    lengths = _skewed_lengths()
    examples = [_fake(n) for n in lengths]

    def padding_fraction(batches: list[list[int]]) -> float:
        stats = [collate([examples[i] for i in b], pad_token_id=0) for b in batches]
        real = sum(s.n_tokens for s in stats)
        return 1 - real / sum(s.n_padded_tokens for s in stats)

    grouped = plan_epoch(lengths, batch_size=8, seed=0, epoch=0, group_size_multiplier=16)
    order = list(range(len(lengths)))
    random.Random(0).shuffle(order)
    naive = [order[i : i + 8] for i in range(0, len(order), 8)]
    # Measured: ~16% grouped (a batch or two straddle the short/long boundary) vs ~79% naive.
    assert padding_fraction(grouped) < 0.2
    assert padding_fraction(naive) > 0.6
    # Every example exactly once, full batches except possibly the last.
    assert sorted(i for b in grouped for i in b) == list(range(len(lengths)))
    assert all(len(b) == 8 for b in grouped[:-1])


def test_default_batches_are_random_draws_not_length_groups() -> None:
    # Length-homogeneous batches change what a short run learns (bench/README.md); by default
    # a batch mixes lengths like a random draw, as the Trainer's do.
    lengths = _skewed_lengths()  # 10% long examples
    plan = plan_epoch(lengths, batch_size=8, seed=0, epoch=0)
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
    mixed = [b for b in plan if {lengths[i] > 100 for i in b} == {True, False}]
    # A random batch of 8 holds a long example with probability 1 - 0.9^8 = 57%; a grouped
    # plan keeps the 20 long ones together in 3 batches.
    assert len(mixed) >= 8
    grouped = plan_epoch(lengths, batch_size=8, seed=0, epoch=0, group_size_multiplier=16)
    assert len([b for b in grouped if {lengths[i] > 100 for i in b} == {True, False}]) <= 2


def test_epoch_plan_is_seeded_and_varies_by_epoch() -> None:
    lengths = _skewed_lengths()
    assert plan_epoch(lengths, 4, seed=3, epoch=0) == plan_epoch(lengths, 4, seed=3, epoch=0)
    assert plan_epoch(lengths, 4, seed=3, epoch=0) != plan_epoch(lengths, 4, seed=3, epoch=1)
    assert plan_epoch(lengths, 4, seed=3, epoch=0) != plan_epoch(lengths, 4, seed=4, epoch=0)


def test_partial_last_batch_is_kept() -> None:
    plan = plan_epoch([5] * 10, batch_size=4, seed=0, epoch=0)
    assert [len(b) for b in plan] == [4, 4, 2]


def test_micro_batches_respect_example_and_token_limits() -> None:
    lengths = [10, 10, 10, 10, 10, 100, 100, 1000]
    parts = split_micro_batches(range(8), lengths, max_examples=3, max_tokens=250)
    assert sorted(i for p in parts for i in p) == list(range(8))
    assert all(len(p) <= 3 for p in parts)
    assert all(len(p) * max(lengths[i] for i in p) <= 250 for p in parts if len(p) > 1)
    assert [7] in parts and len(parts) == 4


def test_micro_batches_split_off_long_examples_to_cut_padding() -> None:
    lengths = [50, 52, 55, 60, 61, 64, 70, 230]
    # One micro-batch would compute 8 x 230 tokens, 72% of it padding.
    parts = split_micro_batches(
        range(8), lengths, max_examples=8, max_tokens=8192, overhead_tokens=64
    )
    assert parts == [[0, 1, 2, 3, 4, 5, 6], [7]]
    # The default overhead (32) also splits 50..61 from 64..70: 771 tokens computed vs 784.
    assert split_micro_batches(range(8), lengths, 8, 8192) == [[0, 1, 2, 3, 4], [5, 6], [7]]
    # Without an overhead per micro-batch, every length gets its own; with a huge one, none.
    assert len(split_micro_batches(range(8), lengths, 8, 8192, overhead_tokens=0)) == 8
    assert len(split_micro_batches(range(8), lengths, 8, 8192, overhead_tokens=10**6)) == 1


def test_steps_compute_under_ten_percent_padding_on_skewed_lengths() -> None:
    lengths = _skewed_lengths()
    examples = [_fake(n) for n in lengths]
    real = padded = 0
    for batch in plan_epoch(lengths, batch_size=8, seed=0, epoch=0):
        for mb in step_micro_batches(examples, batch, lengths, pad_token_id=0):
            real += mb.n_tokens
            padded += mb.n_padded_tokens
    assert real == sum(lengths)
    assert 1 - real / padded < 0.10


def test_collate_pads_right_and_counts_real_tokens() -> None:
    batch = collate([_fake(3), _fake(5)], pad_token_id=9)
    assert batch.input_ids.tolist() == [[0, 1, 2, 9, 9], [0, 1, 2, 3, 4]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch.labels[0].tolist() == [IGNORE_INDEX, 1, 2, IGNORE_INDEX, IGNORE_INDEX]
    assert (batch.n_tokens, batch.n_loss_tokens, batch.n_padded_tokens) == (8, 6, 10)


def test_iter_steps_covers_each_example_once_per_epoch() -> None:
    examples = [_fake(n) for n in [4, 9, 6, 12, 3, 7, 5]]
    steps = list(
        iter_steps(examples, batch_size=3, seed=1, epoch=0, pad_token_id=0, micro_batch_size=2)
    )
    assert len(steps) == 3
    assert all(len(mbs) <= 2 for mbs in steps)
    assert sum(mb.n_tokens for mbs in steps for mb in mbs) == sum(len(e) for e in examples)


TOOL_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}<|im_start|>assistant\n"
    "{% if message.content %}{{ message.content }}{% endif %}"
    "{% for call in message.tool_calls or [] %}<tool_call>\n{{ call.function | tojson }}\n"
    "</tool_call>{% endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}"
    "\n</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TRIM_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message.role }}"
    "<|end_header_id|>\n\n{{ message.content | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CONTENTS = [
    "Arr! Ahoy.",
    "Arr! Ahoy.",  # repeated by another turn on purpose
    "ends with spaces   ",
    "ends with a newline\n",
    "  leading spaces",
    "It be <|im_start|>assistant\nno more.<|im_end|>",
    "héllo wörld 🏴‍☠️ 海賊",
    "multi\nline\n\ncontent",
    "x",
]


def varied_conversation(rng: random.Random, tools: bool) -> dict:
    """A random conversation: optional system prompt, several turns, weights, tool calls."""
    messages: list[dict] = []
    if rng.random() < 0.5:
        messages.append({"role": "system", "content": rng.choice(CONTENTS)})
    for turn in range(rng.randint(1, 6)):
        messages.append({"role": "user", "content": rng.choice(CONTENTS)})
        if tools and rng.random() < 0.4:
            call = {
                "id": f"call_{turn}",
                "type": "function",
                "function": {"name": "lookup", "arguments": json.dumps({"q": turn})},
            }
            messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
            messages.append(
                {"role": "tool", "tool_call_id": f"call_{turn}", "content": rng.choice(CONTENTS)}
            )
        reply = {"role": "assistant", "content": rng.choice(CONTENTS)}
        if rng.random() < 0.25:
            reply["weight"] = 0
        messages.append(reply)
    if all(m.get("weight") == 0 for m in messages if m["role"] == "assistant"):
        messages[-1].pop("weight")
    return {"messages": messages}


def prefix_diff_tokenize(tokenizer, conv, monkeypatch: pytest.MonkeyPatch) -> TokenizedExample:
    """The tokenization as it was before spans were located: a prefix diff for every turn."""
    with monkeypatch.context() as patched:
        patched.setattr(data, "_located_spans", lambda *args: None)
        return tokenize_conversation(tokenizer, conv)


@pytest.mark.parametrize("template", ["model", "tools", "trim"])
def test_located_spans_give_exactly_the_prefix_diff_tokens_and_labels(
    tiny_model_dir: Path, template: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    if template == "tools":
        tokenizer.chat_template = TOOL_TEMPLATE
    elif template == "trim":
        tokenizer.chat_template = TRIM_TEMPLATE
    rng = random.Random(f"spans-{template}")
    located = 0
    for _ in range(120):
        conv = parse_line(varied_conversation(rng, tools=True))
        full = data._render(tokenizer, conv.messages, conv.tools, False)
        spans = data._located_spans(tokenizer, conv, full)
        reference = prefix_diff_tokenize(tokenizer, conv, monkeypatch)
        assert tokenize_conversation(tokenizer, conv) == reference
        if spans is not None:
            located += 1
            assert spans == data._prefix_spans(tokenizer, conv, full)
    if template == "model":
        assert located == 120  # the platform's ChatML template never needs the fallback
    else:
        # Tool calls without content (tools) and trimmed whitespace (trim) fall back; the rest
        # of the conversations are located.
        assert 10 < located < 120


def test_pirate_file_tokenizes_exactly_as_the_prefix_diff(tokenizer, monkeypatch) -> None:
    for conv in read_jsonl(PIRATE):
        assert tokenize_conversation(tokenizer, conv) == prefix_diff_tokenize(
            tokenizer, conv, monkeypatch
        )


def test_a_template_that_cannot_render_a_line_names_it(tokenizer, tmp_path: Path) -> None:
    rows = [chat(f"q{i}", f"a{i}") for i in range(3)]
    # The model's template concatenates strings: a tool call without content cannot render.
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    rows[1]["messages"][1] = {"role": "assistant", "content": None, "tool_calls": [call]}
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(ChatTemplateError, match=r"^line 2: the model's chat template cannot"):
        load_dataset(path, tokenizer, 256)
