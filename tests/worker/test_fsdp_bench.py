"""The GPU check's CPU dry run: every case prints a row of figures, or says why it skipped."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.worker.helpers import ROOT

NUMBER = r"[\d,]+(?:\.\d+)?"


def test_gpu_check_dry_run_prints_a_row_per_case() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split()[1]: line for line in done.stdout.splitlines()[1:] if line.strip()}
    assert rows.keys() == {"lora", "dora", "qlora", "fsdp"}, done.stdout
    for case, gpus in (("lora", 1), ("dora", 1), ("fsdp", 2)):
        # size, case, ranks, tokens/s, MFU (no peak known for a CPU), peak MiB, planner.
        pattern = rf"tiny +{case} +{gpus} +{NUMBER} +n/a +{NUMBER} +(n/a|{NUMBER})"
        assert re.fullmatch(pattern, rows[case].strip()), rows[case]
    assert "skipped: NF4 needs CUDA" in rows["qlora"]
