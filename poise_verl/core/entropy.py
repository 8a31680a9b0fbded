"""Token-entropy statistics: the probe's scalar features.

GRPO/DAPO use token entropies only as a logged metric (or a loss bonus). POISE feeds a few entropy
summaries of each rollout to its value probe g next to the pooled hidden states; the official Qwen3-4B
config uses three: the mean token entropy over the whole output, over the reasoning part and over the
answer part (``DEFAULT_ENTROPY_FEATURES``). The entropies are the ones the actor already computes with the
old log-probs, so they cost nothing extra.

Parts of a response (tokens where ``response_mask`` is 1, in order). With ``e`` the position of the first
end-of-thinking token (e.g. Qwen3's ``</think>``):

- reasoning part: the tokens up to and including ``e``;
- answer part: the tokens after ``e``.

Rule when there is no split point:

- ``end_of_thinking_token_id`` is None (the model has no thinking section; a project option, not in the
  official code): the whole response is the answer part and the reasoning part is empty.
- the id is given but does not occur in a response (the model never closed its thinking, almost always
  because the response hit the length limit mid-thought): both parts are empty, so the reasoning and
  answer means are 0, as in the official code (``_rollout_entropy_features``: its ``<think>...</think>``
  and after-``</think>`` spans both need the closing tag). The whole-output statistics are unaffected.

An empty part (including an empty response) gives 0 for every statistic of that part, never NaN; the
whole-output statistics of an empty response are 0 as well.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "DEFAULT_ENTROPY_FEATURES",
    "ENTROPY_FEATURE_NAMES",
    "entropy_feature_matrix",
    "entropy_statistics",
]

# The three scalars of the official Qwen3-4B feature-builder config (output / reasoning / answer mean).
DEFAULT_ENTROPY_FEATURES: tuple[str, ...] = (
    "entropy_mean",
    "entropy_reasoning_mean",
    "entropy_answer_mean",
)

# Every statistic ``entropy_statistics`` returns, in a stable order.
ENTROPY_FEATURE_NAMES: tuple[str, ...] = (
    "entropy_mean",
    "entropy_reasoning_mean",
    "entropy_answer_mean",
    "entropy_last",
    "entropy_max",
    "entropy_min",
)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` values and bool mask -> ``(B,)`` mean over the masked tokens, 0 where none."""
    count = mask.sum(1)
    total = torch.where(mask, values, torch.zeros_like(values)).sum(1)
    return total / count.clamp(min=1).to(values.dtype)


def entropy_statistics(
    entropies: torch.Tensor,
    response_mask: torch.Tensor,
    response_ids: torch.Tensor | None = None,
    end_of_thinking_token_id: int | None = None,
) -> dict[str, torch.Tensor]:
    """Per-rollout summaries of the per-token entropies H_t of the policy at each response token.

    Args:
        entropies: ``(B, T)`` per-token entropies (any float dtype; computed in float32).
        response_mask: ``(B, T)``, 1 on real response tokens.
        response_ids: ``(B, T)`` response token ids; needed only to find the end-of-thinking token.
        end_of_thinking_token_id: id of the token that closes the reasoning (Qwen3: ``</think>``), or None.

    Returns:
        dict name -> ``(B,)`` float32 with the keys of ``ENTROPY_FEATURE_NAMES``:
        ``entropy_mean`` (whole output), ``entropy_reasoning_mean``, ``entropy_answer_mean`` (the parts of
        the module docstring), ``entropy_last`` (last response token), ``entropy_max``, ``entropy_min``.
        Every statistic of an empty part is 0.
    """
    if entropies.dim() != 2 or entropies.shape != response_mask.shape:
        raise ValueError(
            f"entropies {tuple(entropies.shape)} and response_mask {tuple(response_mask.shape)} "
            "must both be (B, T)"
        )
    values = entropies.to(torch.float32)
    mask = response_mask != 0
    batch, width = mask.shape
    positions = torch.arange(width, device=mask.device).expand(batch, width)
    has_token = mask.any(1)  # (B,)

    if end_of_thinking_token_id is None:
        # No thinking section: everything is the answer.
        reasoning = torch.zeros_like(mask)
    else:
        if response_ids is None:
            raise ValueError("response_ids are required when end_of_thinking_token_id is given")
        if response_ids.shape != mask.shape:
            raise ValueError(f"response_ids {tuple(response_ids.shape)} must match {tuple(mask.shape)}")
        is_end = mask & (response_ids == end_of_thinking_token_id)
        closed = is_end.any(1, keepdim=True)  # (B, 1): the response has an end-of-thinking token
        first_end = torch.where(is_end, positions, torch.full_like(positions, width)).min(1).values
        reasoning = mask & closed & (positions <= first_end.unsqueeze(1))
    answer = mask & ~reasoning
    if end_of_thinking_token_id is not None:
        answer = answer & closed  # never closed: no answer part either (official)

    # Last real token: the largest masked position (0 for an empty row, then zeroed below).
    last_position = torch.where(mask, positions, torch.full_like(positions, -1)).max(1).values.clamp(min=0)
    last = values.gather(1, last_position.unsqueeze(1)).squeeze(1)
    zero = torch.zeros(batch, dtype=torch.float32, device=values.device)
    largest = torch.where(mask, values, torch.full_like(values, float("-inf"))).max(1).values
    smallest = torch.where(mask, values, torch.full_like(values, float("inf"))).min(1).values
    return {
        "entropy_mean": _masked_mean(values, mask),
        "entropy_reasoning_mean": _masked_mean(values, reasoning),
        "entropy_answer_mean": _masked_mean(values, answer),
        "entropy_last": torch.where(has_token, last, zero),
        "entropy_max": torch.where(has_token, largest, zero),
        "entropy_min": torch.where(has_token, smallest, zero),
    }


def entropy_feature_matrix(
    stats: dict[str, torch.Tensor], names: Sequence[str] = DEFAULT_ENTROPY_FEATURES
) -> torch.Tensor:
    """Stack the configured statistics into the probe's scalar-feature block.

    Args:
        stats: output of ``entropy_statistics`` (name -> ``(B,)``).
        names: which statistics, in order (official default: ``DEFAULT_ENTROPY_FEATURES``).

    Returns:
        ``(B, len(names))`` float32.
    """
    unknown = [name for name in names if name not in ENTROPY_FEATURE_NAMES]
    if unknown:
        raise ValueError(f"unknown entropy feature(s) {unknown}; valid names: {list(ENTROPY_FEATURE_NAMES)}")
    if not names:
        batch = next(iter(stats.values())).shape[0] if stats else 0
        return torch.zeros(batch, 0, dtype=torch.float32)
    return torch.stack([stats[name].to(torch.float32) for name in names], dim=1)
