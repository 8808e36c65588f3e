"""Memory planner: how much memory one device needs to fine-tune an adapter on a base model.

The model is described by its Hugging Face ``config.json`` (:class:`Architecture`), never by
its name. The job adds the adapter (type, rank, targets), the sequence length, the token budget
of one micro-batch, gradient checkpointing, quantization and the GPU count
(:class:`PlanRequest`). Pure functions: no torch, no database.

The peak per device (bytes) is the sum of these terms (:class:`MemoryPlan` keeps each one):

``weights``
    Every base parameter at ``weight_bytes`` (2 for bf16, 4 for fp32: a job's ``precision``).
    With ``quantization`` (the job's ``adapter.quantization``) the decoder's linear weights
    take :data:`QUANTIZED_BYTES` per parameter (``nf4``: 4 bits plus double-quantized block
    scales; ``int8``: 1 byte plus row scales); embeddings, the output head and norms stay at
    ``weight_bytes``.
``adapter``
    The trainable parameters (LoRA A and B: ``r * (in + out)`` per targeted linear layer, plus
    ``out`` for DoRA's magnitude vector), kept in fp32 by PEFT, times 16 bytes: the weight, its
    gradient and AdamW's two moments.
``activations``
    What autograd keeps for the backward pass, for the largest micro-batch (``tokens``: the
    longest example alone, or up to ``micro_batch_tokens`` padded tokens). Per token and
    decoder layer, counted from the modules' saved tensors: the two norms' inputs and outputs
    (``4h``), attention's query/key/value after RoPE and its output (``3q + 2kv`` with
    ``q = heads * head_dim``, ``kv = kv_heads * head_dim``), the MLP's gate, up, activation and
    product (``4i``), and for DoRA one output-sized tensor per targeted layer (``out``,
    measured: the engine's fast DoRA keeps one more). With gradient checkpointing only each
    layer's input (``h``) is kept, and one layer's full activations are rebuilt during the
    backward pass.
``logits``
    The output head on the loss positions: logits, their log-softmax and its gradient,
    :data:`LOGIT_COPIES` fp32 tensors of ``tokens * vocab_size``.
``headroom``
    The CUDA context (:data:`CUDA_CONTEXT_BYTES`, none on a CPU) plus :data:`FRAGMENTATION` of
    the rest for the allocator's fragmentation and the engine's temporaries.

A job runs on every GPU of one worker (``gpus``: the fewest any registered worker of its pool
has), or of ``nodes`` workers for a multi-node job (core.scheduling.gangs: ``gpus`` is then
the job's total, every host alike), in one of two ways (``sharding``, the engine's
``EngineOptions.sharding``):

``"ddp"``
    Data parallel (``worker.training.parallel``): every GPU holds the whole model, so more
    GPUs do not lower the peak per device.
``"fsdp"``
    FSDP2 per decoder layer (``worker.training.fsdp``): the decoder layers' weights and the
    adapter's states are split across the GPUs. A GPU then holds its share of them, plus the
    gathered weights of two decoder layers (the one running and the next, prefetched), plus
    the embeddings, output head and final norm whole (the root of the sharded model gathers
    them for the whole step) next to their share. Activations and logits do not shrink: each
    GPU runs its own micro-batches.

:func:`fits` prefers DDP (no per-layer all-gathers): FSDP is chosen only when the job does not
fit one GPU, with gradient checkpointing or without, but fits sharded over its GPUs. It is never
chosen for an int8 base or fp16 (``shardable=False``: the engine refuses them under FSDP).

Calibration: ``bench/planner_calibration.py`` measures the peak of live tensors on a CPU
(profiler memory timeline) for the tiny model and SmolLM2 at two sequence lengths; the figures
are in ``bench/README.md``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from core.errors import InvalidRequest

MIB = 2**20
Quantization = Literal["nf4", "int8"]
# Bytes per quantized weight (bitsandbytes, as worker.training.quantization stores them). nf4:
# 4 bits, plus one uint8 absmax per block of 64 weights, plus (double quantization) one fp32
# absmax per 256 of those blocks (measured on a 4096x4096 layer: 0.5159). int8: 1 byte plus
# one fp32 scale per output row (4 / in_features; 4096 taken as the typical width).
QUANTIZED_BYTES: dict[str, float] = {"nf4": 0.5 + 1 / 64 + 4 / (64 * 256), "int8": 1.0 + 4 / 4096}
ADAPTER_STATE_BYTES = 16  # fp32 weight + fp32 gradient + AdamW's two fp32 moments
LOGIT_COPIES = 4  # logits, log-softmax output, gradient of the logits, loss temporaries
CUDA_CONTEXT_BYTES = 1024 * MIB
FRAGMENTATION = 0.10
DEFAULT_MICRO_BATCH_SIZE = 8  # worker.training.options.EngineOptions.micro_batch_size
MAX_GPUS = 8
MAX_NODES = 64
"""The most worker hosts one job may ask for (its ``nodes``)."""
Sharding = Literal["ddp", "fsdp"]  # worker.training.options.Sharding
FSDP_GATHERED_LAYERS = 2  # the running decoder layer and the next one, prefetched

# Architectures whose decoder layers the planner counts (q/k/v/o attention, gated MLP).
SUPPORTED_MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2"}
)
# PEFT's "all-linear" on these architectures: every linear layer of the decoder, not the head.
ALL_LINEAR_TARGETS: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)


class UnsupportedArchitecture(InvalidRequest):
    """A config.json the planner cannot size (an unknown model type or missing fields)."""

    code = "unsupported_architecture"


@dataclass(frozen=True)
class Architecture:
    """The shape of a decoder-only causal LM, read from its ``config.json``."""

    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Architecture:
        """Read the fields the planner needs; raises :class:`UnsupportedArchitecture`."""
        model_type = str(config.get("model_type") or "")
        if model_type not in SUPPORTED_MODEL_TYPES:
            known = ", ".join(sorted(SUPPORTED_MODEL_TYPES))
            raise UnsupportedArchitecture(
                f"config.json has model_type {model_type!r}; the memory planner knows {known}",
                param="model",
            )
        try:
            hidden = _positive(config, "hidden_size")
            heads = _positive(config, "num_attention_heads")
            head_dim = int(config.get("head_dim") or hidden // heads)
            return cls(
                model_type=model_type,
                hidden_size=hidden,
                intermediate_size=_positive(config, "intermediate_size"),
                num_layers=_positive(config, "num_hidden_layers"),
                num_attention_heads=heads,
                num_kv_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=head_dim,
                vocab_size=_positive(config, "vocab_size"),
                # transformers' default is True for Gemma, False elsewhere.
                tie_word_embeddings=bool(
                    config.get("tie_word_embeddings", model_type.startswith("gemma"))
                ),
                max_position_embeddings=(
                    int(config["max_position_embeddings"])
                    if config.get("max_position_embeddings")
                    else None
                ),
            )
        except (TypeError, ValueError) as exc:
            raise UnsupportedArchitecture(f"config.json: {exc}", param="model") from exc

    def as_config(self) -> dict[str, Any]:
        """The Hugging Face config keys of this architecture (what a catalogue row keeps)."""
        return {
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
        }

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """``(in_features, out_features)`` of each linear layer of one decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        q = self.num_attention_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def linear_parameters(self) -> int:
        """Parameters of the decoder's linear layers (what quantization shrinks)."""
        per_layer = sum(a * b for a, b in self.linear_shapes().values())
        return per_layer * self.num_layers

    @property
    def other_parameters(self) -> int:
        """Embeddings, the output head (unless tied) and the norms."""
        embeddings = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else embeddings
        norms = (2 * self.num_layers + 1) * self.hidden_size
        return embeddings + head + norms

    @property
    def parameters(self) -> int:
        """Every parameter of the base model (biases left out: a rounding error)."""
        return self.linear_parameters + self.other_parameters


