"""Generation: base models loaded once, adapters attached on demand and kept in a bounded LRU.

One generation runs at a time: on a CPU one already uses every core, and the active adapter
is model-wide state (``set_adapter``) that two requests must not race on. So that nobody
waits behind another organization's long answers, requests take turns on the model
(``worker.inference.turns``: round-robin by organization) and generate at most
``slice_tokens`` tokens per turn, keeping their KV cache, sampling state and stop watcher
between turns; each turn selects the request's own adapter again.

An adapter trained on a quantized base (its directory holds ``base_quantization.json``, see
``worker.training.quantization``) is served on the base loaded the same way (NF4 or int8, same
compute dtype), a base of its own next to the full-precision one: the adapter learned to correct
the quantized weights, so this reproduces what it was trained and validated on, and keeps the
memory saving. (The merged export de-quantizes and merges instead, for engines that cannot load
a quantized base.)
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.settings import Settings
from core.storage.objects import ObjectStore
from worker.inference.adapters import AdapterRef, ensure_adapter
from worker.inference.turns import RoundRobinTurns

log = logging.getLogger(__name__)

# Tokens one request generates per turn before the next waiting request's turn: a short
# request waits for at most one slice of each request ahead of it in the round.
SLICE_TOKENS = 16
# Two bases fit the built-in catalogue; a larger fleet runs one service per base model.
MAX_BASE_MODELS = 2


class PromptTooLong(ValueError):
    """The prompt (after the chat template) leaves no room in the model's context."""


