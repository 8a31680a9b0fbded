"""The tiny CPU policy and its arithmetic task, the default that ``python -m poise_verl.main`` trains.

    from poise_verl.tiny import ensure_tiny_assets
    assets = ensure_tiny_assets()   # the assets shipped in the package (or $POISE_VERL_CACHE's own build)
    # assets / "model", assets / "data" / "train.parquet", assets / "data" / "val.parquet"

The reward is ``poise_verl/tiny/reward.py:compute_score``. Modules import torch/transformers lazily from
here so that importing the reward stays light.
"""

from pathlib import Path

from poise_verl.tiny.paths import tiny_assets_dir


def ensure_tiny_assets(cache_dir: str | Path | None = None) -> Path:
    """The tiny assets (``cache_dir``, else :func:`~poise_verl.tiny.paths.tiny_assets_dir`), built there first
    if they are not. A finished build (its ``build_info.json``) is returned without importing the builder, which
    imports torch and transformers' model code: the driver of every run asks."""
    target = Path(cache_dir) if cache_dir is not None else tiny_assets_dir()
    if (target / "build_info.json").exists():
        return target
    from poise_verl.tiny.build import ensure_tiny_assets as build_if_missing

    return build_if_missing(cache_dir)
