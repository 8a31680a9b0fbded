"""Shared settings of the core tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Run each core test on one intra-op thread, then restore the previous setting.

    The tensors here are tiny; on a machine shared with other jobs, multi-threaded BLAS/LAPACK calls
    (SVD, solve) on them spend far longer spin-waiting for threads than computing (measured: a 200 x 70 SVD
    took ~0.3 s with 2 threads under load and ~3 ms with one).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
