"""Cross-rollout baselines: POISE's unbiased advantage from a learned value probe.

How it differs from GRPO/DAPO: GRPO/DAPO compute A_i = (R_i - mean_g R) / std_g R over a large group
(DAPO: n = 16, plus dynamic sampling to drop groups whose rewards all agree). POISE samples only n = 2
rollouts per prompt and takes the baseline from a value probe g evaluated on the SIBLING rollouts'
features:

    b_i = mean_{j != i, j in group(i)} g(phi_j),        A_i = R_i - b_i     (no std normalisation).

Why the sibling and not the rollout itself: given the prompt, phi_j is independent of rollout i's sampled
tokens, so E[b_i grad log pi(y_i | x)] = E[b_i] E[grad log pi(y_i | x)] = 0 and the policy gradient stays
unbiased whatever g is. g(phi_i) itself depends on y_i, so using it as i's own baseline biases the
gradient (``poise_verl.core.montecarlo`` measures both). The same argument requires g to be independent of
R_i: advantages are fixed BEFORE the probe is refit on this batch.

The probe's training target for row j is likewise the leave-one-out mean of the siblings' rewards,
``sibling_targets``: with n = 2 it is the other rollout's reward, an unbiased estimate of V(x) that does not
contain R_j. (verl's ``compute_rloo_vectorized_outcome_advantage`` computes R_i - mean_{j != i} R_j, the
same leave-one-out mean, with the rewards themselves as the baseline.)

Group ids may be a numpy array of uids (verl's ``non_tensor_batch["uid"]``) or an integer tensor;
siblings may sit anywhere in the batch.

A rollout whose siblings all failed to generate (verl keeps a group whose other agent-loop sessions errored or
returned nothing) has no sibling to take a baseline from: ``cross_rollout_advantages`` gives it advantage 0, no
policy gradient, as if it had not been drawn (``lone_rows`` finds them). Under GRPO verl gives such a row its
raw reward as advantage (baseline 0); here the rule keeps every baseline a sibling's, and the gradient stays
unbiased as long as a generation fails independently of the reward its rollout would have earned.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = [
    "check_groups",
    "cross_baselines",
    "cross_rollout_advantages",
    "group_inverse",
    "leave_one_out_mean",
    "lone_rows",
    "sibling_targets",
]


def group_inverse(group_index: Any) -> tuple[torch.Tensor, torch.Tensor, list[Any]]:
    """Map group ids to dense group numbers.

    Args:
        group_index: ``(B,)`` numpy array (any hashable/sortable uids) or integer tensor.

    Returns:
        ``(inverse (B,) int64, counts (G,) int64, uniques)``: row i belongs to group ``inverse[i]``,
        which has ``counts[inverse[i]]`` rows and id ``uniques[inverse[i]]``.
    """
    if isinstance(group_index, torch.Tensor):
        uniques, inverse, counts = torch.unique(
            group_index.reshape(-1), return_inverse=True, return_counts=True
        )
        return inverse.to(torch.int64), counts.to(torch.int64), uniques.tolist()
    array = np.asarray(group_index).reshape(-1)
    if array.dtype == object:  # verl stores uids as python strings in an object array
        array = array.astype(str)
    uniques, inverse, counts = np.unique(array, return_inverse=True, return_counts=True)
    return (
        torch.from_numpy(inverse.reshape(-1).astype(np.int64)),
        torch.from_numpy(counts.astype(np.int64)),
        uniques.tolist(),
    )


def check_groups(group_index: Any, n: int | None = None) -> None:
    """Raise ``ValueError`` naming the first group with fewer than 2 rows (or not exactly ``n`` rows).

    Args:
        group_index: ``(B,)`` uids (numpy) or int tensor.
        n: the expected group size (``rollout.n``), or None to accept any size >= 2.
    """
    _, counts, uniques = group_inverse(group_index)
    _check_counts(counts, uniques, n)


def _check_counts(counts: torch.Tensor, uniques: list[Any], n: int | None) -> None:
    for uid, count in zip(uniques, counts.tolist(), strict=True):
        if count < 2:
            raise ValueError(
                f"group uid={uid!r} has {count} rollout(s); cross-rollout baselines need at least 2 per prompt"
            )
        if n is not None and count != n:
            raise ValueError(f"group uid={uid!r} has {count} rollouts, expected n = {n}")


def lone_rows(group_index: Any, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``(B,)`` bool: True on the valid rows whose group holds no other valid row (no sibling to baseline them).

    Args:
        group_index: ``(B,)`` uids or int tensor.
        valid: ``(B,)`` bool, False on rows that belong to no group (verl's padding rows); None: all valid.
    """
    keep = _valid_mask(group_index, valid)
    lone = torch.zeros_like(keep)
    if bool(keep.any()):
        inverse, counts, _ = group_inverse(_select(group_index, keep))
        lone[keep] = counts[inverse] < 2
    return lone


