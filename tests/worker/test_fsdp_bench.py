"""The GPU check's CPU dry run: every case (NF4 on bitsandbytes' CPU kernels, FSDP on two gloo
ranks) prints a row of figures, with the memory planner's estimate, and the FSDP-vs-DDP
benchmark's script starts."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.worker.helpers import ROOT

NUMBER = r"[\d,]+(?:\.\d+)?"


def run_bench(script: str, *args: str, timeout: float) -> str:
    """``bench/<script>``'s standard output, once it has exited 0."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_gpu_check_dry_run_prints_a_row_per_case() -> None:
    stdout = run_bench("gpu_check.py", "--dry-run", timeout=900)
    rows = {line.split()[1]: line for line in stdout.splitlines()[1:] if line.strip()}
    assert rows.keys() == {"lora", "dora", "qlora", "fsdp"}, stdout
    for case, gpus in (("lora", 1), ("dora", 1), ("qlora", 1), ("fsdp", 2)):
        # size, case, ranks, tokens/s, MFU (no peak known for a CPU), peak MiB, planner MiB.
        pattern = rf"tiny +{case} +{gpus} +{NUMBER} +n/a +{NUMBER} +{NUMBER}"
        assert re.fullmatch(pattern, rows[case].strip()), rows[case]


def test_fsdp_vs_ddp_help_runs() -> None:
    assert "--ranks" in run_bench("fsdp_vs_ddp.py", "--help", timeout=120)
