"""Where the tiny assets are: the ones shipped in the package, or a build of your own under ``$POISE_VERL_CACHE``.

Paths only, importing nothing heavy: the config's ``${poise_tiny:...}`` resolver reads them in every process that
composes a config, and building the assets (``poise_verl.tiny.build``) needs torch.
"""

from __future__ import annotations

import os
from pathlib import Path

# Bump whenever anything poise_verl.tiny.build makes changes (task, tokenizer, model, warm-up): caches rebuild.
RECIPE_VERSION = 2

# The assets shipped in the package, built by poise_verl.tiny.build (build_info.json says where and when).
SHIPPED_DIR = Path(__file__).resolve().parent / "assets"


def tiny_assets_dir() -> Path:
    """Where runs find the tiny assets: ``$POISE_VERL_CACHE/tiny-v<RECIPE_VERSION>`` when that variable is set
    (a build of your own, made on first use), else the ones shipped in the package."""
    root = os.environ.get("POISE_VERL_CACHE")
    return Path(root) / f"tiny-v{RECIPE_VERSION}" if root else SHIPPED_DIR
