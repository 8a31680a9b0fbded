"""Pooling: the packed layout training uses and the padded reference (tests/pooling_reference.py) against a
plain loop, on random shapes."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pooling_reference import pool_padded, response_cut_at_last_marker

from poise_verl.core.pooling import (
    pool_at_positions,
    pool_packed,
    pooled_positions_packed,
    pooled_positions_right_padded_rows,
    response_cut_at_last_marker_packed,
)


def make_batch(lengths, hidden_size=5, extra_prompt_pad=2, extra_response_pad=3, dtype=torch.float32, seed=0):
    """Random sequences in both layouts. lengths = [(prompt_len, response_len), ...]."""
    generator = torch.Generator().manual_seed(seed)
    prompts = [torch.randn(p, hidden_size, generator=generator).to(dtype) for p, _ in lengths]
    responses = [torch.randn(r, hidden_size, generator=generator).to(dtype) for _, r in lengths]
    batch = len(lengths)
    width_p = max(p for p, _ in lengths) + extra_prompt_pad
    width_t = max(r for _, r in lengths) + extra_response_pad
    # Padding positions hold garbage, which must never leak into the pools.
    hidden = torch.full((batch, width_p + width_t, hidden_size), 1e4).to(dtype)
    mask = torch.zeros(batch, width_p + width_t, dtype=torch.int64)
    for b, (p, r) in enumerate(lengths):
        hidden[b, width_p - p : width_p] = prompts[b]  # left-padded prompt
        mask[b, width_p - p : width_p] = 1
        hidden[b, width_p : width_p + r] = responses[b]  # right-padded response
        mask[b, width_p : width_p + r] = 1
    packed = torch.cat([torch.cat([prompts[b], responses[b]]) for b in range(batch)])
    seq_lens = torch.tensor([p + r for p, r in lengths])
    cu_seqlens = torch.cat([torch.zeros(1, dtype=torch.int64), seq_lens.cumsum(0)])
    response_lengths = torch.tensor([r for _, r in lengths])
    return prompts, responses, hidden, mask, width_p, packed, cu_seqlens, response_lengths


def loop_pool(tokens, k):
    """Mean of the last k rows of a (n, H) tensor in float32; zeros when n = 0."""
    if tokens.shape[0] == 0:
        return torch.zeros(tokens.shape[1])
    rows = [tokens[i].float() for i in range(max(0, tokens.shape[0] - k), tokens.shape[0])]
    total = torch.zeros(tokens.shape[1])
    for row in rows:
        total = total + row
    return total / len(rows)


def check(lengths, k, dtype=torch.float32, seed=0):
    prompts, responses, hidden, mask, width_p, packed, cu, response_lengths = make_batch(
        lengths, dtype=dtype, seed=seed
    )
    padded = pool_padded(hidden, mask, width_p, k)
    flat = pool_packed(packed, cu, response_lengths, k)
    expected_prompt = torch.stack([loop_pool(p, k) for p in prompts])
    expected_response = torch.stack([loop_pool(r, k) for r in responses])
    assert padded.prompt.dtype == torch.float32 and flat.response.dtype == torch.float32
    torch.testing.assert_close(padded.prompt, expected_prompt, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(padded.response, expected_response, rtol=1e-5, atol=1e-5)
    # Same sequences, same slots, same arithmetic: bit-identical.
    assert torch.equal(padded.prompt, flat.prompt)
    assert torch.equal(padded.response, flat.response)
    expected_empty = torch.tensor([r == 0 for _, r in lengths])
    assert torch.equal(padded.response_empty, expected_empty)
    assert torch.equal(flat.response_empty, expected_empty)
    assert torch.equal(flat.prompt_empty, torch.tensor([p == 0 for p, _ in lengths]))
    assert torch.isfinite(padded.prompt).all() and torch.isfinite(padded.response).all()
    return padded


@pytest.mark.parametrize("seed", range(12))
def test_random_shapes_match_loop(seed):
    generator = torch.Generator().manual_seed(1000 + seed)
    batch = int(torch.randint(1, 7, (1,), generator=generator))
    lengths = [tuple(int(v) for v in torch.randint(0, 15, (2,), generator=generator)) for _ in range(batch)]
    k = int(torch.randint(1, 13, (1,), generator=generator))
    check(lengths, k, seed=seed)


@settings(max_examples=60, deadline=None, database=None)  # no .hypothesis/ folder in the repo
@given(
    lengths=st.lists(st.tuples(st.integers(0, 13), st.integers(0, 13)), min_size=1, max_size=6),
    k=st.integers(1, 12),
)
def test_hypothesis_shapes_match_loop(lengths, k):
    check(lengths, k)


def test_short_and_empty_parts():
    # B = 1 with an empty response; shorter-than-k prompt.
    pooled = check([(3, 0)], k=10)
    assert torch.equal(pooled.response, torch.zeros(1, 5))
    # Empty prompt and longer-than-k response.
    pooled = check([(0, 25), (12, 1)], k=10)
    assert torch.equal(pooled.prompt[0], torch.zeros(5))


def test_bf16_is_upcast_before_summing():
    lengths = [(11, 9), (4, 13)]
    _, responses, hidden, mask, width_p, packed, cu, response_lengths = make_batch(
        lengths, dtype=torch.bfloat16
    )
    pooled = pool_padded(hidden, mask, width_p, 10)
    assert pooled.response.dtype == torch.float32
    expected = torch.stack([loop_pool(r, 10) for r in responses])  # loop upcasts each row first
    torch.testing.assert_close(pooled.response, expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(pooled.response, pool_packed(packed, cu, response_lengths, 10).response)


def test_packed_accepts_leading_unit_batch_dim():
    _, _, _, _, _, packed, cu, response_lengths = make_batch([(5, 4), (2, 12)])
    two_d = pool_packed(packed, cu, response_lengths, 3)
    three_d = pool_packed(packed.unsqueeze(0), cu, response_lengths, 3)
    assert torch.equal(two_d.prompt, three_d.prompt) and torch.equal(two_d.response, three_d.response)


def test_positions_follow_the_documented_formula():
    lengths = [(6, 4), (3, 0), (2, 15)]
    _, _, _, _, _, _, cu, response_lengths = make_batch(lengths)
    positions = pooled_positions_packed(cu, response_lengths, k=10)
    for i, (p, r) in enumerate(lengths):
        end = int(cu[i + 1])
        used_r = min(r, 10)
        assert positions.response_index[i, :used_r].tolist() == [end - 1 - j for j in range(used_r)]
        used_p = min(p, 10)
        assert positions.prompt_index[i, :used_p].tolist() == [end - r - 1 - j for j in range(used_p)]
        assert float(positions.response_weight[i].sum()) == pytest.approx(1.0 if r else 0.0)


@pytest.mark.parametrize("num_slices", [1, 2, 3, 5])
def test_sequence_parallel_slices_sum_to_full_pool(num_slices):
    lengths = [(7, 3), (0, 12), (14, 0), (2, 2)]
    _, _, _, _, _, packed, cu, response_lengths = make_batch(lengths, seed=3)
    positions = pooled_positions_packed(cu, response_lengths, k=10)
    full = pool_at_positions(packed, positions.response_index, positions.response_weight)
    bounds = torch.linspace(0, packed.shape[0], num_slices + 1).round().long().tolist()
    partial = sum(
        pool_at_positions(
            packed[start:end], positions.response_index, positions.response_weight, offset=start
        )
        for start, end in itertools.pairwise(bounds)
    )
    torch.testing.assert_close(partial, full, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(full, pool_packed(packed, cu, response_lengths, 10).response)


def test_right_padded_rows_match_packed():
    """verl's engine without remove-padding: sample i's packed tokens at the start of row i, then padding."""
    lengths = [(7, 3), (0, 12), (14, 0), (2, 2), (11, 9)]
    _, _, _, _, _, packed, cu, response_lengths = make_batch(lengths, seed=4)
    width = int((cu[1:] - cu[:-1]).max()) + 3
    rows = torch.full((len(lengths), width, packed.shape[1]), 1e4)  # garbage in the padding
    for i in range(len(lengths)):
        rows[i, : cu[i + 1] - cu[i]] = packed[cu[i] : cu[i + 1]]
    cut = torch.tensor([2, 0, 0, 1, 9])
    want = pool_packed(packed, cu, response_lengths, 10, cut)
    positions = pooled_positions_right_padded_rows(pooled_positions_packed(cu, response_lengths, 10, cut), cu, width)
    flat = rows.reshape(-1, packed.shape[1])
    torch.testing.assert_close(pool_at_positions(flat, positions.prompt_index, positions.prompt_weight), want.prompt)
    torch.testing.assert_close(
        pool_at_positions(flat, positions.response_index, positions.response_weight), want.response
    )
    with pytest.raises(ValueError, match="cannot hold"):
        pooled_positions_right_padded_rows(pooled_positions_packed(cu, response_lengths, 10), cu, width - 4)


def test_non_contiguous_mask_uses_last_real_tokens():
    generator = torch.Generator().manual_seed(7)
    hidden = torch.randn(3, 20, 4, generator=generator)
    mask = (torch.rand(3, 20, generator=generator) > 0.4).long()
    mask[2] = 0  # one row with nothing at all
    pooled = pool_padded(hidden, mask, prompt_length=8, k=4)
    for b in range(3):
        for start, end, got in ((0, 8, pooled.prompt[b]), (8, 20, pooled.response[b])):
            real = [t for t in range(start, end) if mask[b, t]]
            expected = loop_pool(hidden[b, real] if real else torch.zeros(0, 4), 4)
            torch.testing.assert_close(got, expected)


def test_bad_inputs_raise():
    _, _, hidden, mask, width_p, packed, cu, response_lengths = make_batch([(3, 3)])
    with pytest.raises(ValueError, match="cu_seqlens"):
        pool_packed(packed[:-1], cu, response_lengths, 10)
    with pytest.raises(ValueError, match="response_lengths"):
        pool_packed(packed, cu, response_lengths + 10, 10)
    with pytest.raises(ValueError, match="k must be"):
        pool_padded(hidden, mask, width_p, 0)


THINK = 7  # the end-of-thinking token id in the cut tests
# Markers of one and of several tokens. Ids of a several-token marker's test are drawn from its own ids and two
# others, so it occurs often, in overlapping runs (7 7 7 holds 7 7 twice) and cut short at a response's ends.
MARKERS = [THINK, (THINK,), (2, 3), (THINK, THINK), (1, 2, 3)]


def _loop_cut(ids, marker):
    """Tokens up to and including the last token of the marker's last occurrence, else all (the official cut:
    dp_actor._find_last_subsequence)."""
    pattern = [marker] if isinstance(marker, int) else list(marker)
    last = None
    for start in range(len(ids) - len(pattern) + 1):
        if ids[start : start + len(pattern)] == pattern:
            last = start + len(pattern)
    return len(ids) if last is None else last


@pytest.mark.parametrize("marker", MARKERS, ids=str)
@pytest.mark.parametrize("seed", range(8))
def test_response_cut_at_last_end_of_thinking_marker(seed, marker):
    generator = torch.Generator().manual_seed(seed)
    lengths = [(int(p), int(r)) for p, r in torch.randint(0, 14, (6, 2), generator=generator)]
    _prompts, responses, hidden, mask, width_p, packed, cu, response_lengths = make_batch(lengths, seed=seed)
    # Token ids: random small ids so the marker appears zero, one or several times in a response (and in prompts,
    # and across a prompt's end and its response's start, where it must be ignored).
    pattern = [marker] if isinstance(marker, int) else list(marker)
    alphabet = torch.tensor(sorted({*pattern, 0, 1})) if len(pattern) > 1 else torch.arange(10)
    ids = [alphabet[torch.randint(0, len(alphabet), (p + r,), generator=generator)] for p, r in lengths]
    width_t = hidden.shape[1] - width_p
    response_ids = torch.zeros(len(lengths), width_t, dtype=torch.int64)
    for b, (p, r) in enumerate(lengths):
        response_ids[b, :r] = ids[b][p:]
    cut_padded = response_cut_at_last_marker(response_ids, mask[:, width_p:], marker)
    pooled_cut = response_cut_at_last_marker_packed(torch.cat(ids), cu, response_lengths, marker)
    expected = torch.tensor([_loop_cut(ids[b][p:].tolist(), marker) for b, (p, _) in enumerate(lengths)])
    assert torch.equal(cut_padded, expected) and torch.equal(pooled_cut, expected)
    assert torch.equal(response_cut_at_last_marker(response_ids, mask[:, width_p:], None), response_lengths)
    assert torch.equal(response_cut_at_last_marker_packed(torch.cat(ids), cu, response_lengths, None), response_lengths)

    # Pooling with the cut: both layouts equal the loop over the first C_i response tokens.
    k = 3
    flat = pool_packed(packed, cu, response_lengths, k, response_pool_lengths=expected)
    padded = pool_padded(hidden, mask, width_p, k, response_pool_lengths=expected)
    reference = torch.stack([loop_pool(responses[b][: int(expected[b])], k) for b in range(len(lengths))])
    torch.testing.assert_close(flat.response, reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(padded.response, reference, atol=1e-6, rtol=0)
    torch.testing.assert_close(flat.prompt, padded.prompt, atol=1e-6, rtol=0)
    assert torch.equal(flat.response_empty, expected == 0)


def test_a_marker_of_several_tokens_is_cut_after_its_last_token():
    """Documented cases, packed: two responses after a prompt that ends with the marker's first token."""
    marker = (5, 6)
    prompt, first, second = [1, 5], [6, 2, 5, 6, 3, 5], [5, 6, 5, 6, 5]
    ids = torch.tensor(prompt + first + prompt + second)
    cu = torch.tensor([0, 8, 15])
    lengths = torch.tensor([6, 5])
    # first: the prompt's 5 and the response's 6 are no marker; 5 6 at 2..3 -> 4 tokens; a lone 5 at the end.
    # second: the last whole 5 6 ends at 3 -> 4 tokens.
    assert response_cut_at_last_marker_packed(ids, cu, lengths, marker).tolist() == [4, 4]
    assert response_cut_at_last_marker_packed(ids, cu, lengths, (5, 6, 3)).tolist() == [5, 5]


def test_response_cut_of_an_empty_response_block():
    cut = response_cut_at_last_marker(torch.zeros(3, 0, dtype=torch.int64), torch.zeros(3, 0), THINK)
    assert torch.equal(cut, torch.zeros(3, dtype=torch.int64))
