"""The shipped, trained tiny build on a subset of its data, for the analysis and evaluation tests.

The shipped policy (``poise_verl/tiny/assets``, warmed up to about 42% greedy accuracy) gets some prompts right,
some wrong and many partly right, so value estimators, avg@k, pass@k and checkpoint round trips are checked on
outcomes that vary. A rebuild with a few warm-up steps (what those tests used before) got every prompt wrong.
Nothing is built: the model is copied and each split cut to its first ``SUBSET_PROMPTS`` rows.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

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
