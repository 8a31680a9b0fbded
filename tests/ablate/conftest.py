"""Fixtures of the ablation tests: a tiny real task for the end-to-end run of the driver."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_verl_ext_fixtures():
    """The tiny random Qwen3, character tokenizer and arithmetic parquet builders of tests/verl_ext."""
    path = REPO / "tests" / "verl_ext" / "conftest.py"
    spec = importlib.util.spec_from_file_location("verl_ext_fixture_builders", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_task_overrides(tmp_path_factory) -> list[str]:
    """Hydra overrides that point the main job at a 2-layer random Qwen3 and a 64-prompt arithmetic task.

    Built in seconds, so the end-to-end test does not wait for (or depend on) the tiny assets' build.
    """
    builders = _load_verl_ext_fixtures()
    root = tmp_path_factory.mktemp("ablate_task")
    tokenizer = builders.build_tokenizer(root / "model")
    builders.build_model(root / "model", vocab_size=len(tokenizer))
    builders.build_parquet(root / "train.parquet", count=64, seed=0)
    builders.build_parquet(root / "val.parquet", count=16, seed=1)
    (root / "reward.py").write_text(builders.REWARD_FUNCTION)
    return [
        f"data.train_files={root / 'train.parquet'}",
        f"data.val_files={root / 'val.parquet'}",
        f"actor_rollout_ref.model.path={root / 'model'}",
        f"reward.custom_reward_function.path={root / 'reward.py'}",
        "poise.end_of_thinking_token=null",
        "poise.probe_layer=1",
    ]
