"""Direct Preference Optimization (Rafailov et al., 2023): preference pairs, their batching, and
the loss.

A preference line (OpenAI's format, validated by ``core.storage.datasets``) becomes two chat
examples sharing the prompt: ``input.messages + preferred_output`` ("chosen") and
``input.messages + non_preferred_output`` ("rejected"), each labelled on its output's assistant
tokens only, exactly as supervised examples are (``worker.training.data``).

The loss is TRL's ``sigmoid`` DPO loss::

    loss = -logsigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))

where ``pi`` and ``ref`` are log-probabilities of a reply summed over its loss tokens, under the
trained policy and under the reference policy. The reference is the policy the run starts from
(as in the paper, and TRL's recommendation when DPO follows SFT): for a fresh adapter that is
the base model, so the reference is the same model with its adapter switched off
(``PeftModel.disable_adapter()``, under ``no_grad``); for a run continuing a parent adapter
(``ft:``, ``TrainSpec.init_adapter_dir``) it is the base model with the parent's adapter, i.e.
the model as loaded, before any step. No second copy of the model or of the adapter is held in
memory. The implicit rewards are ``beta * (pi - ref)``; the reward margin is chosen minus
rejected, and the preference accuracy is the share of pairs whose chosen reward is higher.

A pair's chosen and rejected rows travel in the same padded micro-batch (the loss of a pair
needs both), and micro-batches are cut by the engine's padding-aware split
(:func:`worker.training.data.split_micro_batches`) over the pairs' longer side.

The reference never changes during a run, so the recipe computes its log-probabilities once,
before the first step (:func:`reference_table`, as TRL's ``precompute_ref_log_probs``), for the
training pairs and for the validation pairs, instead of one extra forward pass per pair per
step or evaluation. A resumed run computes them before it restores the checkpoint's adapter, so
from the same starting weights. :func:`dpo_forward_backward` and :func:`dpo_evaluate` compute
them on the fly (adapter off) when given no table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from worker.training.data import (
    IGNORE_INDEX,
    Batch,
    Conversation,
    DatasetFormatError,
    TokenizedExample,
    collate,
    json_lines,
    split_micro_batches,
    tokenize_conversation,
)
from worker.training.logits import HeadSplit, split_head, target_logits
from worker.training.options import MICRO_BATCH_OVERHEAD_TOKENS
from worker.training.parallel import DataParallel, empty_micro_batch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DPO_METRIC_KEYS = ("chosen_reward", "rejected_reward", "reward_margin", "preference_accuracy")
"""The DPO quantities reported next to the loss, each prefixed ``train_``, ``valid_`` or
``full_valid_`` in metrics events, checkpoints and the result CSV."""


@dataclass(frozen=True)
class PreferencePair:
    """One tokenized preference example: the same prompt with its two replies."""

    chosen: TokenizedExample
    rejected: TokenizedExample

    def __len__(self) -> int:
        """Real tokens the pair costs (both rows)."""
        return len(self.chosen) + len(self.rejected)

    @property
    def width(self) -> int:
        """The padded length of the pair in a batch: its longer row."""
        return max(len(self.chosen), len(self.rejected))


@dataclass(frozen=True)
class PreferenceDataset:
    """The tokenized preference set and what happened on the way."""

    examples: tuple[PreferencePair, ...]
    n_lines: int
    n_truncated: int
    n_dropped_no_loss: int
    max_seq_length: int


@dataclass(frozen=True)
class PairBatch:
    """A padded micro-batch of whole pairs: ``batch`` holds the chosen rows of ``pairs`` (by
    index into the data set) first, then their rejected rows in the same order."""

    batch: Batch
    pairs: tuple[int, ...]


@dataclass(frozen=True)
class DpoStats:
    """Sums over pairs divided by a pair count (so shares of ranks add up)."""

    loss: float
    chosen_reward: float
    rejected_reward: float
    reward_margin: float
    preference_accuracy: float
    n_tokens: int = 0

    def metrics(self, prefix: str) -> dict[str, float]:
        """The DPO quantities keyed ``{prefix}_{name}`` (see :data:`DPO_METRIC_KEYS`)."""
        return {f"{prefix}_{key}": getattr(self, key) for key in DPO_METRIC_KEYS}


def parse_preference_line(obj: Any, line_no: int = 0) -> tuple[Conversation, Conversation]:
    """The (chosen, rejected) conversations of one decoded preference line.

    Raises:
        DatasetFormatError: naming the line, if it is not a preference example.
    """
    where = f"line {line_no}: " if line_no else ""
    if not isinstance(obj, Mapping) or not isinstance(obj.get("input"), Mapping):
        raise DatasetFormatError(
            f"{where}expected a preference example with 'input', 'preferred_output' and "
            "'non_preferred_output'"
        )
    prompt = obj["input"].get("messages")
    if not isinstance(prompt, list) or not prompt:
        raise DatasetFormatError(f"{where}'input.messages' must be a non-empty list")
    tools = obj["input"].get("tools")
    sides = []
    for key in ("preferred_output", "non_preferred_output"):
        reply = obj.get(key)
        if not isinstance(reply, list) or not reply:
            raise DatasetFormatError(f"{where}'{key}' must be a non-empty list of messages")
        if not all(isinstance(m, Mapping) and m.get("role") == "assistant" for m in reply):
            raise DatasetFormatError(f"{where}'{key}' may hold assistant messages only")
        messages = tuple(dict(m) for m in prompt) + tuple(dict(m) for m in reply)
        trained = (False,) * len(prompt) + (True,) * len(reply)
        sides.append(
            Conversation(messages, trained, tuple(tools) if isinstance(tools, list) else None)
        )
    return sides[0], sides[1]


def read_preference_jsonl(path: Path) -> Iterator[tuple[Conversation, Conversation]]:
    """Yield the (chosen, rejected) conversations of a preference JSONL file."""
    for obj, line_no in json_lines(path):
        yield parse_preference_line(obj, line_no)


def tokenize_pairs(
    tokenizer: PreTrainedTokenizerBase,
    pairs: Iterable[tuple[Conversation, Conversation]],
    max_seq_length: int,
) -> PreferenceDataset:
    """Tokenize every pair; a pair either of whose replies has no loss token left (cut off by
    ``max_seq_length``) is dropped: it cannot be compared."""
    examples: list[PreferencePair] = []
    n_lines = n_truncated = n_dropped = 0
    for chosen, rejected in pairs:
        n_lines += 1
        pair = PreferencePair(
            tokenize_conversation(tokenizer, chosen, max_seq_length),
            tokenize_conversation(tokenizer, rejected, max_seq_length),
        )
        n_truncated += pair.chosen.truncated or pair.rejected.truncated
        if pair.chosen.n_predicted_tokens == 0 or pair.rejected.n_predicted_tokens == 0:
            n_dropped += 1
            continue
        examples.append(pair)
    return PreferenceDataset(tuple(examples), n_lines, n_truncated, n_dropped, max_seq_length)


def load_preference_dataset(
    path: Path, tokenizer: PreTrainedTokenizerBase, max_seq_length: int
) -> PreferenceDataset:
    """Read and tokenize a preference JSONL file."""
    return tokenize_pairs(tokenizer, read_preference_jsonl(path), max_seq_length)


def pair_micro_batches(
    pairs: Sequence[PreferencePair],
    indices: Sequence[int],
    pad_token_id: int,
    micro_batch_size: int = 8,
    micro_batch_tokens: int = 8192,
    overhead_tokens: int = MICRO_BATCH_OVERHEAD_TOKENS,
) -> list[PairBatch]:
    """The padded micro-batches of the pairs ``indices``: each holds whole pairs, its chosen
    rows first, then the rejected rows in the same order.

    The split is :func:`split_micro_batches` over the pairs' widths with the limits halved
    (a pair is two rows), so a micro-batch keeps within ``micro_batch_size`` rows and
    ``micro_batch_tokens`` padded tokens, as supervised micro-batches do.
    """
    widths = [pair.width for pair in pairs]
    parts = split_micro_batches(
        indices,
        widths,
        max(1, micro_batch_size // 2),
        max(1, micro_batch_tokens // 2),
        overhead_tokens,
    )
    return [
        PairBatch(
            collate(
                [pairs[i].chosen for i in part] + [pairs[i].rejected for i in part], pad_token_id
            ),
            tuple(part),
        )
        for part in parts
    ]


def even_pair_batches(
    micro_batches: list[PairBatch], pad_token_id: int, parallel: DataParallel
) -> list[PairBatch]:
    """Under FSDP, ``micro_batches`` padded with empty ones (no pair, no loss token) to the
    most any rank has: every forward and backward pass there is a collective. A collective
    under FSDP; else returned as is."""
    missing = parallel.missing_passes(len(micro_batches))
    return micro_batches + [PairBatch(empty_micro_batch(pad_token_id), ()) for _ in range(missing)]


def sequence_logps(
    model: torch.nn.Module, batch: Batch, device: torch.device, split: HeadSplit | None
) -> torch.Tensor:
    """Each row's log-probability of its loss tokens, summed (float32, one value per row)."""
    logits, targets = target_logits(model, batch, device, split)
    rows = (batch.labels[:, 1:] != IGNORE_INDEX).nonzero()[:, 0].to(device)
    token_logps = -F.cross_entropy(logits, targets, reduction="none")
    total = torch.zeros(batch.input_ids.shape[0], dtype=torch.float32, device=device)
    return total.index_add(0, rows, token_logps)


