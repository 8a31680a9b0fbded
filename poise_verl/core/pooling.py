"""Feature pooling: the probe's hidden-state features phi(x, y) from one decoder layer.

POISE reads its value features from the actor's own forward pass (the one that computes the old
log-probs), so unlike GRPO/DAPO, which only need log-probs, the actor also hands back one layer's hidden
states. Two vectors per rollout are pooled from them:

- ``prompt``: the mean of the last ``k`` prompt tokens (the prompt's summary just before generation),
- ``response``: the mean of the last ``k`` response tokens (the end of the generated answer),

with ``k = 10`` in the official configs. Both come out in float32 (``(B, H)``), upcast from bf16 before
summing so that the mean does not lose bits.

The layout is verl's remove-padding one (``pool_packed``): one row of concatenated samples described by
``cu_seqlens``, sample ``i`` its prompt (padding stripped) then its ``R_i`` response tokens; without
remove-padding verl's engine puts the same tokens at the start of right-padded rows
(``pooled_positions_right_padded_rows``). The tests pool the same sequences from a left-padded prompt /
right-padded response batch as an independent reference (``tests/pooling_reference.py``).

Rule for short and empty sequences (never NaN, never an error):

- a part with fewer than ``k`` tokens is the mean over the tokens it has;
- a part with no tokens (an empty response, ``R_i = 0``, or an empty prompt) pools to a zero vector and
  is flagged in ``response_empty`` / ``prompt_empty`` ``(B,)`` so the caller can count such rows.

Pooling reduces to one primitive: per sample, ``k`` flat positions and ``k`` weights (``1 / n``
for the ``n = min(k, length)`` real tokens, 0 for unused slots), slot ``j`` holding the ``j``-th token
from the end. ``pooled_positions_packed`` exposes these so that a sequence-parallel caller whose rank holds
only a slice ``[offset, offset + len)`` of the packed row can pool its slice with ``pool_at_positions`` and
all-reduce (sum) the partial results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from poise_verl.core.marker import marker_ends, marker_ids

__all__ = [
    "DEFAULT_POOL_TOKENS",
    "PooledFeatures",
    "PooledPositions",
    "pool_at_positions",
    "pool_packed",
    "pooled_positions_packed",
    "pooled_positions_right_padded_rows",
    "response_cut_at_last_marker_packed",
]

# Official feature-builder configs: "last_n_mean" with n = 10 for both the prompt and the response.
DEFAULT_POOL_TOKENS = 10


@dataclass(frozen=True)
class PooledPositions:
    """Where to read the pooled tokens from, in a flat (packed or flattened-padded) token axis.

    Attributes:
        prompt_index: ``(B, k)`` int64 flat positions of the last ``k`` prompt tokens, slot ``j`` = the
            ``j``-th token from the end. Unused slots hold a valid dummy position and weight 0.
        prompt_weight: ``(B, k)`` float32, ``1 / min(k, prompt length)`` on used slots, else 0.
        response_index: ``(B, k)`` int64, same for the response.
        response_weight: ``(B, k)`` float32, same for the response.
        prompt_empty: ``(B,)`` bool, the sample has no prompt token.
        response_empty: ``(B,)`` bool, the sample has no response token (``R_i = 0``).
    """

    prompt_index: torch.Tensor
    prompt_weight: torch.Tensor
    response_index: torch.Tensor
    response_weight: torch.Tensor
    prompt_empty: torch.Tensor
    response_empty: torch.Tensor


@dataclass(frozen=True)
class PooledFeatures:
    """Pooled features of a batch.

    Attributes:
        prompt: ``(B, H)`` float32, mean of the last ``k`` prompt tokens (zeros when the prompt is empty).
        response: ``(B, H)`` float32, mean of the last ``k`` response tokens (zeros when empty).
        prompt_empty: ``(B,)`` bool.
        response_empty: ``(B,)`` bool; the caller may count these (e.g. a ``poise/empty_responses`` metric).
    """

    prompt: torch.Tensor
    response: torch.Tensor
    prompt_empty: torch.Tensor
    response_empty: torch.Tensor


def _check_k(k: int) -> None:
    if k < 1:
        raise ValueError(f"the number of pooled tokens k must be >= 1, got {k}")


def _slot_weights(lengths: torch.Tensor, k: int) -> torch.Tensor:
    """``(B,)`` token counts -> ``(B, k)`` float32 weights ``1 / min(k, n)`` on the first ``min(k, n)``
    slots, 0 elsewhere (all zeros when ``n = 0``, which is what makes an empty part pool to zeros)."""
    used = lengths.clamp(min=0, max=k)  # (B,)
    slots = torch.arange(k, device=lengths.device)  # (k,)
    valid = slots.unsqueeze(0) < used.unsqueeze(1)  # (B, k)
    return valid.to(torch.float32) / used.clamp(min=1).to(torch.float32).unsqueeze(1)


def pooled_positions_packed(
    cu_seqlens: torch.Tensor,
    response_lengths: torch.Tensor,
    k: int = DEFAULT_POOL_TOKENS,
    response_pool_lengths: torch.Tensor | None = None,
) -> PooledPositions:
    """Flat positions and weights of the pooled tokens in verl's packed (remove-padding) layout.

    Sample ``i`` occupies ``[cu[i], cu[i+1])``: its ``L_i = cu[i+1] - cu[i] - R_i`` prompt tokens, then its
    ``R_i`` response tokens. The last response token sits at ``cu[i+1] - 1`` and the last prompt token at
    ``cu[i+1] - R_i - 1``; slot ``j`` reads ``j`` positions before those.

    Args:
        cu_seqlens: ``(B + 1,)`` int, cumulative sequence lengths, ``cu[0] = 0``.
        response_lengths: ``(B,)`` int, ``R_i`` (number of real response tokens, may be 0).
        k: tokens pooled per part.
        response_pool_lengths: ``(B,)`` int in ``[0, R_i]``, optional: the response pool reads the last ``k``
            of the first ``C_i`` response tokens instead of the last ``k`` of all ``R_i`` (the official code
            cuts the response after its last end-of-thinking marker: ``response_cut_at_last_marker_packed``).

    Returns:
        PooledPositions with ``(B, k)`` indices into the packed token axis (length ``cu[-1]``).
    """
    _check_k(k)
    cu = cu_seqlens.to(torch.int64).reshape(-1)
    response_lengths = response_lengths.to(torch.int64).reshape(-1)
    if cu.numel() != response_lengths.numel() + 1:
        raise ValueError(
            f"cu_seqlens must have B + 1 entries for B = {response_lengths.numel()} responses, "
            f"got {cu.numel()}"
        )
    ends = cu[1:]  # (B,) one past the sample's last token
    sample_lengths = ends - cu[:-1]
    prompt_lengths = sample_lengths - response_lengths  # L_i
    if bool((response_lengths < 0).any()) or bool((prompt_lengths < 0).any()):
        raise ValueError("response_lengths must lie in [0, sequence length] for every sample")
    slots = torch.arange(k, device=cu.device)  # (k,)

    def part(last: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight = _slot_weights(lengths, k)  # (B, k)
        index = last.unsqueeze(1) - slots.unsqueeze(0)  # (B, k), slot j = j-th token from the end
        # Unused slots may point before the sample (or below 0); park them on position 0 with weight 0.
        index = torch.where(weight > 0, index, torch.zeros_like(index))
        return index, weight

    if response_pool_lengths is None:
        response_pool_lengths = response_lengths
    response_pool_lengths = response_pool_lengths.to(torch.int64).reshape(-1).to(cu.device)
    if bool((response_pool_lengths < 0).any()) or bool((response_pool_lengths > response_lengths).any()):
        raise ValueError("response_pool_lengths must lie in [0, R_i] for every sample")
    response_starts = ends - response_lengths
    response_index, response_weight = part(response_starts + response_pool_lengths - 1, response_pool_lengths)
    prompt_index, prompt_weight = part(response_starts - 1, prompt_lengths)
    return PooledPositions(
        prompt_index=prompt_index,
        prompt_weight=prompt_weight,
        response_index=response_index,
        response_weight=response_weight,
        prompt_empty=prompt_lengths == 0,
        response_empty=response_pool_lengths == 0,
    )


def pooled_positions_right_padded_rows(
    positions: PooledPositions, cu_seqlens: torch.Tensor, width: int
) -> PooledPositions:
    """Move packed positions onto right-padded rows: verl's engine layout without remove-padding.

    With ``use_remove_padding=False`` verl's FSDP engine runs the model on ``(B, S)`` rows, sample ``i``'s
    packed tokens ``[cu[i], cu[i+1])`` at columns ``[0, cu[i+1] - cu[i])`` of row ``i`` (prompt then response,
    right-padded to ``S``). The packed position ``t`` of sample ``i`` becomes ``i * S + (t - cu[i])`` on the
    flattened ``(B * S)`` axis.

    Args:
        positions: from ``pooled_positions_packed`` for the same ``cu_seqlens``.
        cu_seqlens: ``(B + 1,)`` int cumulative lengths.
        width: ``S``, the padded row length (at least the longest sample).

    Returns:
        PooledPositions addressing the flattened ``(B * S)`` token axis.
    """
    cu = cu_seqlens.to(torch.int64).reshape(-1).to(positions.prompt_index.device)
    longest = int((cu[1:] - cu[:-1]).max()) if cu.numel() > 1 else 0
    if width < longest:
        raise ValueError(f"padded rows of width {width} cannot hold a sample of {longest} tokens")
    shift = (torch.arange(cu.numel() - 1, device=cu.device) * width - cu[:-1]).unsqueeze(1)  # (B, 1)

    def move(index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return torch.where(weight > 0, index + shift, torch.zeros_like(index))

    return PooledPositions(
        prompt_index=move(positions.prompt_index, positions.prompt_weight),
        prompt_weight=positions.prompt_weight,
        response_index=move(positions.response_index, positions.response_weight),
        response_weight=positions.response_weight,
        prompt_empty=positions.prompt_empty,
        response_empty=positions.response_empty,
    )


def response_cut_at_last_marker_packed(
    input_ids: torch.Tensor,
    cu_seqlens: torch.Tensor,
    response_lengths: torch.Tensor,
    marker: int | Sequence[int] | None,
) -> torch.Tensor:
    """``(B,)`` response tokens up to and including the last end-of-thinking marker (all ``R_i`` when absent).

    The official POISE code pools the response's hidden states only up to the last occurrence of its
    end-of-thinking marker (``_build_hidden_capture``): for a thinking model the response feature summarises the
    end of the reasoning, not the boxed answer. The marker may be several tokens (``core.marker``); the cut then
    keeps the whole marker, up to its last token.

    Args:
        input_ids: ``(total_nnz,)`` or ``(1, total_nnz)``, sample ``i`` at ``[cu[i], cu[i+1])`` ending with its
            ``R_i`` response tokens.
        cu_seqlens: ``(B + 1,)`` int cumulative lengths.
        response_lengths: ``(B,)`` int, ``R_i``.
        marker: the marker's token ids (one id for a one-token marker), or None for no cut.
    """
    response_lengths = response_lengths.to(torch.int64).reshape(-1)
    if not marker_ids(marker):
        return response_lengths
    flat = input_ids.reshape(-1)
    cu = cu_seqlens.to(torch.int64).reshape(-1).to(flat.device)
    response_lengths = response_lengths.to(flat.device)
    segment = torch.repeat_interleave(torch.arange(cu.numel() - 1, device=flat.device), cu.diff())
    response_start = (cu[1:] - response_lengths)[segment]  # (N,) start of each token's response
    offset = torch.arange(flat.numel(), device=flat.device) - response_start  # position within the response
    hit = marker_ends(flat, offset, marker)  # negative offsets (prompt tokens) never match
    last = torch.full_like(response_lengths, -1)
    last.scatter_reduce_(0, segment[hit], offset[hit], reduce="amax")
    return torch.where(last >= 0, last + 1, response_lengths)


def pool_at_positions(
    hidden: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, offset: int = 0
) -> torch.Tensor:
    """Weighted sum of the rows of a flat hidden-state slice at the given positions, in float32.

    ``out[b] = sum_j weight[b, j] * hidden[index[b, j] - offset]`` over the slots whose position falls
    inside this slice ``[offset, offset + N)``; slots outside contribute nothing. With the whole token axis
    (``offset = 0``) this is the pooled mean; with sequence-parallel slices, summing the per-rank results
    gives the same mean (up to float32 summation order).

    Args:
        hidden: ``(N, H)`` (or ``(1, N, H)``) hidden states of the slice, any float dtype.
        index: ``(B, k)`` int64 flat positions (from ``pooled_positions_*``).
        weight: ``(B, k)`` float32 weights.
        offset: flat position of ``hidden[0]``.

    Returns:
        ``(B, H)`` float32.
    """
    if hidden.dim() == 3:
        if hidden.shape[0] != 1:
            raise ValueError(f"packed hidden states must be (N, H) or (1, N, H), got {tuple(hidden.shape)}")
        hidden = hidden[0]
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be (N, H), got shape {tuple(hidden.shape)}")
    local = index - offset
    inside = (local >= 0) & (local < hidden.shape[0])
    weight = torch.where(inside, weight.to(torch.float32), torch.zeros_like(weight, dtype=torch.float32))
    local = torch.where(inside, local, torch.zeros_like(local))
    if hidden.shape[0] == 0:  # an empty slice: nothing to read
        return torch.zeros(index.shape[0], hidden.shape[1], dtype=torch.float32, device=hidden.device)
    # Gather only the B * k rows needed, then upcast: never materialise the whole slice in float32.
    rows = hidden[local.reshape(-1)].to(torch.float32).reshape(*index.shape, hidden.shape[1])  # (B, k, H)
    return (rows * weight.unsqueeze(-1)).sum(1)


def pool_packed(
    hidden: torch.Tensor,
    cu_seqlens: torch.Tensor,
    response_lengths: torch.Tensor,
    k: int = DEFAULT_POOL_TOKENS,
    response_pool_lengths: torch.Tensor | None = None,
) -> PooledFeatures:
    """Pool phi(x) and phi(y) from hidden states in verl's packed (remove-padding) layout.

    Args:
        hidden: ``(total_nnz, H)`` or ``(1, total_nnz, H)``: the concatenated samples, each its prompt
            (padding stripped) followed by its response.
        cu_seqlens: ``(B + 1,)`` int cumulative lengths.
        response_lengths: ``(B,)`` int, ``R_i`` real response tokens of each sample.
        k: tokens pooled per part (official: 10).

    Returns:
        PooledFeatures with ``prompt`` and ``response`` of shape ``(B, H)`` in float32.
    """
    flat = hidden[0] if hidden.dim() == 3 and hidden.shape[0] == 1 else hidden
    if flat.dim() != 2:
        raise ValueError(f"packed hidden states must be (N, H) or (1, N, H), got {tuple(hidden.shape)}")
    total = int(cu_seqlens.reshape(-1)[-1])
    if total != flat.shape[0]:
        raise ValueError(f"cu_seqlens[-1] = {total} but the packed row holds {flat.shape[0]} tokens")
    cut = None if response_pool_lengths is None else response_pool_lengths.to(flat.device)
    positions = pooled_positions_packed(cu_seqlens.to(flat.device), response_lengths.to(flat.device), k, cut)
    return PooledFeatures(
        prompt=pool_at_positions(flat, positions.prompt_index, positions.prompt_weight),
        response=pool_at_positions(flat, positions.response_index, positions.response_weight),
        prompt_empty=positions.prompt_empty,
        response_empty=positions.response_empty,
    )
