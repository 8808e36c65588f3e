"""GPU check: the engine's training step on random Llama models at real shapes.

One command on a CUDA machine (about 5-8 minutes on one H100/H200-class GPU)::

    .venv/bin/python bench/gpu_check.py

For each size (Llama 3.2 1B and Llama 3.1 8B configurations, random weights: speed and memory
do not depend on the values) and each case it builds the model straight on the GPU, trains a
few optimizer steps with the engine's own pieces (the case's ``TrainSpec`` and
``EngineOptions``, from which ``select_device`` and ``resolve_dtype`` pick the device and
precision; ``adapted`` and ``enable_fast_forwards``, ``build_optimizer``,
``forward_backward``, FSDP2 sharding from ``worker.training.fsdp``) and prints one row:

* ``lora`` and ``dora``: bf16 base, one GPU;
* ``qlora``: the decoder's linear layers in bitsandbytes NF4 (double quantization, bf16
  compute, stored in bf16-sized words as ``worker.training.quantization`` stores them) under
  a LoRA adapter; skipped with a line saying why without bitsandbytes;
* ``fsdp``: DoRA with the model sharded per decoder layer over every visible GPU (NCCL);
  skipped with one GPU.

Columns: tokens/s over the measured steps (warm-up steps excluded), model FLOPs utilisation,
the peak of allocated GPU memory (the largest rank's under FSDP) and the memory planner's
estimate per device (``core.jobs.planner``, asked for the same sharding). The FLOPs
counted per token are those adapter training performs: the frozen base runs forward and
back-propagates into its inputs but computes no weight gradient, so ``4 * N`` for the ``N``
weights of the decoder's matrices and the head, plus attention's ``8 * layers * seq * q_dim``
(forward and input gradient of QK^T and AV, causal half); the peak is the GPU's dense bf16
figure (``--peak-tflops`` overrides it; unknown GPUs print ``n/a``).

Every case runs in its own process (an out-of-memory or a crash costs that row only, and
memory is measured from a clean start) under ``--case-timeout`` seconds.

``--dry-run`` runs the same code on the CPU with a tiny configuration in under a minute: two
gloo processes stand in for the GPUs of the FSDP case, NF4 uses bitsandbytes' CPU kernels
(fp32 compute) and the peak is the process's RSS. It is what the tests run
(``tests/worker/test_fsdp_bench.py``); the real run needs a GPU.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import resource
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker.model_builders import TINY_LLAMA  # noqa: E402
from worker.training.options import EngineOptions  # noqa: E402
from worker.training.spec import AdapterSpec, TrainSpec  # noqa: E402

SIZES: dict[str, dict[str, Any]] = {
    # meta-llama/Llama-3.2-1B
    "1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        tie_word_embeddings=True,
        max_position_embeddings=131072,
        rope_theta=500000.0,
    ),
    # meta-llama/Llama-3.1-8B
    "8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=128256,
        tie_word_embeddings=False,
        max_position_embeddings=131072,
        rope_theta=500000.0,
    ),
    # --dry-run: the tests' tiny Llama, with a small vocabulary
    "tiny": {**TINY_LLAMA, "head_dim": 16, "vocab_size": 1024},
}
CASES = ("lora", "dora", "qlora", "fsdp")
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}
"""Dense bf16 peak by GPU name (SXM figures; a PCIe H100 is lower: pass --peak-tflops)."""


@dataclass(frozen=True)
class Case:
    """One row of the table: what to train, and how."""

    size: str
    case: str
    seq_len: int
    batch: int
    steps: int
    warmup: int
    rank: int
    gradient_checkpointing: bool
    dry_run: bool

    @property
    def quantization(self) -> Literal["nf4"] | None:
        """The base's quantization, which this script applies itself (``_quantize_nf4``): the
        adapter spec names none, so PEFT's k-bit preparation does not run."""
        return "nf4" if self.case == "qlora" else None

    def train_spec(self, rank: int = 0) -> TrainSpec:
        """The run as the engine would be asked for it on rank ``rank``: the adapter, and the
        engine's options (precision, sharding, device) for this case."""
        return TrainSpec(
            adapter=AdapterSpec(
                type="lora" if self.case in ("lora", "qlora") else "dora",
                r=self.rank,
                alpha=2 * self.rank,
            ),
            n_epochs=1,
            batch_size=self.batch,
            learning_rate=1e-4,
            seed=0,
            gradient_checkpointing=self.gradient_checkpointing,
            options=EngineOptions(
                precision="fp32" if self.dry_run else "bf16",
                sharding="fsdp" if self.case == "fsdp" else "ddp",
                device="cpu" if self.dry_run else f"cuda:{rank}",
            ),
        )


# the measurement (runs in a child process, one per case; FSDP's ranks are its children)


def llama_config(size: str) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(**SIZES[size])


@dataclass(frozen=True)
class Setup:
    """One rank's run of a case, ready to step."""

    device: Any
    model: Any
    optimizer: Any
    parallel: Any


