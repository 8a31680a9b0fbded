"""Sibling targets, cross baselines and advantages against plain loops; group validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from poise_verl.core.cross_rollout import (
    check_groups,
    cross_baselines,
    cross_rollout_advantages,
    lone_rows,
    sibling_targets,
)


def random_groups(seed):
    """Groups of size 2..5 at shuffled positions; uids as a numpy object array (like verl) and ints."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 6, size=rng.integers(1, 8))
    owner = np.concatenate([np.full(size, g) for g, size in enumerate(sizes)])
    rng.shuffle(owner)
    uids = np.array([f"uid-{g}-{seed}" for g in owner], dtype=object)
    return owner, uids


def loop_leave_one_out(values, owner):
    out = []
    for i in range(len(owner)):
        siblings = [float(values[j]) for j in range(len(owner)) if j != i and owner[j] == owner[i]]
        out.append(sum(siblings) / len(siblings))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("seed", range(15))
def test_sibling_targets_and_baselines_match_loop(seed):
    owner, uids = random_groups(seed)
    generator = torch.Generator().manual_seed(seed)
    rewards = torch.randint(0, 2, (len(owner),), generator=generator).float()
    predictions = torch.rand(len(owner), generator=generator)
    for group_index in (uids, torch.from_numpy(owner), owner):
        torch.testing.assert_close(
            sibling_targets(rewards, group_index).double(), loop_leave_one_out(rewards, owner)
        )
        torch.testing.assert_close(
            cross_baselines(predictions, group_index).double(),
            loop_leave_one_out(predictions, owner),
        )


@pytest.mark.parametrize("seed", range(5))
def test_advantages_match_loop_and_rloo(seed):
    owner, uids = random_groups(seed)
    generator = torch.Generator().manual_seed(50 + seed)
    batch = len(owner)
    rewards = torch.rand(batch, generator=generator)
    predictions = torch.rand(batch, generator=generator)
    mask = (torch.rand(batch, 9, generator=generator) > 0.3).long()
    advantages = cross_rollout_advantages(rewards, predictions, uids, mask)
    assert advantages.shape == (batch, 9) and advantages.dtype == torch.float32
    baselines = loop_leave_one_out(predictions, owner)
    for i in range(batch):
        for t in range(9):
            expected = (float(rewards[i]) - float(baselines[i])) * int(mask[i, t])  # A_i = R_i - b_i
            assert float(advantages[i, t]) == pytest.approx(expected, abs=1e-6)
    # With the rewards as "predictions", this is RLOO: (n R_i - sum_g R) / (n - 1).
    rloo = cross_rollout_advantages(rewards, rewards, uids, torch.ones(batch, 1))[:, 0]
    sizes = torch.tensor([int((owner == owner[i]).sum()) for i in range(batch)]).float()
    sums = torch.tensor([float(rewards[torch.from_numpy(owner == owner[i])].sum()) for i in range(batch)])
    torch.testing.assert_close(rloo, (sizes * rewards - sums) / (sizes - 1))


def test_pairs_swap():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    uids = np.array(["a", "b", "a", "b"], dtype=object)
    assert sibling_targets(rewards, uids).tolist() == [0.0, 1.0, 1.0, 0.0]


def test_check_groups_names_the_bad_group():
    check_groups(np.array(["a", "a", "b", "b"], dtype=object), n=2)
    with pytest.raises(ValueError, match=r"'lonely' has 1 rollout"):
        check_groups(np.array(["a", "lonely", "a"], dtype=object))
    with pytest.raises(ValueError, match=r"'b' has 3 rollouts, expected n = 2"):
        check_groups(np.array(["a", "b", "a", "b", "b"], dtype=object), n=2)
    with pytest.raises(ValueError, match="group uid=4 has 1"):
        sibling_targets(torch.ones(3), torch.tensor([1, 1, 4]))


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="entries"):
        cross_baselines(torch.ones(3), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="response_mask"):
        cross_rollout_advantages(torch.ones(2), torch.ones(2), torch.tensor([0, 0]), torch.ones(3, 4))


def test_padding_rows_are_in_no_group_and_get_zero():
    """verl pads a batch that does not divide across ranks with rows sharing one made-up uid (a group of
    any size, 1 included); marked invalid, they change nothing for the real rows and get advantage 0."""
    owner, uids = random_groups(3)
    generator = torch.Generator().manual_seed(9)
    batch = len(owner)
    rewards, predictions = torch.rand(batch, generator=generator), torch.rand(batch, generator=generator)
    mask = torch.ones(batch, 5)
    real = cross_rollout_advantages(rewards, predictions, uids, mask)
    for pad in (1, 3):
        padded_uids = np.concatenate([uids, np.array(["pad0"] * pad, dtype=object)])
        padded = cross_rollout_advantages(
            torch.cat([rewards, torch.rand(pad)]),
            torch.cat([predictions, torch.rand(pad)]),
            padded_uids,
            torch.cat([mask, torch.zeros(pad, 5)]),
            valid=torch.cat([torch.ones(batch, dtype=torch.bool), torch.zeros(pad, dtype=torch.bool)]),
        )
        torch.testing.assert_close(padded[:batch], real)
        assert torch.equal(padded[batch:], torch.zeros(pad, 5))


def test_a_rollout_whose_siblings_failed_gets_no_gradient_and_changes_no_other_row():
    """verl keeps a group whose other sessions failed with the rollouts that finished: a lone row has no sibling
    to take a baseline from, so it gets advantage 0; a group of 3 that lost one rollout pairs its other two."""
    uids = np.array(["a", "a", "b", "c", "c", "c", "d"], dtype=object)
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    predictions = torch.tensor([0.2, 0.6, 0.9, 0.5, 0.1, 0.3, 0.4])
    assert lone_rows(uids).tolist() == [False, False, True, False, False, False, True]
    padding = torch.tensor([True] * 6 + [False])
    assert lone_rows(uids, padding).tolist() == [False, False, True, False, False, False, False]
    advantages = cross_rollout_advantages(rewards, predictions, uids, torch.ones(7, 2))[:, 0]
    paired = torch.tensor([0, 1, 3, 4, 5])
    alone = cross_rollout_advantages(rewards[paired], predictions[paired], uids[paired.numpy()], torch.ones(5, 1))
    torch.testing.assert_close(advantages[paired], alone[:, 0])
    assert advantages[2] == 0.0 and advantages[6] == 0.0
    torch.testing.assert_close(advantages[0], torch.tensor(1.0 - 0.6))  # A_i = R_i - g(phi_sibling)
    torch.testing.assert_close(advantages[3], torch.tensor(1.0 - (0.1 + 0.3) / 2))
    # The probe's targets need a sibling's reward: asked for a lone row, they still refuse.
    with pytest.raises(ValueError, match="'b' has 1 rollout"):
        sibling_targets(rewards, uids)
