"""Start-up checks on this machine and the installed packages: a GPU recipe needs GPUs, and verl must have loaded
poise-verl's plugins (it swallows a plugin's import error).
"""

from __future__ import annotations

import importlib
import os
import sys

from omegaconf import DictConfig

PLUGIN_GROUP = "verl.plugins"


def check_plugins_loaded() -> None:
    """Stop with a message when ``import verl`` did not load poise-verl's plugins.

    verl imports each ``verl.plugins`` entry point and swallows any error (it logs at debug level), so a plugin
    that fails to import, or ``VERL_USE_EXTERNAL_PLUGINS`` leaving it out, would only show later as an unknown
    estimator, trainer mode, platform or rollout deep inside a worker.
    """
    from importlib.metadata import entry_points

    import verl  # noqa: F401  loads the entry points

    ours = [ep for ep in entry_points(group=PLUGIN_GROUP) if ep.value.split(":")[0].split(".")[0] == "poise_verl"]
    if not ours:
        raise SystemExit(
            f"poise-verl's {PLUGIN_GROUP} entry points are not installed: install the package "
            "(`pip install -e .` in the checkout, or `make run`) instead of running it from a source path"
        )
    missing = [ep for ep in ours if ep.value.split(":")[0] not in sys.modules]
    for ep in missing:
        importlib.import_module(ep.value.split(":")[0])  # raises the error verl swallowed, if there is one
    if missing:
        policy = os.environ.get("VERL_USE_EXTERNAL_PLUGINS", "auto")
        raise SystemExit(
            f"verl did not load the plugins {[ep.name for ep in missing]} (VERL_USE_EXTERNAL_PLUGINS={policy!r}): "
            "unset VERL_USE_EXTERNAL_PLUGINS, or list these names in it"
        )


def check_hardware(config: DictConfig) -> None:
    """A GPU recipe launched without a GPU stops at once, saying what is missing."""
    if config.runtime.platform != "gpu":
        return
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(
            "This configuration needs NVIDIA GPUs (runtime.platform=gpu, trainer.device="
            f"{config.trainer.device}, {config.trainer.nnodes} node(s) x {config.trainer.n_gpus_per_node} GPU(s)), "
            "but torch sees no CUDA device here. Run it on a GPU node (see docker/README.md), or drop the recipe "
            "to run the tiny CPU default."
        )
