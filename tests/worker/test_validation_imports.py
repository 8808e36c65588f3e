"""The validator runs validations in a threads pool: the first ones, starting together in a
fresh process, must not trip over transformers' lazy imports."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

RACE = """
import threading
from worker.validation import auto_classes

barrier = threading.Barrier(4)
errors = []

def first_validation():
    barrier.wait()
    try:
        config, tokenizer = auto_classes()
        assert config.__name__ == "AutoConfig" and tokenizer.__name__ == "AutoTokenizer"
    except Exception as exc:
        errors.append(repr(exc))

threads = [threading.Thread(target=first_validation) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(errors)
"""


def test_concurrent_first_imports_of_transformers_succeed():
    # Unguarded, 4 threads failed with "cannot import name 'AutoConfig'" in most fresh
    # processes; three fresh processes make a regression all but certain to show.
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", RACE], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
