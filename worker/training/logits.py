"""Next-token logits at the positions that carry loss, and only there.

A causal LM's output head turns every position's hidden state into a vocabulary-sized row of
logits (49,152 floats per token for SmolLM2), and the loss then reads a handful of them. Prompt
tokens, padding and the last position carry no loss, yet computing, softmaxing and
back-propagating their rows is a large share of a small model's step. For decoder families
whose head is a plain linear map of the decoder's last hidden state, :func:`target_logits`
runs the decoder, picks the hidden states of the loss positions and applies the head to those
alone. The logits it returns are exactly the rows the full forward would have produced there
(the head works position by position), so loss and gradients are unchanged. Other families
(soft-capped, scaled or otherwise post-processed logits) take the full forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worker.training.data import IGNORE_INDEX, Batch

PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen3", "phi3"})
"""``config.model_type`` values whose logits are ``lm_head(last_hidden_state)``, nothing more."""


@dataclass(frozen=True)
class HeadSplit:
    """A causal LM seen as decoder (input ids -> hidden states) and head (hidden -> logits)."""

    decoder: torch.nn.Module
    head: torch.nn.Module


def split_head(model: torch.nn.Module) -> HeadSplit | None:
    """The decoder and head of ``model`` (a transformers causal LM, PEFT-wrapped or not), or
    None when its logits are more than a linear map of the decoder's output, or when the
    model is sharded with FSDP (its root's forward gathers the embeddings and head, so the
    parts cannot run alone)."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        return None
    get_base_model = getattr(model, "get_base_model", None)  # a PEFT wrapper
    base = get_base_model() if get_base_model is not None else model
    config = getattr(base, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD_MODEL_TYPES:
        return None
    get_decoder = getattr(base, "get_decoder", None)
    get_head = getattr(base, "get_output_embeddings", None)
    if get_decoder is None or get_head is None:
        return None
    decoder, head = get_decoder(), get_head()
    if decoder is None or head is None or decoder is base:
        return None
    return HeadSplit(decoder, head)


def target_logits(
    model: torch.nn.Module, batch: Batch, device: torch.device, split: HeadSplit | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) of the loss positions of ``batch``: one float32 row per target token.

    Position ``t``'s logits predict token ``t + 1``; the targets are the labels shifted by one.
    """
    targets = batch.labels[:, 1:].to(device)
    mask = targets != IGNORE_INDEX
    inputs = {
        "input_ids": batch.input_ids.to(device),
        "attention_mask": batch.attention_mask.to(device),
        "use_cache": False,
    }
    if split is None:
        logits = model(**inputs).logits[:, :-1][mask]
    else:
        hidden = split.decoder(**inputs).last_hidden_state
        logits = split.head(hidden[:, :-1][mask])
    # fp32 logits: a bf16 softmax over a large vocabulary loses the precision the loss needs.
    return logits.float(), targets[mask]
