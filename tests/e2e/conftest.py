from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import MODEL_CACHE
from tests.e2e.platform import Platform


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> Iterator[Platform]:
    """One platform (embedded defaults, real processes) shared by a test module."""
    home = tmp_path_factory.mktemp("platform") / "home"
    running = Platform(
        home, "dor-e2e-module-key-000000000", MODEL_CACHE, {"DORADO_LEASE_SECONDS": "20"}
    ).start()
    try:
        yield running
    finally:
        running.stop()