@dataclass(frozen=True)
class PlanRequest:
    """What a job asks for, as far as memory is concerned.

    ``gradient_checkpointing`` and ``sharding`` of ``None`` let :func:`place` choose.
    ``gpus``: the GPUs the job runs on (``None``: one; :func:`place` takes each pool's).
    ``weight_bytes`` is the compute dtype's size: 2 (bf16, GPUs), 4 (fp32, CPUs).
    ``shardable``: False where the engine cannot shard the job (an int8 base, fp16).
    """

    adapter_type: str = "dora"
    rank: int = 16
    target_modules: str | Sequence[str] = "all-linear"
    max_seq_length: int = 2048
    micro_batch_tokens: int = 8192
    batch_size: int = DEFAULT_MICRO_BATCH_SIZE
    gradient_checkpointing: bool | None = None
    quantization: Quantization | None = None
    gpus: int | None = None
    weight_bytes: int = 2
    cuda: bool = True
    sharding: Sharding | None = None
    shardable: bool = True
    nodes: int = 1


@dataclass(frozen=True)
class MemoryPlan:
    """The planned peak of one device, term by term (bytes)."""

    weights: int
    adapter: int
    activations: int
    logits: int
    headroom: int
    tokens: int
    trainable_parameters: int
    gradient_checkpointing: bool
    gpus: int
    quantization: str | None
    sharding: str = "ddp"
    nodes: int = 1

    @property
    def peak(self) -> int:
        return self.weights + self.adapter + self.activations + self.logits + self.headroom

    @property
    def peak_mib(self) -> int:
        return math.ceil(self.peak / MIB)

    def as_dict(self) -> dict[str, Any]:
        """The job's ``resources``: GPUs, how they share the model (``sharding``, which the
        worker passes to the engine), estimated peak MiB per device and its terms."""
        terms = ("weights", "adapter", "activations", "logits", "headroom")
        return {
            "gpus": self.gpus,
            "nodes": self.nodes,
            "sharding": self.sharding,
            "estimated_peak_mib_per_device": self.peak_mib,
            "gradient_checkpointing": self.gradient_checkpointing,
            "quantization": self.quantization,
            "tokens_per_micro_batch": self.tokens,
            "trainable_parameters": self.trainable_parameters,
            "breakdown_mib": {t: math.ceil(getattr(self, t) / MIB) for t in terms},
        }