def setup(case: Case, rank: int = 0, world_size: int = 1) -> Setup:
    """The case on this rank: device and dtype as the engine picks them from the case's
    options, the random model (:func:`random_model`) and the engine's optimizer."""
    import torch

    from worker.training.parallel import DataParallel
    from worker.training.precision import resolve_dtype
    from worker.training.recipe import build_optimizer, select_device

    spec = case.train_spec(rank)
    parallel = DataParallel(rank, world_size, spec.options.sharding == "fsdp")
    device, _ = select_device(spec.options.device, parallel)
    dtype = resolve_dtype(spec.options.precision, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(rank)
    model = random_model(case, spec, device, dtype, parallel.sharded)
    return Setup(device, model, build_optimizer(model, spec), parallel)


def random_model(case: Case, spec: TrainSpec, device: Any, dtype: Any, sharded: bool) -> Any:
    """The case's PEFT model with random weights on ``device`` (sharded with FSDP2 if asked),
    built on the meta device first so no full copy is ever made elsewhere."""
    import torch
    from transformers import AutoModelForCausalLM

    from worker.training.recipe import adapted, enable_fast_forwards

    config = llama_config(case.size)
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if case.quantization:
        base.to_empty(device=device)
        _randomise(base)
        _quantize_nf4(base, dtype)
    model = enable_fast_forwards(adapted(base, spec), spec)
    if sharded:
        from worker.training.fsdp import shard

        shard(model, device)
    if not case.quantization:
        model.to_empty(device=device)
        _randomise(model)
    _reset_rotary(model, config, device)
    model.train()
    return model


def _randomise(model: Any) -> None:
    import torch

    with torch.no_grad():
        for param in model.parameters():
            local = param.to_local() if hasattr(param, "to_local") else param
            if not local.dtype.is_floating_point:
                continue
            if local.ndim >= 2:
                local.normal_(0.0, 0.02)
            else:
                local.fill_(1.0)  # norm weights and DoRA magnitudes


def _reset_rotary(model: Any, config: Any, device: Any) -> None:
    """Recompute the rotary embedding's non-persistent buffers (garbage after ``to_empty``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.get_decoder()
    decoder.rotary_emb = type(decoder.rotary_emb)(config=config).to(device)


def _quantize_nf4(model: Any, compute_dtype: Any) -> None:
    """Replace every decoder linear layer by a bitsandbytes NF4 layer holding its weight, laid
    out as ``worker.training.quantization.bnb_config`` has transformers lay it out."""
    import bitsandbytes as bnb
    import torch

    decoder = model.get_decoder()
    for layer in decoder.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if type(child) is not torch.nn.Linear:
                    continue
                quantized = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    compute_dtype=compute_dtype,
                    compress_statistics=True,  # double quantization
                    quant_type="nf4",
                    quant_storage=torch.bfloat16,
                    device="cpu",
                )
                weight = child.weight.data.to("cpu")
                quantized.weight = bnb.nn.Params4bit(
                    weight,
                    requires_grad=False,
                    compress_statistics=True,
                    quant_type="nf4",
                    quant_storage=torch.bfloat16,
                )
                setattr(parent, name, quantized.to(child.weight.device))
                del child
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def random_batch(case: Case, seed: int) -> Any:
    import torch

    from worker.training.data import Batch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, SIZES[case.size]["vocab_size"], (case.batch, case.seq_len), generator=g)
    n = ids.numel()
    return Batch(ids, torch.ones_like(ids), ids.clone(), n_tokens=n, n_loss_tokens=n)


def measure(case: Case, rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """Train ``case`` for its steps on this process's device; the row's figures."""
    import torch

    from worker.training.recipe import forward_backward

    run = setup(case, rank, world_size)
    model, optimizer, parallel, device = run.model, run.optimizer, run.parallel, run.device
    trainable = [p for p in model.parameters() if p.requires_grad]
    tokens_per_step = case.batch * case.seq_len  # per rank
    began = 0.0
    for step in range(case.warmup + case.steps):
        if step == case.warmup:
            _sync(device)
            began = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        batch = random_batch(case, seed=step * world_size + rank)
        micro = parallel.even_out([batch], pad_token_id=0)
        forward_backward(model, micro, device, tokens_per_step * world_size)
        parallel.sum_gradients(trainable)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
    _sync(device)
    seconds = time.perf_counter() - began
    if case.dry_run:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    else:
        peak = torch.cuda.max_memory_allocated(device)
    return {
        "tokens_per_second": tokens_per_step * world_size * case.steps / seconds,
        "peak_mib": peak / 2**20,
        "seconds_per_step": seconds / case.steps,
        "gpu": "cpu" if case.dry_run else torch.cuda.get_device_name(device),
    }


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rank_main(rank: int, case: Case, world_size: int, port: int, out: str) -> None:
    import torch.distributed as dist

    backend = "gloo" if case.dry_run else "nccl"
    if case.dry_run:
        import torch

        torch.set_num_threads(1)
    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=300),
    )
    try:
        row = measure(case, rank, world_size)
        Path(f"{out}.{rank}").write_text(json.dumps(row), encoding="utf-8")
    finally:
        dist.destroy_process_group()


def run_case(case: Case) -> dict[str, Any]:
    """The child's work: one row, as a dict (``skipped`` says why a case did not run)."""
    import torch

    if case.case == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        return {"skipped": "NF4 needs bitsandbytes, which is not installed"}
    if case.case != "fsdp":
        return measure(case)
    world_size = 2 if case.dry_run else torch.cuda.device_count()
    if world_size < 2:
        return {"skipped": f"FSDP needs 2 or more GPUs ({world_size} visible)"}
    import tempfile

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "row")
        mp.spawn(_rank_main, args=(case, world_size, _free_port(), out), nprocs=world_size)
        rows = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(world_size)]
    return {
        **rows[0],
        "peak_mib": max(r["peak_mib"] for r in rows),
        "gpus": world_size,
    }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# figures computed without torch


