"""Fixtures of the benchmark tests: a reduced tiny build (real model, tokenizer and parquet files)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def small_tiny_assets(tmp_path_factory) -> Path:
    """A few warm-up steps and small splits: seconds instead of the full build's minutes."""
    from poise_verl.tiny.build import build

    out = tmp_path_factory.mktemp("tiny_assets")
    return build(out, seed=0, steps=3, train_prompts=64, val_prompts=32, measure_prompts=0)
