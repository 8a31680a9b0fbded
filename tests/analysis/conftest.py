"""Fixtures of the analysis tests: the shipped, trained tiny build on a subset of its data.

The shipped policy (``poise_verl/tiny/assets``, warmed up to about 42% greedy accuracy) gets some prompts right,
some wrong and many partly right, so the value estimators are scored on pass rates that vary. A rebuild with a
few warm-up steps (what these tests used before) got every prompt wrong. Nothing is built: the model is copied
and each split cut to its first ``SUBSET_PROMPTS`` rows.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

SUBSET_PROMPTS = 128


def shipped_subset(out: Path, prompts: int = SUBSET_PROMPTS) -> Path:
    """``out`` laid out as a tiny build: the shipped model and build_info.json, the first ``prompts`` rows of
    each split."""
    from poise_verl.tiny.build import ensure_tiny_assets

    shipped = ensure_tiny_assets()
    shutil.copytree(shipped / "model", out / "model")
    shutil.copy(shipped / "build_info.json", out / "build_info.json")
    (out / "data").mkdir()
    for split in ("train", "val"):
        frame = pd.read_parquet(shipped / "data" / f"{split}.parquet").head(prompts)
        frame.to_parquet(out / "data" / f"{split}.parquet", index=False)
    return out


@pytest.fixture(scope="session")
def small_tiny_assets(tmp_path_factory) -> Path:
    """The shipped build with 128 train and 128 validation prompts."""
    torch.set_num_threads(2)
    return shipped_subset(tmp_path_factory.mktemp("tiny_assets"))
