"""The ``poise`` advantage estimator, registered with verl's ``register_adv_est``.

verl calls a registered estimator as
``fn(token_level_rewards=(bs, T), response_mask=(bs, T), config=<algorithm section>, index=<uid array>,
reward_baselines=(bs,))`` and expects ``(advantages, returns)``, both ``(bs, T)``.

POISE's contract for ``reward_baselines``: entry i is the probe's prediction g(phi_i) made from rollout i's
OWN features. The estimator turns those into cross-rollout baselines: rollout i is baselined by the mean
prediction of its siblings, b_i = mean_{j != i} g(phi_j), and A_i = R_i - b_i on every response token, with no
std normalisation (unlike GRPO). Because b_i depends only on the siblings' samples, which are independent of
rollout i given the prompt, E[b_i * grad log pi(y_i)] = 0 and the gradient stays unbiased.

Passing the rewards themselves as ``reward_baselines`` gives RLOO exactly (b_i = mean of the siblings'
rewards): that is how the trainer's cold-start (bootstrap) steps run through the same code path.

The leave-one-out mean is verl's own RLOO estimator applied to the predictions:
``rloo(p)_i = p_i - mean_{j != i} p_j``, so ``b_i = p_i - rloo(p)_i``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from verl.trainer.ppo.core_algos import compute_rloo_vectorized_outcome_advantage, register_adv_est

POISE_ADV_ESTIMATOR = "poise"


def _check_groups(index: np.ndarray) -> None:
    """Every prompt group must hold at least two rollouts: a lone rollout has no sibling to baseline it."""
    uids, counts = np.unique(np.asarray(index), return_counts=True)
    lonely = uids[counts < 2]
    if len(lonely) > 0:
        raise ValueError(
            f"poise advantage: prompt group uid={lonely[0]!r} has {int(counts[counts < 2][0])} rollout(s); the "
            f"cross-rollout baseline needs >= 2 rollouts per prompt (set actor_rollout_ref.rollout.n >= 2). "
            f"{len(lonely)} group(s) affected."
        )


def leave_one_out_mean(values: torch.Tensor, index: np.ndarray) -> torch.Tensor:
    """Mean over each rollout's siblings, via verl's vectorised RLOO.

    Args:
        values: ``(bs,)`` one number per rollout.
        index: ``(bs,)`` prompt uid per rollout; siblings may sit anywhere in the batch.

    Returns:
        ``(bs,)``: entry i is mean_{j != i, index[j] == index[i]} values[j].
    """
    values = values.to(torch.float32)
    ones = torch.ones(values.shape[0], 1, dtype=values.dtype, device=values.device)
    loo_diff, _ = compute_rloo_vectorized_outcome_advantage(
        token_level_rewards=values.unsqueeze(-1), response_mask=ones, index=np.asarray(index)
    )
    # rloo(v)_i = v_i - mean_{j != i} v_j
    return values - loo_diff.squeeze(-1)


@register_adv_est(POISE_ADV_ESTIMATOR)
def compute_poise_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None = None,
    reward_baselines: torch.Tensor | None = None,
    config: Any = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """POISE cross-rollout advantages.

    Args:
        token_level_rewards: ``(bs, T)`` outcome reward R_i (summed over tokens).
        response_mask: ``(bs, T)`` 1 on response tokens.
        index: ``(bs,)`` prompt uid per rollout.
        reward_baselines: ``(bs,)`` the probe's prediction g(phi_i) from rollout i's own features.
        config: verl's algorithm section (unused; accepted for the registry's calling convention).

    Returns:
        ``(advantages, returns)``, both ``(bs, T)``: A_i = R_i - mean_{j != i} g(phi_j) on response tokens.
    """
    if index is None:
        raise ValueError("poise advantage: verl passed no `index` (prompt uids); siblings cannot be matched.")
    if reward_baselines is None:
        raise ValueError(
            "poise advantage: the batch holds no `reward_baselines`. POISE needs the probe's per-rollout "
            "predictions there (the POISE trainer, trainer.v1.trainer_mode=poise, writes them); pass the "
            "rewards themselves to get RLOO during cold start."
        )
    if not torch.isfinite(reward_baselines).all():
        bad = int((~torch.isfinite(reward_baselines)).nonzero()[0, 0])
        raise ValueError(f"poise advantage: reward_baselines[{bad}] is {reward_baselines[bad].item()}, uid={index[bad]!r}")
    _check_groups(index)
    with torch.no_grad():
        rewards = token_level_rewards.sum(dim=-1).to(torch.float32)  # R_i
        cross_baselines = leave_one_out_mean(reward_baselines.to(rewards.device), index)  # b_i = mean_{j!=i} g(phi_j)
        advantages = (rewards - cross_baselines).unsqueeze(-1) * response_mask  # A_i = R_i - b_i, no std norm
    return advantages, advantages
