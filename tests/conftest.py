"""Shared fixtures. Tiers: unit (default), integration (`-m integration`), gpu."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def flywheel_home(tmp_path, monkeypatch) -> Path:
    """An isolated $FLYWHEEL_HOME: nothing a test writes escapes it."""
    home = tmp_path / "home"
    monkeypatch.setenv("FLYWHEEL_HOME", str(home))
    monkeypatch.delenv("FLYWHEEL_MODELS", raising=False)
    return home