def flops_per_token(size: str, seq_len: int) -> float:
    """Adapter training's FLOPs per token: see the module docstring."""
    c = SIZES[size]
    h, i, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    q = c["num_attention_heads"] * c["head_dim"]
    kv = c["num_key_value_heads"] * c["head_dim"]
    matrices = layers * (h * q + 2 * h * kv + q * h + 3 * h * i) + h * c["vocab_size"]
    attention = 8 * layers * seq_len * q / 2
    return 4 * matrices + attention


def peak_tflops(gpu: str, override: float | None) -> float | None:
    if override:
        return override
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), None)


def planner_estimate_mib(case: Case, gpus: int) -> str:
    """The memory planner's peak per device for the case, sharded as the case runs."""
    from core.jobs import planner

    spec = case.train_spec()
    try:
        arch = planner.Architecture.from_config({"model_type": "llama", **SIZES[case.size]})
        request = planner.PlanRequest(
            adapter_type=spec.adapter.type,
            rank=spec.adapter.r,
            max_seq_length=case.seq_len,
            micro_batch_tokens=case.batch * case.seq_len,
            batch_size=spec.batch_size,
            gradient_checkpointing=spec.gradient_checkpointing,
            quantization=case.quantization,
            gpus=gpus,
            weight_bytes=4 if spec.options.precision == "fp32" else 2,
            cuda=not case.dry_run,
            sharding=spec.options.sharding,
        )
        return f"{planner.plan(arch, request).peak_mib:,}"
    except ValueError as exc:  # a size the planner cannot read: say so, go on
        return f"n/a ({type(exc).__name__}: {exc})"


# the parent: one child per case, then the table


def child(case: Case, timeout: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, __file__, "--child", json.dumps(asdict(case))]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("ROW "):
            return json.loads(line[4:])
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {done.returncode}: {' | '.join(tail)}"}


def format_row(case: Case, row: dict[str, Any], override: float | None) -> str:
    label = f"{case.size:>4} {case.case:<6}"
    if "skipped" in row:
        return f"{label} skipped: {row['skipped']}"
    if "error" in row:
        return f"{label} FAILED: {row['error']}"
    gpus = int(row.get("gpus", 1))
    tps = row["tokens_per_second"]
    peak = peak_tflops(row["gpu"], override)
    mfu = "n/a"
    if peak:
        mfu = f"{tps / gpus * flops_per_token(case.size, case.seq_len) / (peak * 1e12):.1%}"
    return (
        f"{label} {gpus:>4} {tps:>12,.0f} {mfu:>6} {row['peak_mib']:>12,.0f} "
        f"{planner_estimate_mib(case, gpus):>10}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny config on the CPU")
    parser.add_argument("--sizes", default=None, help="comma-separated: 1b,8b (default both)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {CASES}")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=None, help="sequences per step per GPU")
    parser.add_argument("--steps", type=int, default=None, help="measured steps")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps first")
    parser.add_argument("--rank", type=int, default=16, help="adapter rank")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's bf16 peak")
    parser.add_argument("--case-timeout", type=float, default=240.0, help="seconds per case")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        row = run_case(Case(**json.loads(args.child)))
        print("ROW " + json.dumps(row), flush=True)
        return 0
    sizes = (args.sizes or ("tiny" if args.dry_run else "1b,8b")).split(",")
    cases = args.cases.split(",")
    unknown = [s for s in sizes if s not in SIZES] + [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown size or case: {', '.join(unknown)}")
    print(
        f"{'size':>4} {'case':<6} {'gpus':>4} {'tokens/s':>12} {'MFU':>6} "
        f"{'peak MiB':>12} {'planner MiB':>10}"
        + ("   (dry run: CPU, peak = RSS)" if args.dry_run else ""),
        flush=True,
    )
    for size in sizes:
        for name in cases:
            case = Case(
                size=size,
                case=name,
                seq_len=args.seq_len or (64 if args.dry_run else 2048),
                batch=args.batch or (2 if args.dry_run else 4),
                steps=args.steps or (2 if args.dry_run else 5),
                warmup=args.warmup if not args.dry_run else 1,
                rank=args.rank,
                gradient_checkpointing=args.gradient_checkpointing,
                dry_run=args.dry_run,
            )
            print(format_row(case, child(case, args.case_timeout), args.peak_tflops), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
