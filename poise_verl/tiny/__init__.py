"""The tiny CPU policy and its arithmetic task, the default that ``python -m poise_verl.main`` trains.

    from poise_verl.tiny import ensure_tiny_assets
    assets = ensure_tiny_assets()   # the assets shipped in the package (or $POISE_VERL_CACHE's own build)
    # assets / "model", assets / "data" / "train.parquet", assets / "data" / "val.parquet"

The reward is ``poise_verl/tiny/reward.py:compute_score``. Modules import torch/transformers lazily from
here so that importing the reward stays light.
"""

from pathlib import Path


def ensure_tiny_assets(cache_dir: str | Path | None = None) -> Path:
    from poise_verl.tiny.build import ensure_tiny_assets as _ensure

    return _ensure(cache_dir)
