"""Fixtures of the evaluation tests (avg@k, pass@k, checkpoint round trips): the shipped, trained tiny build on a
subset of its data (``tests/shipped_build.py`` says why that build)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: shipped_build
from shipped_build import shipped_subset


@pytest.fixture(scope="session")
def small_tiny_assets(tmp_path_factory) -> Path:
    """The shipped build with 128 train and 128 validation prompts."""
    torch.set_num_threads(2)
    return shipped_subset(tmp_path_factory.mktemp("tiny_assets"))
