"""Pooling in verl's padded layout: the tests' reference for the packed pooling POISE runs.

Training pools packed rows (``poise_verl.core.pooling``); these functions pool the same sequences laid out
the other way, a left-padded prompt block of width ``P`` followed by a right-padded response block of width
``T`` with an attention mask, as a transformers forward with ``output_hidden_states=True`` returns them.
They read the mask, not the packing, so an equal result from both layouts checks the packed positions. They
end in the core's ``pool_at_positions`` (the same slots, the same float32 arithmetic), so the two layouts
agree bit for bit; ``tests/core/test_pooling.py`` checks both against a plain loop.

Importable as ``pooling_reference`` from tests in a package folder (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from poise_verl.core.pooling import DEFAULT_POOL_TOKENS, PooledFeatures, PooledPositions, pool_at_positions


def response_cut_at_last_marker(
    response_ids: torch.Tensor, response_mask: torch.Tensor, marker: int | Sequence[int] | None
) -> torch.Tensor:
    """``(B,)`` response tokens up to and including the last end-of-thinking marker (all real tokens when absent).

    Args:
        response_ids: ``(B, T)`` response token ids, right-padded.
        response_mask: ``(B, T)``, 1 on real response tokens (a prefix of each row).
        marker: the marker's ids (one id, or several in a row), or None for no cut.
    """
    real = response_mask.to(torch.bool)
    lengths = real.sum(1).to(torch.int64)
    pattern = [marker] if isinstance(marker, int) else list(marker or [])
    width, m = response_ids.shape[1], len(pattern)
    if not pattern or width < m:
        return lengths
    # Window s covers tokens s .. s + m - 1: it is the marker when every token is real and equal to it.
    windows = response_ids.unfold(1, m, 1)  # (B, T - m + 1, m)
    real_windows = real.unfold(1, m, 1).all(-1)
    found = real_windows & (windows == torch.tensor(pattern, dtype=response_ids.dtype)).all(-1)
    starts = torch.arange(width - m + 1, device=response_ids.device).expand_as(found)
    last = torch.where(found, starts + m, torch.zeros_like(starts)).max(1).values  # (B,) 0 when absent
    return torch.where(last > 0, last, lengths)


def _last_real_positions(mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the last ``k`` real tokens of each row of a ``(B, W)`` 0/1 mask (any pattern).

    Returns ``(index (B, k) int64, weight (B, k) float32)``: slot ``j`` holds the ``j``-th real token from the
    end with weight ``1 / min(k, n)``; unused slots hold position 0 and weight 0.
    """
    batch, width = mask.shape
    real = mask.to(torch.int64)
    # rank_from_end[b, p] = number of real tokens at positions >= p (1 for the last real token).
    rank_from_end = real.flip(1).cumsum(1).flip(1)
    selected = (real > 0) & (rank_from_end <= k)
    # Scatter each selected position into slot rank - 1; everything else goes to a dump column k.
    slot = torch.where(selected, rank_from_end - 1, torch.full_like(rank_from_end, k))
    positions = torch.arange(width, device=mask.device).expand(batch, width)
    index = torch.zeros(batch, k + 1, dtype=torch.int64, device=mask.device)
    index.scatter_(1, slot, positions)
    used = real.sum(1).clamp(max=k)
    valid = torch.arange(k, device=mask.device).unsqueeze(0) < used.unsqueeze(1)
    weight = valid.to(torch.float32) / used.clamp(min=1).to(torch.float32).unsqueeze(1)
    index = torch.where(weight > 0, index[:, :k], torch.zeros_like(index[:, :k]))
    return index, weight


def pooled_positions_padded(
    attention_mask: torch.Tensor,
    prompt_length: int,
    k: int = DEFAULT_POOL_TOKENS,
    response_pool_lengths: torch.Tensor | None = None,
) -> PooledPositions:
    """Flat positions (row ``b``, column ``c`` is ``b * (P + T) + c``) and weights of the pooled tokens.

    Args:
        attention_mask: ``(B, P + T)``, 1 on real tokens; columns ``[0, P)`` are the (left-padded) prompt,
            ``[P, P + T)`` the (right-padded) response.
        prompt_length: ``P``.
        k: tokens pooled per part.
        response_pool_lengths: ``(B,)`` optional: pool the last ``k`` of the first ``C_i`` response tokens.
    """
    if k < 1:
        raise ValueError(f"the number of pooled tokens k must be >= 1, got {k}")
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (B, P + T), got shape {tuple(attention_mask.shape)}")
    batch, width = attention_mask.shape
    if not 0 <= prompt_length <= width:
        raise ValueError(f"prompt_length {prompt_length} outside [0, {width}]")
    mask = attention_mask != 0
    response_mask = mask[:, prompt_length:]
    if response_pool_lengths is not None:
        # Keep only the first C_i real response tokens (the response block is right-padded).
        ranks = response_mask.to(torch.int64).cumsum(1)  # 1-based rank of each real token
        response_mask = response_mask & (ranks <= response_pool_lengths.to(ranks.device).reshape(-1, 1))
    prompt_index, prompt_weight = _last_real_positions(mask[:, :prompt_length], k)
    response_index, response_weight = _last_real_positions(response_mask, k)
    row_start = (torch.arange(batch, device=mask.device) * width).unsqueeze(1)  # (B, 1)
    return PooledPositions(
        prompt_index=prompt_index + row_start,
        prompt_weight=prompt_weight,
        response_index=response_index + prompt_length + row_start,
        response_weight=response_weight,
        prompt_empty=~mask[:, :prompt_length].any(1),
        response_empty=~response_mask.any(1),
    )


def pool_padded(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_length: int,
    k: int = DEFAULT_POOL_TOKENS,
    response_pool_lengths: torch.Tensor | None = None,
) -> PooledFeatures:
    """Pool phi(x) and phi(y) from ``(B, P + T, H)`` hidden states in the padded layout, in float32."""
    if hidden.dim() != 3 or hidden.shape[:2] != attention_mask.shape:
        raise ValueError(
            f"hidden {tuple(hidden.shape)} must be (B, P + T, H) matching attention_mask "
            f"{tuple(attention_mask.shape)}"
        )
    positions = pooled_positions_padded(attention_mask, prompt_length, k, response_pool_lengths)
    flat = hidden.reshape(-1, hidden.shape[-1])
    return PooledFeatures(
        prompt=pool_at_positions(flat, positions.prompt_index, positions.prompt_weight),
        response=pool_at_positions(flat, positions.response_index, positions.response_weight),
        prompt_empty=positions.prompt_empty,
        response_empty=positions.response_empty,
    )