@dataclass(frozen=True)
class Placement:
    """Where a job goes: its pool (``None``: not decided by memory) and its plan."""

    pool: str | None
    plan: MemoryPlan | None
    capacity_mib: int | None = None


def targeted(arch: Architecture, target_modules: str | Sequence[str]) -> dict[str, tuple[int, int]]:
    """The linear layers of one decoder layer an adapter attaches to.

    ``"all-linear"`` is every linear layer of the decoder (PEFT leaves the output head out); a
    list names modules by their last name component (``"q_proj"``, ``"model.layers.0.q_proj"``
    counts as ``q_proj``: an upper bound).
    """
    shapes = arch.linear_shapes()
    if isinstance(target_modules, str):
        return shapes if target_modules == "all-linear" else {}
    wanted = {name.rsplit(".", 1)[-1] for name in target_modules}
    return {name: shape for name, shape in shapes.items() if name in wanted}


def trainable_parameters(arch: Architecture, request: PlanRequest) -> int:
    """LoRA's A and B (``r * (in + out)``) per targeted layer, plus DoRA's magnitude vector."""
    per_layer = 0
    for fan_in, fan_out in targeted(arch, request.target_modules).values():
        per_layer += request.rank * (fan_in + fan_out)
        if request.adapter_type == "dora":
            per_layer += fan_out
    return per_layer * arch.num_layers


def micro_batch_tokens(request: PlanRequest) -> int:
    """Padded tokens of the largest micro-batch: the longest example alone, else up to the
    token budget (and at most the micro-batch's examples, each ``max_seq_length`` long)."""
    examples = max(1, min(request.batch_size, DEFAULT_MICRO_BATCH_SIZE))
    budget = min(request.micro_batch_tokens, examples * request.max_seq_length)
    return max(request.max_seq_length, budget)


def activation_elements_per_token(arch: Architecture, request: PlanRequest) -> int:
    """Elements autograd keeps per token for one decoder layer (no checkpointing)."""
    h, i = arch.hidden_size, arch.intermediate_size
    q = arch.num_attention_heads * arch.head_dim
    kv = arch.num_kv_heads * arch.head_dim
    elements = 4 * h + 3 * q + 2 * kv + 4 * i
    if request.adapter_type == "dora":
        elements += sum(out for _, out in targeted(arch, request.target_modules).values())
    return elements


