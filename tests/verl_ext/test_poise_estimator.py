"""The registered `poise` estimator inside verl's advantage stage: it reads the trainer's step predictions,
falls back to RLOO row by row, skips verl's padding rows, and refuses rows it was not given predictions for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from verl.trainer.ppo.core_algos import compute_rloo_outcome_advantage, get_adv_estimator_fn

from poise_verl.core.cross_rollout import cross_rollout_advantages
from poise_verl.verl_ext.step_predictions import StepPredictions, step_predictions

UIDS = np.array(["a", "b", "a", "c", "b", "c"], dtype=object)


def batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    token_rewards = torch.zeros(6, 4)
    token_rewards[:, -1] = (torch.rand(6, generator=generator) > 0.5).float()
    token_rewards -= 0.01 * torch.rand(
        6, 4, generator=generator
    )  # a KL penalty on every token, as verl applies
    mask = torch.ones(6, 4)
    return token_rewards, mask, torch.rand(6, generator=generator)


def poise(token_rewards, mask, index=UIDS):
    return get_adv_estimator_fn("poise")(
        token_level_rewards=token_rewards, response_mask=mask, index=index, config=None
    )


def test_probe_rows_use_the_siblings_predictions():
    token_rewards, mask, predictions = batch()
    step = StepPredictions(
        UIDS, predictions, torch.ones(6, dtype=torch.bool), torch.ones(6, dtype=torch.bool)
    )
    with step_predictions(step):
        advantages, returns = poise(token_rewards, mask)
    expected = cross_rollout_advantages(token_rewards.sum(-1), predictions, UIDS, mask)
    torch.testing.assert_close(advantages, expected)
    assert returns is advantages


def test_rows_without_a_fitted_probe_get_verls_rloo():
    """RLOO on the (KL-penalised) rewards verl hands over, for every group the probe does not cover."""
    token_rewards, mask, predictions = batch(1)
    from_probe = torch.tensor([True, False, True, False, False, False])  # group a by the probe
    step = StepPredictions(UIDS, predictions, from_probe, torch.ones(6, dtype=torch.bool))
    with step_predictions(step):
        advantages, _ = poise(token_rewards, mask)
    rloo, _ = compute_rloo_outcome_advantage(
        token_level_rewards=token_rewards, response_mask=mask, index=UIDS
    )
    rows = ~from_probe
    torch.testing.assert_close(advantages[rows], rloo[rows], atol=1e-6, rtol=0)
    rewards = token_rewards.sum(-1)
    assert advantages[0, 0] == pytest.approx(float(rewards[0] - predictions[2]), abs=1e-6)


def test_padding_rows_get_zero_and_join_no_group():
    token_rewards, mask, predictions = batch(2)
    uids = np.append(UIDS, "pad123")  # verl's padding row: a uid of its own, response mask all zero
    token_rewards, mask = torch.cat([token_rewards, torch.zeros(1, 4)]), torch.cat([mask, torch.zeros(1, 4)])
    predictions = torch.cat([predictions, torch.zeros(1)])
    valid = torch.tensor([True] * 6 + [False])
    with step_predictions(StepPredictions(uids, predictions, valid.clone(), valid)):
        advantages, _ = poise(token_rewards, mask, uids)
    assert torch.equal(advantages[6], torch.zeros(4))
    torch.testing.assert_close(
        advantages[:6], cross_rollout_advantages(token_rewards[:6].sum(-1), predictions[:6], UIDS, mask[:6])
    )


def test_refuses_rows_it_has_no_predictions_for():
    token_rewards, mask, predictions = batch(3)
    with pytest.raises(ValueError, match="no probe predictions"):
        poise(token_rewards, mask)
    shuffled = UIDS[[1, 0, 2, 3, 4, 5]]
    ones = torch.ones(6, dtype=torch.bool)
    with (
        step_predictions(StepPredictions(shuffled, predictions, ones, ones)),
        pytest.raises(RuntimeError, match="order"),
    ):
        poise(token_rewards, mask)