@contextlib.contextmanager
def reference_policy(model: torch.nn.Module, with_adapter: bool = False) -> Iterator[None]:
    """The reference policy, without gradients: ``model`` with its adapter switched off (the
    base model), or, ``with_adapter``, ``model`` as it is (its adapter's current weights)."""
    if with_adapter:
        with torch.no_grad():
            yield
        return
    disable = getattr(model, "disable_adapter", None)
    if disable is None:
        raise TypeError("DPO's reference policy needs a PEFT model (an adapter to switch off)")
    with torch.no_grad(), disable():
        yield


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair sigmoid DPO losses and the chosen and rejected rewards ``beta * (pi - ref)``."""
    chosen_rewards = beta * (policy_chosen - reference_chosen)
    rejected_rewards = beta * (policy_rejected - reference_rejected)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


def _pair_terms(
    model: torch.nn.Module,
    mb: PairBatch,
    device: torch.device,
    split: HeadSplit | None,
    beta: float,
    table: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = len(mb.pairs)
    if table is None:
        with reference_policy(model):
            reference = sequence_logps(model, mb.batch, device, split)
        ref_chosen, ref_rejected = reference[:n], reference[n : 2 * n]
    else:
        rows = table[list(mb.pairs)].to(device)
        ref_chosen, ref_rejected = rows[:, 0], rows[:, 1]
    policy = sequence_logps(model, mb.batch, device, split)
    # [n : 2n], not [n:]: an empty PairBatch (even_pair_batches) holds one dummy row.
    return dpo_loss(policy[:n], policy[n : 2 * n], ref_chosen, ref_rejected, beta)


@torch.no_grad()
def reference_table(
    model: torch.nn.Module,
    pairs: Sequence[PreferencePair],
    pad_token_id: int,
    device: torch.device,
    micro_batch_size: int = 8,
    micro_batch_tokens: int = 8192,
    parallel: DataParallel | None = None,
    with_adapter: bool = False,
) -> torch.Tensor:
    """The reference log-probabilities of every pair, ``[n_pairs, 2]`` (chosen, rejected),
    float32 on the CPU, computed in eval mode (no dropout) under :func:`reference_policy`:
    with the adapter switched off, or, ``with_adapter``, with the adapter as it is now (a run
    continuing a parent adapter calls this before any step: the reference is the parent).
    Under data parallelism each rank computes its share and the table is summed."""
    parallel = parallel or DataParallel()
    table = torch.zeros(len(pairs), 2, dtype=torch.float32)
    mine = parallel.shard(range(len(pairs)), [len(p) for p in pairs])
    split = split_head(model)
    was_training = model.training
    model.eval()
    try:
        micro = pair_micro_batches(pairs, mine, pad_token_id, micro_batch_size, micro_batch_tokens)
        for mb in even_pair_batches(micro, pad_token_id, parallel):
            with reference_policy(model, with_adapter):
                logps = sequence_logps(model, mb.batch, device, split).float().cpu()
            n = len(mb.pairs)
            table[list(mb.pairs), 0] = logps[:n]
            table[list(mb.pairs), 1] = logps[n : 2 * n]
    finally:
        model.train(was_training)
    return parallel.sum_(table.to(parallel.comm_device())).cpu()


def _sums(losses: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    return torch.stack(
        [
            losses.detach().sum(),
            chosen.sum(),
            rejected.sum(),
            (chosen - rejected).sum(),
            (chosen > rejected).float().sum(),
        ]
    ).double()


def _stats(sums: torch.Tensor, denom: int, n_tokens: int = 0) -> DpoStats:
    loss, chosen, rejected, margin, accuracy = (sums.cpu() / max(denom, 1)).tolist()
    return DpoStats(loss, chosen, rejected, margin, accuracy, n_tokens=n_tokens)


def dpo_forward_backward(
    model: torch.nn.Module,
    micro_batches: Sequence[PairBatch],
    device: torch.device,
    beta: float,
    n_pairs: int,
    loss_positions_only: bool = True,
    reference: torch.Tensor | None = None,
    scale: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> DpoStats:
    """Forward/backward of one optimizer step's pair micro-batches; gradients accumulate.

    Each micro-batch's summed pair loss is divided by ``n_pairs``, the whole step's pair count
    (every rank's, under data parallelism), so the accumulated gradient is that of the mean
    over the step's pairs however it was split, and the returned means add up over ranks.
    ``reference``: the :func:`reference_table` of the data set the pairs index, else the
    reference log-probabilities are computed here. ``scale``: as in
    :func:`worker.training.recipe.forward_backward`.
    """
    split = split_head(model) if loss_positions_only else None
    sums = torch.zeros(5, dtype=torch.float64)
    for mb in micro_batches:
        losses, chosen, rejected = _pair_terms(model, mb, device, split, beta, reference)
        loss = losses.sum() / max(n_pairs, 1)
        (scale(loss) if scale is not None else loss).backward()
        sums += _sums(losses, chosen, rejected).cpu()
    return _stats(sums, n_pairs, sum(mb.batch.n_tokens for mb in micro_batches))


@torch.no_grad()
def dpo_evaluate(
    model: torch.nn.Module,
    pairs: Sequence[PreferencePair],
    pad_token_id: int,
    device: torch.device,
    beta: float,
    micro_batch_size: int = 8,
    micro_batch_tokens: int = 8192,
    parallel: DataParallel | None = None,
    reference: torch.Tensor | None = None,
) -> DpoStats:
    """Mean DPO loss, rewards, margin and preference accuracy of ``model`` on ``pairs``, in
    eval mode (restored afterwards); under data parallelism each rank takes its share.
    ``reference``: the :func:`reference_table` of ``pairs`` (row ``i`` for ``pairs[i]``), else
    the reference is ``model`` with its adapter switched off, computed here."""
    parallel = parallel or DataParallel()
    mine = parallel.shard(range(len(pairs)), [len(p) for p in pairs])
    split = split_head(model)
    was_training = model.training
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64)
    try:
        micro = pair_micro_batches(pairs, mine, pad_token_id, micro_batch_size, micro_batch_tokens)
        for mb in even_pair_batches(micro, pad_token_id, parallel):
            sums += _sums(*_pair_terms(model, mb, device, split, beta, reference)).cpu()
    finally:
        model.train(was_training)
    sums = parallel.sum_(sums.to(parallel.comm_device())).cpu()
    return _stats(sums, len(pairs))