def plan(arch: Architecture, request: PlanRequest) -> MemoryPlan:
    """The peak memory of one device for ``request`` (every choice already made)."""
    checkpointing = bool(request.gradient_checkpointing)
    gpus = request.gpus or 1
    sharding = request.sharding or "ddp"
    dtype = request.weight_bytes
    linear_bytes = QUANTIZED_BYTES[request.quantization] if request.quantization else dtype
    layer_weights = arch.linear_parameters / arch.num_layers * linear_bytes
    layer_weights += 2 * arch.hidden_size * dtype  # the layer's two norms
    decoder = layer_weights * arch.num_layers
    outside = (arch.other_parameters - 2 * arch.num_layers * arch.hidden_size) * dtype
    trainable = trainable_parameters(arch, request)
    adapter: float = trainable * ADAPTER_STATE_BYTES
    if sharding == "fsdp" and gpus > 1:
        gathered = FSDP_GATHERED_LAYERS * layer_weights + outside
        weights = (decoder + outside) / gpus + gathered
        adapter /= gpus
    else:
        weights = decoder + outside
    tokens = micro_batch_tokens(request)
    layer = activation_elements_per_token(arch, request) * tokens * dtype
    if checkpointing:
        activations = arch.num_layers * arch.hidden_size * tokens * dtype + layer
    else:
        activations = arch.num_layers * layer
    logits = LOGIT_COPIES * tokens * arch.vocab_size * 4
    body = weights + adapter + activations + logits
    headroom = FRAGMENTATION * body + (CUDA_CONTEXT_BYTES if request.cuda else 0)
    return MemoryPlan(
        weights=math.ceil(weights),
        adapter=math.ceil(adapter),
        activations=math.ceil(activations),
        logits=math.ceil(logits),
        headroom=math.ceil(headroom),
        tokens=tokens,
        trainable_parameters=trainable,
        gradient_checkpointing=checkpointing,
        gpus=gpus,
        quantization=request.quantization,
        sharding=sharding,
        nodes=request.nodes,
    )


def fits(arch: Architecture, request: PlanRequest, capacity_mib: int) -> MemoryPlan | None:
    """The cheapest plan of ``request`` that fits ``capacity_mib`` per device, or None.

    Choices left open are tried cheapest first: DDP before FSDP (which all-gathers every
    layer's weights in every forward and backward pass, and only helps on more than one GPU),
    then no checkpointing before checkpointing (it costs ~30% more compute).
    """
    checkpointing = (
        [False, True]
        if request.gradient_checkpointing is None
        else [request.gradient_checkpointing]
    )
    for sharding in _shardings(request):
        for ckpt in checkpointing:
            candidate = plan(arch, replace(request, gradient_checkpointing=ckpt, sharding=sharding))
            if candidate.peak_mib <= capacity_mib:
                return candidate
    return None


def _shardings(request: PlanRequest) -> list[Sharding]:
    if request.sharding is not None:
        return [request.sharding]
    if (request.gpus or 1) > 1 and request.shardable:
        return ["ddp", "fsdp"]
    return ["ddp"]


def place(
    arch: Architecture,
    request: PlanRequest,
    capacities: Mapping[str, int | None],
    gpus: Mapping[str, int] | None = None,
) -> Placement:
    """The smallest pool whose GPUs fit the job, with its plan.

    ``capacities`` maps each known pool to the memory of one of its GPUs in MiB (``None``:
    unknown, e.g. CPU workers); ``gpus`` each pool to the GPUs a job gets there (absent:
    ``request.gpus``), over which a job too big for one GPU is sharded (FSDP). When no pool
    with a known size fits, the job goes nowhere by memory (``pool=None``) if some pool's size
    is unknown or none is known at all; otherwise it is refused with :class:`InvalidRequest`
    naming what would fit.
    """
    sized = sorted((mib, pool) for pool, mib in capacities.items() if mib is not None)
    for mib, pool in sized:
        found = fits(arch, _on(request, pool, gpus), mib)
        if found is not None:
            return Placement(pool=pool, plan=found, capacity_mib=mib)
    if not sized or any(mib is None for mib in capacities.values()):
        return Placement(pool=None, plan=plan(arch, _settled(request)))
    largest_mib, largest = sized[-1]
    request = _on(request, largest, gpus)
    fallback = _cheapest(arch, request)
    raise InvalidRequest(
        f"This job needs about {fallback.peak_mib:,} MiB per GPU "
        f"({_terms(fallback)}); the largest GPUs here are {largest_mib:,} MiB (pool "
        f"'{largest}'). {suggest(arch, request, largest_mib)}",
        param="max_seq_length",
        code="job_too_large",
    )


