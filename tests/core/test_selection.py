"""Prompt selection rules: score-based keep with exploration, the GRESO-style history filter, zero-variance
groups, and the prompt rows the prompt-only probe is fitted on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from poise_verl.core.buffer import ProbeReplayBuffer
from poise_verl.core.selection import (
    HistoryFilter,
    groups_all_agree,
    pair_information,
    prompt_id,
    select_by_score,
)


def test_pair_information_peaks_at_one_half():
    p = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0, 1.3])
    assert pair_information(p).tolist() == pytest.approx([0.0, 0.09, 0.25, 0.09, 0.0, 0.0])


def test_select_by_score_keeps_the_best_and_explores_the_rest():
    scores = torch.arange(20, dtype=torch.float64)  # candidate 19 is the best
    picked = select_by_score(
        scores, keep=8, exploration_share=0.25, generator=torch.Generator().manual_seed(0)
    )
    assert picked.shape == (8,) and len(set(picked.tolist())) == 8
    assert picked[:6].tolist() == [19, 18, 17, 16, 15, 14]  # 8 - round(0.25 * 8) by score
    assert all(i < 14 for i in picked[6:].tolist())  # the rest drawn from those the score left out
    # Over many steps every candidate is reachable through exploration.
    seen = set()
    for seed in range(200):
        seen |= set(select_by_score(scores, 8, 0.25, torch.Generator().manual_seed(seed)).tolist())
    assert seen == set(range(20))
    # No exploration: exactly the top; ties broken at random but reproducibly.
    assert sorted(select_by_score(scores, 5, 0.0, torch.Generator().manual_seed(1)).tolist()) == [
        15,
        16,
        17,
        18,
        19,
    ]
    tied = torch.zeros(10)
    first = select_by_score(tied, 3, 0.0, torch.Generator().manual_seed(2))
    assert torch.equal(first, select_by_score(tied, 3, 0.0, torch.Generator().manual_seed(2)))
    with pytest.raises(ValueError, match="cannot keep"):
        select_by_score(scores, 21, 0.0, torch.Generator())


def test_history_filter_skips_prompts_that_keep_agreeing():
    history = HistoryFilter(base_skip=0.5, max_skip=0.9)
    assert history.skip_probability(["new"]).tolist() == [0.0]
    history.update(["a", "b"], [True, False])
    history.update(["a", "b"], [True, False])
    assert history.skip_probability(["a", "b", "new"]).tolist() == pytest.approx([0.75, 0.0, 0.0])
    for _ in range(10):
        history.update(["a"], [True])
    assert float(history.skip_probability(["a"])) == pytest.approx(0.9)  # capped: still reachable
    history.update(["a"], [False])
    assert float(history.skip_probability(["a"])) == 0.0  # one disagreeing visit resets the streak

    history.update(["a"] * 1, [True])
    for _ in range(5):
        history.update(["a"], [True])
    ids = ["a"] * 50 + ["new"] * 50
    kept_a = sum(
        int(i < 50)
        for seed in range(40)
        for i in history.select(ids, 50, torch.Generator().manual_seed(seed)).tolist()
    )
    assert 0.05 < kept_a / (40 * 50) < 0.2  # a is skipped ~90% of the time when there are enough others
    assert sorted(history.select(["a"] * 3, 3, torch.Generator().manual_seed(0)).tolist()) == [0, 1, 2]

    restored = HistoryFilter(0.5, 0.9)
    restored.load_state_dict(history.state_dict())
    assert restored.streaks == history.streaks
    with pytest.raises(ValueError, match="max_skip < 1"):
        HistoryFilter(0.5, 1.0)


def test_groups_all_agree_and_prompt_ids():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    agree, uids = groups_all_agree(rewards, np.array(["x", "x", "y", "y", "z", "z"], dtype=object))
    assert dict(zip(uids, agree.tolist(), strict=True)) == {"x": True, "y": False, "z": True}
    messages = [{"role": "user", "content": "1+2="}]
    assert (
        prompt_id(messages)
        == prompt_id([dict(messages[0])])
        != prompt_id([{"role": "user", "content": "1+3="}])
    )


def test_prompt_rows_are_group_means_of_the_buffer():
    buffer = ProbeReplayBuffer({"math": 100, "other": 100})
    prompt = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    targets = torch.tensor([1.0, 0.0, 0.0, 0.0])  # sibling targets of rewards (0, 1) and (0, 0)
    buffer.add_groups(
        prompt, torch.ones(4, 3), torch.ones(4, 1), targets, np.array(["g", "g", "h", "h"]), ["math"] * 4
    )
    rows = buffer.dataset().prompt_rows()
    assert rows.uids == ["g", "h"] and rows.targets.tolist() == [0.5, 0.0]
    assert torch.equal(rows.prompt_feats, torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    assert rows.response_feats.shape == (2, 0) and rows.scalar_feats.shape == (2, 0)
