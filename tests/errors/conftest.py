"""Fixtures of the error-path tests: the tiny assets, and the e2e runner on the path (the real entry point as a
subprocess; ``e2e_runner.compose_config`` composes a config without a launch)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))  # e2e_runner: the real entry point as a subprocess


@pytest.fixture(scope="session")
def tiny_assets() -> Path:
    from poise_verl.tiny.build import ensure_tiny_assets

    return ensure_tiny_assets()
