"""The import contracts in pyproject.toml hold for the tree, and `make lint` catches a breach.

Each breach case copies the source packages into a temporary directory, adds one forbidden
import and runs ``lint-imports`` there with the project's own contracts, so the test checks the
contracts themselves (not a hand-written copy of them) and never touches the working tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("core", "api", "worker", "admin", "cli")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the packages under ``root`` with ``root/pyproject.toml``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    """The source packages and pyproject.toml, copied (Python files only)."""
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package,
            tmp_path / package,
            ignore=lambda _dir, names: [
                n for n in names if n == "__pycache__" or (n.endswith((".pyc", ".json")))
            ],
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def add_import(module: Path, line: str) -> None:
    module.write_text(module.read_text() + f"\n{line}\n")


def test_the_tree_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_copied_tree_passes_unchanged(tree_copy: Path) -> None:
    # The breach cases below fail because of the line they add, not because of the copy.
    result = lint_imports(tree_copy)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("core/errors.py", "import flask", "core is framework-free"),
        ("core/storage/quota.py", "import torch", "core is framework-free"),
        ("core/ids.py", "import api.errors", "core is framework-free"),
        ("api/errors.py", "import transformers", "the API installs and runs without"),
        ("worker/cli.py", "import cli.main", "api, worker, admin and cli never import"),
        ("admin/cli.py", "import api", "api, worker, admin and cli never import"),
        # jobs.lifecycle -> jobs.progress already; the reverse closes a cycle in core.jobs.
        ("core/jobs/progress.py", "import core.jobs.lifecycle", "no import cycles between"),
        # scheduling.dispatch -> jobs.lifecycle -> jobs.progress -> scheduling.order already.
        ("core/scheduling/order.py", "import core.scheduling.dispatch", "no import cycles"),
        ("core/scheduling/order.py", "import core.jobs.lifecycle", "core's modules are layered"),
        ("core/db/models.py", "import core.tenancy.auth", "core's modules are layered"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tree_copy: Path, module: str, line: str, contract: str
) -> None:
    add_import(tree_copy / module, line)
    result = lint_imports(tree_copy)
    assert result.returncode != 0, result.stdout
    broken = [ln for ln in result.stdout.splitlines() if ln.endswith(" BROKEN")]
    assert any(ln.startswith(contract) for ln in broken), result.stdout


def test_make_lint_runs_every_check() -> None:
    """`make lint` (which .ci/run runs before the tests) runs each linter, mypy included."""
    dry_run = subprocess.run(
        ["make", "-n", "lint"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert dry_run.returncode == 0, dry_run.stderr
    for command in ("ruff check", "ruff format --check", "mypy", "lint-imports"):
        assert command in dry_run.stdout, dry_run.stdout
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("make lint") < ci.index("make test"), ci


def test_every_core_module_has_a_layer() -> None:
    """A core module missing from the layers contract would escape the no-cycle rule."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    layers = next(
        contract["layers"]
        for contract in config["tool"]["importlinter"]["contracts"]
        if contract["type"] == "layers"
    )
    listed = {name.strip() for layer in layers for name in layer.split(":")}
    unlisted = []
    for path in sorted((ROOT / "core").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            continue
        ancestry = {".".join(parts[:n]) for n in range(2, len(parts) + 1)}
        if not ancestry & listed:
            unlisted.append(".".join(parts))
    assert not unlisted, f"add these core modules to a layer in pyproject.toml: {unlisted}"
