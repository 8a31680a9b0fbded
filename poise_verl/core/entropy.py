"""Token-entropy statistics: the probe's scalar features.

GRPO/DAPO use token entropies only as a logged metric (or a loss bonus). POISE feeds a few entropy
summaries of each rollout to its value probe g next to the pooled hidden states; the official Qwen3-4B
config uses three: the mean token entropy over the whole output, over the reasoning part and over the
answer part (``DEFAULT_ENTROPY_FEATURES``). The entropies are the ones the actor already computes with the
old log-probs, so they cost nothing extra.

How a response splits into its reasoning and answer parts (``poise.entropy_split``, ``ENTROPY_SPLITS``):

- ``end_of_thinking`` (this module, on token ids): with ``e`` the last token of the first occurrence of the
  end-of-thinking marker among the response's real tokens (Qwen3's one ``</think>`` token; a marker may be
  several tokens, ``core.marker``), the reasoning part is the tokens up to and including ``e`` and the answer
  part the tokens after it.
- ``official_text``: the official code's rule, on the decoded text (``poise_verl.thinking.official_text_parts``
  builds the two parts; ``entropy_statistics(..., parts=...)`` takes them).

Rule of ``end_of_thinking`` when there is no split point:

- no marker (``end_of_thinking_ids`` None; the model has no thinking section; a project option, not in the
  official code): the whole response is the answer part and the reasoning part is empty.
- the marker is given but does not occur in a response (the model never closed its thinking, almost always
  because the response hit the length limit mid-thought): both parts are empty, so the reasoning and
  answer means are 0, as in the official code (``_rollout_entropy_features``: its ``<think>...</think>``
  and after-``</think>`` spans both need the closing tag). The whole-output statistics are unaffected.

An empty part (including an empty response) gives 0 for every statistic of that part, never NaN; the
whole-output statistics of an empty response are 0 as well.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from poise_verl.core.marker import marker_ends, marker_ids

__all__ = [
    "DEFAULT_ENTROPY_FEATURES",
    "ENTROPY_FEATURE_NAMES",
    "ENTROPY_SPLITS",
    "end_of_thinking_parts",
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

# The values of ``poise.entropy_split``: where the reasoning part ends (module docstring).
ENTROPY_SPLITS: tuple[str, ...] = ("end_of_thinking", "official_text")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, T)`` values and bool mask -> ``(B,)`` mean over the masked tokens, 0 where none."""
    count = mask.sum(1)
    total = torch.where(mask, values, torch.zeros_like(values)).sum(1)
    return total / count.clamp(min=1).to(values.dtype)


def end_of_thinking_parts(
    response_mask: torch.Tensor,
    response_ids: torch.Tensor | None = None,
    end_of_thinking_ids: int | Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``end_of_thinking`` split: ``(reasoning, answer)``, each ``(B, T)`` bool over the real tokens.

    Args:
        response_mask: ``(B, T)``, 1 on real response tokens (any pattern; the real tokens in order form the
            response, and the marker is matched as a contiguous run of them).
        response_ids: ``(B, T)`` response token ids; needed only with a marker.
        end_of_thinking_ids: the marker's token ids (one id for a one-token marker), or None for no marker.
    """
    mask = response_mask != 0
    marker = marker_ids(end_of_thinking_ids)
    if not marker:
        return torch.zeros_like(mask), mask  # no thinking section: everything is the answer
    if response_ids is None:
        raise ValueError("response_ids are required when end_of_thinking_ids are given")
    if response_ids.shape != mask.shape:
        raise ValueError(f"response_ids {tuple(response_ids.shape)} must match {tuple(mask.shape)}")
    batch, width = mask.shape
    # Real tokens moved to the front of each row, in order: the rank of a real token among the real ones is its
    # offset, so a marker run split by a masked-out token still matches, and no run crosses into the next row.
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    rank = torch.arange(width, device=mask.device).expand(batch, width)
    offsets = torch.where(mask.gather(1, order), rank, torch.full_like(rank, -1))  # (B, T) -1 on padding
    ends = marker_ends(response_ids.gather(1, order).reshape(-1), offsets.reshape(-1), marker).reshape(batch, width)
    first_end = torch.where(ends, rank, torch.full_like(rank, width)).min(1).values  # (B,) rank of e, or width
    closed = (first_end < width).unsqueeze(1)  # the response has the marker
    real_rank = mask.to(torch.int64).cumsum(1) - 1  # (B, T) rank of each real token among the real ones
    reasoning = mask & closed & (real_rank <= first_end.unsqueeze(1))
    answer = mask & closed & ~reasoning  # never closed: no answer part either (official)
    return reasoning, answer


def entropy_statistics(
    entropies: torch.Tensor,
    response_mask: torch.Tensor,
    response_ids: torch.Tensor | None = None,
    end_of_thinking_ids: int | Sequence[int] | None = None,
    *,
    parts: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-rollout summaries of the per-token entropies H_t of the policy at each response token.

    Args:
        entropies: ``(B, T)`` per-token entropies (any float dtype; computed in float32).
        response_mask: ``(B, T)``, 1 on real response tokens.
        response_ids: ``(B, T)`` response token ids; needed only to find the end-of-thinking marker.
        end_of_thinking_ids: the ids of the marker that closes the reasoning (Qwen3: the one ``</think>`` id),
            or None: the ``end_of_thinking`` split (``end_of_thinking_parts``).
        parts: ``(reasoning, answer)``, each ``(B, T)`` bool, from another split (``official_text``); the marker
            arguments are then unused.

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
    if parts is None:
        reasoning, answer = end_of_thinking_parts(response_mask, response_ids, end_of_thinking_ids)
    else:
        if any(part.shape != mask.shape for part in parts):
            raise ValueError(f"parts {[tuple(part.shape) for part in parts]} must both be {tuple(mask.shape)}")
        reasoning, answer = (part.to(torch.bool) & mask for part in parts)

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
