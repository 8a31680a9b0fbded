"""The ``poise`` advantage estimator, registered with verl's ``register_adv_est``: a thin wrapper over
:func:`poise_verl.core.cross_rollout.cross_rollout_advantages`.

verl calls a registered estimator from its own advantage stage (``PPOTrainer._compute_advantage`` in
``verl/trainer/ppo/v1/trainer_base.py``), after it has applied the KL penalty to the rewards
(``algorithm.use_kl_in_reward``) and computed rollout-correction weights (``algorithm.rollout_correction``),
as ``fn(token_level_rewards=(bs, T), response_mask=(bs, T), config=<algorithm section>, index=<uid array>)``
and expects ``(advantages, returns)``, both ``(bs, T)``. POISE changes only the baseline, so it runs inside
that stage instead of replacing it: everything else verl does to a batch between reward and update happens
under POISE exactly as under GRPO.

The probe's predictions reach the estimator through ``step_predictions`` (:mod:`.step_predictions`). verl 0.9.1's v1 advantage stage
reads a fixed list of fields from the batch (``uid, response_mask, rm_scores, rollout_log_probs,
old_log_probs, ref_log_prob, values``), so the ``reward_baselines`` key verl would pass along from the batch
never gets there; the POISE trainer computes g(phi_i) for the step, enters ``step_predictions(...)`` around
verl's stage, and this estimator reads them back, after checking they are the predictions of exactly these
rollouts in this order (the uids must match row by row). That is the one input path.

Where a step's baseline is chosen: the trainer decides, per row, whether the probe's g(phi_i) is the baseline
input (``StepPredictions.from_probe``: a fitted probe, a paired rollout, past the bootstrap steps;
``PoiseSteps._compute_advantage``); this estimator applies that choice, because only here is the realised
reward R_i known as verl's stage made it (with the KL penalty, when verl applied one), which is the input where
the probe is not used. The estimator forms b_i = mean_{j != i} of those over i's siblings and
A_i = R_i - b_i on every response token, with no std normalisation (unlike GRPO). With rewards in place of
predictions this is RLOO exactly: the bootstrap steps and any domain whose probe is not fitted yet. Because
b_i depends only on the siblings' samples, the gradient stays unbiased.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from verl.trainer.ppo.core_algos import register_adv_est

from poise_verl.config import POISE_ADV_ESTIMATOR
from poise_verl.core.cross_rollout import cross_rollout_advantages
from poise_verl.verl_ext.step_predictions import StepPredictions, current_step_predictions


def _current(index: np.ndarray, batch: int) -> StepPredictions:
    step = current_step_predictions()
    if step is None:
        raise ValueError(
            "poise advantage: no probe predictions for this batch. The POISE trainers provide them (algo=poise, "
            "poise_async or poise_fully_async); adv_estimator=poise does not run under another trainer mode"
        )
    if len(step.uids) != batch or not np.array_equal(np.asarray(index).astype(str), step.uids.astype(str)):
        raise RuntimeError(
            "poise advantage: verl's batch rows are not the rows the POISE trainer predicted for (uids differ "
            "in count or order); the advantage stage of this verl version reorders rows, which this "
            "estimator does not support"
        )
    return step


@register_adv_est(POISE_ADV_ESTIMATOR)
def compute_poise_outcome_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray | None = None,
    config: Any = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """POISE cross-rollout advantages.

    Args:
        token_level_rewards: ``(bs, T)``; R_i is their sum (the outcome reward, minus verl's KL penalty when
            ``use_kl_in_reward`` is on).
        response_mask: ``(bs, T)`` 1 on response tokens.
        index: ``(bs,)`` prompt uid per rollout.
        config: verl's algorithm section (unused; the registry's calling convention).

    Returns:
        ``(advantages, returns)``, both ``(bs, T)``: A_i = R_i - mean_{j != i} g(phi_j) on response tokens.
    """
    if index is None:
        raise ValueError("poise advantage: verl passed no `index` (prompt uids); siblings cannot be matched")
    rewards = token_level_rewards.sum(dim=-1).to(torch.float32)  # R_i
    step = _current(index, rewards.shape[0])
    # Each row's baseline input: the probe's g(phi_i) where the trainer chose it, else R_i (RLOO).
    from_probe = step.from_probe.to(rewards.device)
    predictions = torch.where(from_probe, step.predictions.to(rewards.device, torch.float32), rewards)
    if not torch.isfinite(predictions).all():
        bad = int((~torch.isfinite(predictions)).nonzero()[0, 0])
        raise ValueError(
            f"poise advantage: the baseline input of row {bad} (uid={index[bad]!r}) is not finite"
        )
    with torch.no_grad():
        advantages = cross_rollout_advantages(rewards, predictions, index, response_mask, valid=step.valid)
    return advantages, advantages
