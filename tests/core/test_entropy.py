"""Entropy statistics against a per-row loop, including missing end-of-thinking markers, markers of several tokens
and empty rows."""

from __future__ import annotations

import pytest
import torch

from poise_verl.core.entropy import (
    DEFAULT_ENTROPY_FEATURES,
    ENTROPY_FEATURE_NAMES,
    end_of_thinking_parts,
    entropy_feature_matrix,
    entropy_statistics,
)

THINK_END = 7


def mean_or_zero(values):
    return sum(values) / len(values) if values else 0.0


def loop_statistics(entropies, mask, ids, think_end):
    """Reference: walk each row's real tokens in order; ``think_end`` is one id, a tuple of ids or None."""
    pattern = [] if think_end is None else [think_end] if isinstance(think_end, int) else list(think_end)
    out = {name: [] for name in ENTROPY_FEATURE_NAMES}
    for b in range(entropies.shape[0]):
        tokens = [t for t in range(entropies.shape[1]) if mask[b, t]]
        values = [float(entropies[b, t]) for t in tokens]
        real_ids = [int(ids[b, t]) for t in tokens]
        if not pattern:
            reasoning, answer = [], values  # no thinking section: all answer
        else:
            # Index of the last token of each whole occurrence of the marker among the real tokens.
            ends = [
                start + len(pattern) - 1
                for start in range(len(real_ids) - len(pattern) + 1)
                if real_ids[start : start + len(pattern)] == pattern
            ]
            # Never closed: neither part exists (the official code's rule).
            reasoning, answer = (values[: ends[0] + 1], values[ends[0] + 1 :]) if ends else ([], [])
        out["entropy_mean"].append(mean_or_zero(values))
        out["entropy_reasoning_mean"].append(mean_or_zero(reasoning))
        out["entropy_answer_mean"].append(mean_or_zero(answer))
        out["entropy_last"].append(values[-1] if values else 0.0)
        out["entropy_max"].append(max(values) if values else 0.0)
        out["entropy_min"].append(min(values) if values else 0.0)
    return {name: torch.tensor(values, dtype=torch.float32) for name, values in out.items()}


def random_batch(seed, contiguous, alphabet=None):
    generator = torch.Generator().manual_seed(seed)
    batch, width = (
        int(torch.randint(1, 8, (1,), generator=generator)),
        int(torch.randint(1, 16, (1,), generator=generator)),
    )
    entropies = torch.rand(batch, width, generator=generator) * 3
    if contiguous:
        lengths = torch.randint(0, width + 1, (batch,), generator=generator)
        mask = (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)).long()
    else:
        mask = (torch.rand(batch, width, generator=generator) > 0.3).long()
    # Few distinct ids so the end-of-thinking token appears 0, 1 or several times; some only in padding.
    ids = torch.randint(0, 10, (batch, width), generator=generator)
    if alphabet is not None:  # a marker of several tokens: ids drawn from its own and a few others, so it occurs
        alphabet = torch.tensor(alphabet)
        ids = alphabet[torch.randint(0, len(alphabet), (batch, width), generator=generator)]
    return entropies, mask, ids


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("think_end", [THINK_END, None])
def test_matches_loop(seed, contiguous, think_end):
    entropies, mask, ids = random_batch(seed, contiguous)
    got = entropy_statistics(entropies, mask, ids, think_end)
    expected = loop_statistics(entropies, mask, ids, think_end)
    assert set(got) == set(ENTROPY_FEATURE_NAMES)
    for name in ENTROPY_FEATURE_NAMES:
        torch.testing.assert_close(got[name], expected[name], msg=name)


# Markers of several tokens, each with the ids its random batches draw from (its own ids and a few others).
SEVERAL = {(2, 3): (0, 1, 2, 3), (THINK_END, THINK_END): (0, THINK_END), (1, 2, 3): (1, 2, 3, 4)}


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("marker", [*SEVERAL, (THINK_END,)], ids=str)
def test_a_marker_of_several_tokens_matches_the_loop(seed, contiguous, marker):
    """The marker is a contiguous run of the real tokens (a masked-out token inside it does not break it), as the
    official code matches its encoded ``</think>`` among a response's valid ids; a one-id tuple is the one token."""
    entropies, mask, ids = random_batch(seed, contiguous, SEVERAL.get(marker, tuple(range(10))))
    got = entropy_statistics(entropies, mask, ids, marker)
    expected = loop_statistics(entropies, mask, ids, marker)
    for name in ENTROPY_FEATURE_NAMES:
        torch.testing.assert_close(got[name], expected[name], msg=name)
    if marker == (THINK_END,):  # a tuple of one id is the one-token marker
        one = entropy_statistics(entropies, mask, ids, THINK_END)
        assert all(torch.equal(got[name], one[name]) for name in ENTROPY_FEATURE_NAMES)


