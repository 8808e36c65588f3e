from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import MODEL_CACHE
from tests.e2e.platform import Platform


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> Iterator[Platform]:
    """``dorado run`` (API, worker, scheduler, inference service) shared by a test module."""
    home = tmp_path_factory.mktemp("inference-platform") / "home"
    running = Platform(home, "dor-inference-module-key-0000", MODEL_CACHE).start()
    try:
        yield running
    finally:
        running.stop()
