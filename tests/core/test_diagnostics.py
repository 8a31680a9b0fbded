"""Baseline diagnostics against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from poise_verl.core.diagnostics import baseline_diagnostics


@pytest.mark.parametrize("seed", range(8))
def test_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    rewards = rng.integers(0, 2, size=int(rng.integers(3, 50))).astype(np.float64)
    rewards[0], rewards[1] = 0.0, 1.0  # never constant
    baselines = np.clip(0.3 * rewards + rng.normal(0.4, 0.2, size=rewards.shape), 0, 1)
    got = baseline_diagnostics(
        torch.tensor(rewards, dtype=torch.float32), torch.tensor(baselines, dtype=torch.float32)
    )
    residual = rewards - baselines
    expected = {
        "mae": np.abs(residual).mean(),
        "rmse": np.sqrt((residual**2).mean()),
        "pearson": np.corrcoef(rewards, baselines)[0, 1],
        "explained_variance": 1 - residual.var() / rewards.var(),
        "adv_var_with_baseline": residual.var(),
        "adv_var_no_baseline": rewards.var(),
    }
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-6), name
        assert isinstance(got[name], float)


def test_degenerate_cases_give_zero_not_nan():
    constant_baseline = baseline_diagnostics(torch.tensor([0.0, 1.0, 1.0]), torch.full((3,), 0.5))
    assert constant_baseline["pearson"] == 0.0
    assert constant_baseline["explained_variance"] == pytest.approx(0.0)
    constant_reward = baseline_diagnostics(torch.ones(4), torch.tensor([0.1, 0.9, 0.3, 0.5]))
    assert constant_reward["pearson"] == 0.0 and constant_reward["explained_variance"] == 0.0
    assert constant_reward["adv_var_no_baseline"] == 0.0
    empty = baseline_diagnostics(torch.zeros(0), torch.zeros(0))
    assert all(value == 0.0 for value in empty.values())
    with pytest.raises(ValueError, match="differ"):
        baseline_diagnostics(torch.zeros(3), torch.zeros(4))


def test_perfect_baseline():
    rewards = torch.tensor([0.0, 1.0, 0.0, 1.0])
    got = baseline_diagnostics(rewards, rewards)
    assert got["mae"] == 0.0 and got["explained_variance"] == 1.0 and got["pearson"] == pytest.approx(1.0)
    assert got["adv_var_with_baseline"] == 0.0 and got["adv_var_no_baseline"] == pytest.approx(0.25)
