"""Fixtures of the error-path tests: the tiny assets, the e2e runner, and composed configs (no Ray)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "e2e"))  # e2e_runner: the real entry point as a subprocess


@pytest.fixture(scope="session")
def tiny_assets() -> Path:
    from poise_verl.tiny.build import ensure_tiny_assets

    return ensure_tiny_assets()


def compose_config(*overrides: str, resolve: bool = True) -> DictConfig:
    """The main job's config for OVERRIDES, as `python -m poise_verl.main` composes it."""
    from poise_verl.config import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "hydra_configs"), version_base=None):
        config = compose("poise_trainer", overrides=list(overrides))
    if resolve:
        OmegaConf.resolve(config)
    return config