@dataclass(frozen=True)
class GenerationParams:
    """One request's sampling parameters, already validated by the API."""

    messages: list[dict[str, str]]
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Completion:
    """The outcome of one generation (the text is already cut at a stop sequence)."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class _Base:
    name: str
    model: Any  # a transformers model, or the PeftModel wrapping it once an adapter is attached
    tokenizer: Any
    context_length: int
    adapters: set[str] = field(default_factory=set)

    @property
    def has_peft(self) -> bool:
        return hasattr(self.model, "peft_config")


class InferenceEngine:
    """Chat completions for base models and ``base + adapter``; thread-safe."""

    def __init__(
        self,
        settings: Settings,
        store: ObjectStore,
        *,
        adapter_cache_size: int,
        adapter_dir: Path,
        model_loader: Callable[[str], Path] | None = None,
        slice_tokens: int = SLICE_TOKENS,
    ):
        from worker.model_store import ensure_model

        self.settings = settings
        self.store = store
        self.adapter_cache_size = max(1, adapter_cache_size)
        self.adapter_dir = adapter_dir
        self._load_model_dir = model_loader or (lambda name: ensure_model(settings, store, name))
        self.slice_tokens = max(1, slice_tokens)
        self._turns = RoundRobinTurns()
        self._bases: OrderedDict[str, _Base] = OrderedDict()
        # adapter name -> base name, least recently used first (across every base).
        self._adapters: OrderedDict[str, str] = OrderedDict()
        self._snapshot: tuple[str, ...] = ()

    # --- loading -------------------------------------------------------------------------

    def model_dir(self, name: str) -> Path:
        """The local Hugging Face directory of base model ``name`` (built or downloaded once)."""
        return self._load_model_dir(name)

    def loaded_adapters(self) -> list[str]:
        """Adapter names attached now, least recently used first.

        Lock-free (a snapshot): a health check must answer while a generation runs.
        """
        return list(self._snapshot)

    def _base(self, name: str, quantization: dict[str, Any] | None = None) -> _Base:
        """Base model ``name``, quantized as ``quantization`` records (a base of its own)."""
        key = name if quantization is None else f"{name}@{quantization['method']}"
        base = self._bases.get(key)
        if base is not None:
            self._bases.move_to_end(key)
            return base
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_dir = self.model_dir(name)
        log.info("loading base model %s from %s", key, model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if quantization is None:
            model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        else:
            import torch

            from worker.training.quantization import compute_dtype_of, load_quantized

            # On the CPU, as the full-precision bases are.
            model = load_quantized(
                model_dir,
                quantization["method"],
                compute_dtype_of(quantization),
                torch.device("cpu"),
            ).eval()
        context = int(getattr(model.config, "max_position_embeddings", 0) or 4096)
        base = _Base(name=key, model=model, tokenizer=tokenizer, context_length=context)
        self._bases[key] = base
        while len(self._bases) > MAX_BASE_MODELS:
            old_name, old = self._bases.popitem(last=False)
            for adapter in old.adapters:
                self._adapters.pop(adapter, None)
            log.info("unloaded base model %s (%d adapters)", old_name, len(old.adapters))
        return base

    def _attach(self, base: _Base, ref: AdapterRef) -> None:
        """Make ``ref`` the active adapter of ``base``, loading it (and evicting) if needed."""
        if ref.name in base.adapters:
            self._adapters.move_to_end(ref.name)
            base.model.set_adapter(ref.name)
            return
        path = ensure_adapter(self.store, self.adapter_dir, ref)
        if not base.has_peft:
            from peft import PeftModel

            base.model = PeftModel.from_pretrained(
                base.model, str(path), adapter_name=ref.name
            ).eval()
        else:
            base.model.load_adapter(str(path), adapter_name=ref.name)
        base.model.set_adapter(ref.name)
        base.adapters.add(ref.name)
        self._adapters[ref.name] = base.name
        log.info("adapter %s attached to %s (%d loaded)", ref.name, base.name, len(self._adapters))
        self._evict()

    def _evict(self) -> None:
        # The newest adapter is never evicted, so a base keeps at least one adapter and PEFT
        # never has to delete its active one.
        while len(self._adapters) > self.adapter_cache_size:
            name, base_name = self._adapters.popitem(last=False)
            base = self._bases[base_name]
            base.model.delete_adapter(name)
            base.adapters.discard(name)
            log.info("adapter %s evicted from %s", name, base_name)

    # --- generation ----------------------------------------------------------------------

    def complete(
        self,
        base_name: str,
        adapter: AdapterRef | None,
        params: GenerationParams,
        *,
        organization: str = "",
    ) -> Completion:
        """Generate the whole answer, taking turns with other organizations' requests."""
        return self._generate(base_name, adapter, params, organization, None, threading.Event())

    def stream(
        self,
        base_name: str,
        adapter: AdapterRef | None,
        params: GenerationParams,
        *,
        organization: str = "",
    ) -> Iterator[str | Completion]:
        """Yield text pieces as they are generated, then the final Completion.

        Closing the iterator early (the client went away) stops the generation.
        """
        pieces: queue.Queue[Any] = queue.Queue()
        cancel = threading.Event()
        done = object()

        def run() -> None:
            try:
                pieces.put(
                    self._generate(base_name, adapter, params, organization, pieces.put, cancel)
                )
            except BaseException as exc:  # handed to the consumer, which re-raises it
                pieces.put(exc)
            finally:
                pieces.put(done)

        thread = threading.Thread(target=run, name="generate", daemon=True)
        thread.start()
        try:
            while (item := pieces.get()) is not done:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()

    def _generate(
        self,
        base_name: str,
        adapter: AdapterRef | None,
        params: GenerationParams,
        organization: str,
        on_text: Callable[[str], None] | None,
        cancel: threading.Event,
    ) -> Completion:
        from worker.training.quantization import read_quantization

        run: _Run | None = None
        quantization: dict[str, Any] | None = None
        while run is None or not run.finished:
            with self._turns.turn(organization):
                if run is None and adapter is not None:
                    # How the adapter's base was quantized picks the base it is served on.
                    path = ensure_adapter(self.store, self.adapter_dir, adapter)
                    quantization = read_quantization(path)
                # Loaded again each turn: meanwhile another request may have switched the
                # adapter, evicted it, or unloaded the base (the KV cache stays valid).
                base = self._base(base_name, quantization)
                if adapter is not None:
                    self._attach(base, adapter)
                self._snapshot = tuple(self._adapters)
                if run is None:
                    run = self._start(base, params, on_text, cancel)
                self._slice(base, adapter, run)
        return run.completion()

    def _start(
        self,
        base: _Base,
        params: GenerationParams,
        on_text: Callable[[str], None] | None,
        cancel: threading.Event,
    ) -> _Run:
        import torch

        tokenizer = base.tokenizer
        enc = tokenizer.apply_chat_template(
            params.messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        prompt_tokens = int(enc["input_ids"].shape[1])
        room = base.context_length - prompt_tokens
        if room < 1:
            raise PromptTooLong(
                f"The prompt is {prompt_tokens} tokens; this model's context is "
                f"{base.context_length} tokens"
            )
        cap = self.settings.chat_max_tokens
        max_new = min(params.max_tokens or cap, cap, room)
        stopper = _StopWatcher(tokenizer, prompt_tokens, params.stop, cancel, on_text)
        kwargs: dict[str, Any] = {
            "pad_token_id": tokenizer.pad_token_id or tokenizer.eos_token_id,
            "stopping_criteria": _criteria(stopper),
            "return_dict_in_generate": True,
        }
        if params.temperature > 0:
            kwargs.update(
                do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0
            )
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        # The model runs on the CPU, so its sampling draws from the CPU generator: a seeded
        # request carries that generator's state from one turn to its next.
        seed = params.seed
        rng = None if seed is None else torch.Generator().manual_seed(seed).get_state()
        return _Run(
            ids=enc["input_ids"],
            prompt_tokens=prompt_tokens,
            max_new=max_new,
            eos=_eos_ids(base),
            stopper=stopper,
            cancel=cancel,
            kwargs=kwargs,
            rng_state=rng,
        )

    def _slice(self, base: _Base, adapter: AdapterRef | None, run: _Run) -> None:
        """Generate up to ``slice_tokens`` more tokens of ``run``."""
        import torch

        wanted = min(self.slice_tokens, run.max_new - run.generated)
        if run.rng_state is not None:
            torch.set_rng_state(run.rng_state)
        cache_arg = _cache_argument()
        with torch.inference_mode(), _adapter_scope(base, adapter):
            out = base.model.generate(
                input_ids=run.ids,
                attention_mask=torch.ones_like(run.ids),
                max_new_tokens=wanted,
                **{cache_arg: run.cache},
                **run.kwargs,
            )
        if run.rng_state is not None:
            run.rng_state = torch.get_rng_state()
        before = run.generated
        run.ids, run.cache = out.sequences, getattr(out, cache_arg)
        last = int(run.ids[0, -1])
        run.finished = (
            run.generated - before < wanted  # generate stopped on its own: EOS or a stop
            or run.generated >= run.max_new
            or last in run.eos
            or run.stopper.stopped_by_string
            or run.cancel.is_set()
        )


@dataclass
class _Run:
    """One request's generation between its turns."""

    ids: Any  # prompt and generated tokens so far, shape (1, n)
    prompt_tokens: int
    max_new: int
    eos: set[int]
    stopper: _StopWatcher
    cancel: threading.Event
    kwargs: dict[str, Any]
    rng_state: Any = None  # a seeded request's CPU generator state
    cache: Any = None  # the KV cache (a transformers Cache), created by the first turn
    finished: bool = False

    @property
    def generated(self) -> int:
        return int(self.ids.shape[1]) - self.prompt_tokens

    def completion(self) -> Completion:
        new_ids = self.ids[0, self.prompt_tokens :].tolist()
        hit_eos = bool(new_ids) and new_ids[-1] in self.eos
        text = self.stopper.finish(new_ids)
        if self.stopper.stopped_by_string or hit_eos:
            reason = "stop"
        elif len(new_ids) >= self.max_new:
            reason = "length"
        else:
            reason = "stop"
        return Completion(
            text=text,
            finish_reason=reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=len(new_ids),
        )


@functools.cache
def _cache_argument() -> str:
    """What ``generate`` calls the KV cache: ``cache`` since transformers 5 (where the old
    name still works but warns), ``past_key_values`` before."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return "cache" if major >= 5 else "past_key_values"


def _adapter_scope(base: _Base, adapter: AdapterRef | None):
    """The base model alone: adapters switched off while a base request generates."""
    import contextlib

    if adapter is None and base.has_peft:
        return base.model.disable_adapter()
    return contextlib.nullcontext()


def _eos_ids(base: _Base) -> set[int]:
    ids = base.model.generation_config.eos_token_id
    ids = ids if isinstance(ids, list) else [ids]
    return {int(i) for i in ids if i is not None} | (
        {base.tokenizer.eos_token_id} if base.tokenizer.eos_token_id is not None else set()
    )


def _criteria(stopper: _StopWatcher) -> Any:
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Check(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs) -> bool:
            return stopper.step(input_ids[0])

    return StoppingCriteriaList([_Check()])


class _StopWatcher:
    """Incremental decoding with stop sequences, called once per generated token.

    Text goes out only once it cannot be the beginning of a stop sequence, so a stream never
    shows a stop sequence that the final answer does not contain.
    """

    def __init__(
        self,
        tokenizer: Any,
        prompt_tokens: int,
        stop: tuple[str, ...],
        cancel: threading.Event,
        on_text: Callable[[str], None] | None,
    ):
        self.tokenizer = tokenizer
        self.prompt_tokens = prompt_tokens
        self.stop = tuple(s for s in stop if s)
        self.cancel = cancel
        self.on_text = on_text
        self.emitted = 0
        self.stopped_by_string = False
        self._cut: int | None = None

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _stop_at(self, text: str) -> int | None:
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def step(self, sequence: Any) -> bool:
        if self.cancel.is_set():
            return True
        if not self.stop and self.on_text is None:
            return False
        text = self._decode(sequence[self.prompt_tokens :].tolist())
        cut = self._stop_at(text)
        if cut is not None:
            self._cut = cut
            self.stopped_by_string = True
            self._emit(text[:cut])
            return True
        # A trailing U+FFFD is half of a multi-byte character: wait for the rest.
        safe = len(text.rstrip("\ufffd"))
        held = max(
            (
                k
                for s in self.stop
                for k in range(1, min(len(s) - 1, safe) + 1)
                if text[:safe].endswith(s[:k])
            ),
            default=0,
        )
        self._emit(text[: safe - held])
        return False

    def _emit(self, text: str) -> None:
        if self.on_text is not None and len(text) > self.emitted:
            self.on_text(text[self.emitted :])
            self.emitted = len(text)

    def finish(self, new_ids: list[int]) -> str:
        """The final text (cut at a stop sequence); flushes what the stream held back."""
        text = self._decode(new_ids)
        cut = self._cut if self._cut is not None else self._stop_at(text)
        if cut is not None:
            self.stopped_by_string = True
            text = text[:cut]
        self._emit(text)
        return text