def _valid_mask(group_index: Any, valid: torch.Tensor | None) -> torch.Tensor:
    size = group_index.numel() if isinstance(group_index, torch.Tensor) else np.asarray(group_index).size
    return torch.ones(size, dtype=torch.bool) if valid is None else valid.reshape(-1).to("cpu", torch.bool)


def _select(group_index: Any, rows: torch.Tensor) -> Any:
    if isinstance(group_index, torch.Tensor):
        return group_index.reshape(-1)[rows.to(group_index.device)]
    return np.asarray(group_index).reshape(-1)[rows.numpy()]


def leave_one_out_mean(values: torch.Tensor, group_index: Any) -> torch.Tensor:
    """``out_i = mean_{j != i, j in group(i)} values_j``, vectorised over the batch.

    Computed as ``(S_g - v_i) / (n_g - 1)`` with the group sum ``S_g`` accumulated in float64.

    Args:
        values: ``(B,)``.
        group_index: ``(B,)`` uids or int tensor; every group must have >= 2 rows.

    Returns:
        ``(B,)`` in the dtype of ``values``.
    """
    values = values.reshape(-1)
    inverse, counts, uniques = group_inverse(group_index)
    if inverse.shape[0] != values.shape[0]:
        raise ValueError(f"group_index has {inverse.shape[0]} entries, values have {values.shape[0]}")
    _check_counts(counts, uniques, None)
    inverse, counts = inverse.to(values.device), counts.to(values.device)
    wide = values.to(torch.float64)
    group_sum = torch.zeros(counts.shape[0], dtype=torch.float64, device=values.device)
    group_sum.index_add_(0, inverse, wide)  # S_g = sum over the group
    others = (group_sum[inverse] - wide) / (counts[inverse] - 1).to(torch.float64)
    return others.to(values.dtype if values.is_floating_point() else torch.float32)


def sibling_targets(rewards: torch.Tensor, group_index: Any) -> torch.Tensor:
    """Probe training target of each rollout: the mean reward of its siblings.

    target_j = mean_{i != j, i in group(j)} R_i; the probe learns g(phi_j) ~ E[R | x] from rows that do
    not contain R_j. With n = 2 this is simply the other rollout's reward.

    Args:
        rewards: ``(B,)`` sequence-level rewards R_i.
        group_index: ``(B,)`` uids or int tensor.

    Returns:
        ``(B,)`` targets.
    """
    return leave_one_out_mean(rewards, group_index)


def cross_baselines(predictions: torch.Tensor, group_index: Any) -> torch.Tensor:
    """Cross-rollout baseline b_i = mean_{j != i} g(phi_j) over i's siblings.

    Args:
        predictions: ``(B,)`` probe predictions g(phi_j) of every rollout (from a probe fitted on earlier
            batches only).
        group_index: ``(B,)`` uids or int tensor.

    Returns:
        ``(B,)`` baselines.
    """
    return leave_one_out_mean(predictions, group_index)


def cross_rollout_advantages(
    rewards: torch.Tensor,
    predictions: torch.Tensor,
    group_index: Any,
    response_mask: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """POISE advantages A_i = R_i - b_i, b_i = mean_{j != i} g(phi_j), on every response token.

    No std normalisation (unlike GRPO/DAPO): the baseline already carries the prompt's value scale. Passing
    the rewards themselves as ``predictions`` gives RLOO (b_i = mean of the siblings' rewards), which is how
    the bootstrap steps run through the same code.

    Args:
        rewards: ``(B,)`` sequence-level rewards R_i.
        predictions: ``(B,)`` g(phi_i) of every rollout.
        group_index: ``(B,)`` uids or int tensor.
        response_mask: ``(B, T)``, 1 on response tokens.
        valid: ``(B,)`` bool, False on rows that are no rollout of a prompt (verl's padding rows, which share
            a made-up uid): they get advantage 0 and take no part in any group. None: every row is valid.

    Returns:
        ``(B, T)`` float32, A_i broadcast over i's response tokens and 0 elsewhere; 0 also on a valid row with no
        valid sibling (``lone_rows``).
    """
    rewards = rewards.reshape(-1).to(torch.float32)
    batch = rewards.shape[0]
    if response_mask.dim() != 2 or response_mask.shape[0] != batch:
        raise ValueError(f"response_mask {tuple(response_mask.shape)} must be (B, T) with B = {batch}")
    keep = _valid_mask(group_index, valid)
    keep = keep & ~lone_rows(group_index, keep)  # no sibling, no baseline: advantage 0
    index = _select(group_index, keep)
    per_rollout = torch.zeros(batch, dtype=torch.float32, device=rewards.device)
    if bool(keep.any()):
        rows = keep.to(rewards.device)
        baselines = cross_baselines(predictions.reshape(-1)[rows].to(torch.float32), index)  # b_i
        per_rollout[rows] = rewards[rows] - baselines.to(rewards.device)
    return per_rollout.unsqueeze(1) * response_mask.to(torch.float32)  # A_i = R_i - b_i on response tokens