def suggest(arch: Architecture, request: PlanRequest, capacity_mib: int) -> str:
    """What would make the job fit ``capacity_mib``: one sentence, each option tested."""
    options: list[str] = []
    length = request.max_seq_length
    while length > 256:
        length //= 2
        shorter = replace(request, max_seq_length=length, micro_batch_tokens=length)
        if fits(arch, shorter, capacity_mib):
            options.append(f"max_seq_length {length} (with training.micro_batch_tokens {length})")
            break
    if request.quantization is None and fits(
        arch, replace(request, quantization="nf4"), capacity_mib
    ):
        options.append('adapter.quantization "nf4"')
    if request.shardable and request.sharding != "ddp":
        for gpus in _powers_of_two(MAX_GPUS)[1:]:
            if gpus > (request.gpus or 1) and fits(
                arch, replace(request, gpus=gpus, sharding="fsdp"), capacity_mib
            ):
                options.append(f"{gpus} such GPUs per worker (sharded with FSDP)")
                break
        per_host = max(1, (request.gpus or 1) // request.nodes)
        for nodes in _powers_of_two(MAX_NODES)[1:]:
            if nodes > request.nodes and fits(
                arch,
                replace(request, nodes=nodes, gpus=per_host * nodes, sharding="fsdp"),
                capacity_mib,
            ):
                options.append(f"nodes {nodes} ({nodes} workers of the pool, sharded with FSDP)")
                break
    if not options:
        return (
            "Nothing the job can change makes it fit: add a pool with larger GPUs "
            "(DORADO_POOLS) or use a smaller model."
        )
    return "It would fit with " + _either(options) + "."


def _on(request: PlanRequest, pool: str, gpus: Mapping[str, int] | None) -> PlanRequest:
    """``request`` with the GPUs it gets in ``pool``: its workers' count (where known) on
    each of its ``nodes`` hosts."""
    count = (gpus or {}).get(pool) or request.gpus
    if request.nodes > 1:
        return replace(request, gpus=(count or 1) * request.nodes)
    return replace(request, gpus=count) if count else request


def _settled(request: PlanRequest) -> PlanRequest:
    """``request`` with its open choices made as the engine makes them without a plan."""
    return replace(
        request,
        gradient_checkpointing=bool(request.gradient_checkpointing),
        gpus=(request.gpus or 1) * request.nodes,
    )


def _cheapest(arch: Architecture, request: PlanRequest) -> MemoryPlan:
    """The plan with the open choices made for the least memory (checkpointing on, sharded
    where it can be)."""
    checkpointing = request.gradient_checkpointing is not False
    request = replace(request, gradient_checkpointing=checkpointing, gpus=request.gpus or 1)
    return min(
        (plan(arch, replace(request, sharding=sharding)) for sharding in _shardings(request)),
        key=lambda found: found.peak,
    )


def _terms(found: MemoryPlan) -> str:
    parts = asdict(found)
    return ", ".join(
        f"{name} {math.ceil(parts[name] / MIB):,}"
        for name in ("weights", "adapter", "activations", "logits", "headroom")
    )


def _either(options: Iterable[str]) -> str:
    items = list(options)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _powers_of_two(limit: int) -> list[int]:
    return [2**k for k in range(limit.bit_length()) if 2**k <= limit]


def _positive(config: Mapping[str, Any], key: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return value