def test_a_marker_of_several_tokens_documented_cases():
    marker = (5, 6)
    entropies = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]] * 4)
    ids = torch.tensor(
        [
            [1, 5, 6, 2, 5, 6],  # first run ends at index 2: reasoning [1, 2, 3], answer [4, 5, 6]
            [5, 1, 6, 2, 2, 2],  # 5 and 6 apart: never closed, both parts 0
            [5, 9, 6, 2, 2, 2],  # 5, masked 9, 6: a run of the real tokens, reasoning [1, 3], answer [4, 5, 6]
            [6, 5, 2, 2, 2, 5],  # only partial runs (6 first, 5 last): never closed
        ]
    )
    mask = torch.tensor([[1] * 6, [1] * 6, [1, 0, 1, 1, 1, 1], [1] * 6])
    stats = entropy_statistics(entropies, mask, ids, marker)
    assert stats["entropy_reasoning_mean"].tolist() == [2.0, 0.0, 2.0, 0.0]
    assert stats["entropy_answer_mean"].tolist() == [5.0, 0.0, 5.0, 0.0]
    reasoning, answer = end_of_thinking_parts(mask, ids, marker)
    assert reasoning[2].tolist() == [True, False, True, False, False, False]
    assert not (reasoning & answer).any() and not ((reasoning | answer) & (mask == 0)).any()


def test_parts_from_another_split_replace_the_marker():
    """``parts=`` (the official_text split) decides the two parts; tokens outside the mask never count."""
    entropies = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    reasoning = torch.tensor([[False, True, False, True], [False, False, False, False]])
    answer = torch.tensor([[False, False, True, True], [True, True, True, True]])
    stats = entropy_statistics(entropies, mask, torch.full((2, 4), THINK_END), THINK_END, parts=(reasoning, answer))
    assert stats["entropy_reasoning_mean"].tolist() == [2.0, 0.0]  # token 3 is padding
    assert stats["entropy_answer_mean"].tolist() == [3.0, 2.5]
    assert stats["entropy_mean"].tolist() == [2.0, 2.5]
    with pytest.raises(ValueError, match="parts"):
        entropy_statistics(entropies, mask, parts=(reasoning[:, :3], answer))


def test_documented_cases():
    entropies = torch.tensor(
        [
            [1.0, 2.0, 3.0, 4.0, 9.0],  # end-of-thinking at index 1: reasoning [1, 2], answer [3, 4]
            [1.0, 2.0, 3.0, 5.0, 9.0],  # no end-of-thinking: reasoning and answer both 0 (official)
            [1.0, 2.0, 3.0, 4.0, 9.0],  # end-of-thinking is the last token: answer empty -> 0
            [5.0, 5.0, 5.0, 5.0, 5.0],  # empty response: everything 0
        ]
    )
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    ids = torch.tensor(
        [[0, THINK_END, 0, 0, THINK_END], [0, 0, 0, 0, THINK_END], [0, 0, THINK_END, 0, 0], [0] * 5]
    )
    stats = entropy_statistics(entropies, mask, ids, THINK_END)
    assert stats["entropy_mean"].tolist() == [2.5, 2.75, 2.0, 0.0]
    assert stats["entropy_reasoning_mean"].tolist() == [1.5, 0.0, 2.0, 0.0]
    assert stats["entropy_answer_mean"].tolist() == [3.5, 0.0, 0.0, 0.0]
    assert stats["entropy_last"].tolist() == [4.0, 5.0, 3.0, 0.0]
    assert stats["entropy_max"].tolist() == [4.0, 5.0, 3.0, 0.0]
    assert stats["entropy_min"].tolist() == [1.0, 1.0, 1.0, 0.0]
    # Without an end-of-thinking id, the whole response is the answer.
    plain = entropy_statistics(entropies, mask)
    assert plain["entropy_answer_mean"].tolist() == [2.5, 2.75, 2.0, 0.0]
    assert plain["entropy_reasoning_mean"].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_padding_values_never_leak():
    entropies = torch.tensor([[1.0, float("nan"), float("inf")], [float("nan")] * 3])
    mask = torch.tensor([[1, 0, 0], [0, 0, 0]])
    stats = entropy_statistics(entropies, mask, torch.zeros(2, 3, dtype=torch.long), THINK_END)
    for name, values in stats.items():
        assert torch.isfinite(values).all(), name
    assert stats["entropy_mean"].tolist() == [1.0, 0.0]


def test_bf16_input_gives_float32():
    stats = entropy_statistics(torch.ones(2, 4, dtype=torch.bfloat16), torch.ones(2, 4))
    assert all(values.dtype == torch.float32 for values in stats.values())


def test_feature_matrix_order_and_validation():
    entropies, mask, ids = random_batch(3, True)
    stats = entropy_statistics(entropies, mask, ids, THINK_END)
    matrix = entropy_feature_matrix(stats)
    assert matrix.shape == (entropies.shape[0], 3)
    for column, name in enumerate(DEFAULT_ENTROPY_FEATURES):
        assert torch.equal(matrix[:, column], stats[name])
    custom = entropy_feature_matrix(stats, ["entropy_max", "entropy_mean"])
    assert torch.equal(custom, torch.stack([stats["entropy_max"], stats["entropy_mean"]], 1))
    assert entropy_feature_matrix(stats, []).shape == (entropies.shape[0], 0)
    with pytest.raises(ValueError, match="entropy_answer_mean"):  # the message lists the valid names
        entropy_feature_matrix(stats, ["entropy_mean", "answer_entropy"])


def test_missing_ids_raise():
    with pytest.raises(ValueError, match="response_ids"):
        entropy_statistics(torch.ones(1, 2), torch.ones(1, 2), None, THINK_END)
