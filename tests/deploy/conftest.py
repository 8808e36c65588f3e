"""Helpers for the deployment tests: repository paths and the settings the code reads."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SETTING = re.compile(r"\bDORADO_[A-Z0-9_]*[A-Z0-9]\b")


def settings_mentioned_in_code() -> set[str]:
    """Every ``DORADO_*`` name that appears in core/, api/ or worker/ Python files."""
    names: set[str] = set()
    for package in ("core", "api", "worker"):
        for path in (ROOT / package).rglob("*.py"):
            names |= set(SETTING.findall(path.read_text(encoding="utf-8")))
    return names


def settings_read_by_code() -> set[str]:
    """Every ``DORADO_*`` variable: the fields of core.settings.Settings, plus any name the
    code mentions (tests/deploy/test_settings_documented.py checks those are fields too)."""
    from core.settings import Settings, env_name

    return {env_name(field) for field in Settings.model_fields} | settings_mentioned_in_code()
