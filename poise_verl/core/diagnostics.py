"""How good is the baseline? Metrics of baselines b_i against realised rewards R_i.

GRPO/DAPO's group-mean baseline needs no monitoring; POISE's baseline comes from a learned probe, so each
step logs how well b_i tracks R_i and how much it shrinks the advantages' variance (the quantity that
drives the policy-gradient variance): A_i = R_i - b_i with the baseline, A_i = R_i without.

All metrics are population statistics (ddof = 0) computed in float64, returned as python floats, and are
0 rather than NaN in degenerate cases: Pearson is 0 when either side is constant, explained variance is 0
when the rewards are constant, and every metric is 0 on an empty batch.
"""

from __future__ import annotations

import torch

__all__ = ["baseline_diagnostics"]


def baseline_diagnostics(rewards: torch.Tensor, baselines: torch.Tensor) -> dict[str, float]:
    """Quality of baselines b against rewards R.

    Args:
        rewards: ``(B,)`` realised rewards R_i.
        baselines: ``(B,)`` baselines b_i (POISE: ``cross_baselines``).

    Returns:
        ``mae`` = mean |R - b|, ``rmse`` = sqrt(mean (R - b)^2), ``pearson`` = corr(R, b),
        ``explained_variance`` = 1 - Var(R - b) / Var(R), ``adv_var_with_baseline`` = Var(R - b),
        ``adv_var_no_baseline`` = Var(R).
    """
    reward = rewards.detach().reshape(-1).to(device="cpu", dtype=torch.float64)
    baseline = baselines.detach().reshape(-1).to(device="cpu", dtype=torch.float64)
    if reward.shape != baseline.shape:
        raise ValueError(f"rewards {tuple(reward.shape)} and baselines {tuple(baseline.shape)} differ")
    names = ("mae", "rmse", "pearson", "explained_variance", "adv_var_with_baseline", "adv_var_no_baseline")
    if reward.numel() == 0:
        return dict.fromkeys(names, 0.0)
    residual = reward - baseline  # A_i = R_i - b_i
    reward_var = reward.var(correction=0)
    residual_var = residual.var(correction=0)
    centred_reward, centred_baseline = reward - reward.mean(), baseline - baseline.mean()
    norm = centred_reward.norm() * centred_baseline.norm()
    # Pearson is undefined when a side is constant; report 0 ("no linear relation measured").
    pearson = float((centred_reward @ centred_baseline) / norm) if float(norm) > 1e-12 else 0.0
    explained = 1.0 - float(residual_var / reward_var) if float(reward_var) > 1e-12 else 0.0
    return {
        "mae": float(residual.abs().mean()),
        "rmse": float(residual.pow(2).mean().sqrt()),
        "pearson": pearson,
        "explained_variance": explained,
        "adv_var_with_baseline": float(residual_var),
        "adv_var_no_baseline": float(reward_var),
    }
