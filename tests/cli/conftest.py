"""The ``dorado`` user commands run as real subprocesses against a running platform."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import platform  # noqa: F401  (one platform per test module)
from tests.e2e.platform import BIN, ROOT, Platform


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class Dorado:
    """Runs ``dorado ...`` as a user would, with a home of its own (no stray config file)."""

    home: Path
    env: dict[str, str]

    def __call__(self, *args: str, timeout: float = 300, **env: str) -> Result:
        proc = subprocess.run(
            [str(BIN / "dorado"), *args],
            cwd=ROOT,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)


def user_env(home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DORADO_") and k not in ("XDG_CONFIG_HOME",)
    }
    # The tests' own code first on the path, so the subprocess runs this checkout.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**env, "HOME": str(home), "COLUMNS": "100", "NO_COLOR": "1"}


@pytest.fixture
def dorado(tmp_path: Path) -> Dorado:
    """``dorado`` with no key and no server configured."""
    home = tmp_path / "user-home"
    home.mkdir()
    return Dorado(home, user_env(home))


@pytest.fixture
def user(dorado: Dorado, platform: Platform) -> Dorado:  # noqa: F811
    """``dorado`` pointed at the module's platform by DORADO_BASE_URL and DORADO_API_KEY."""
    dorado.env.update(DORADO_BASE_URL=platform.base_url, DORADO_API_KEY=platform.api_key)
    return dorado
