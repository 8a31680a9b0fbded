"""Fixtures for the end-to-end runs of the main job."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_assets() -> Path:
    from poise_verl.tiny.build import ensure_tiny_assets

    return ensure_tiny_assets()
