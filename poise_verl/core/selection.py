"""Which prompts to generate for: a prompt-only value estimate from the policy's own state, or history.

GRPO, DAPO and POISE generate for every prompt the dataloader hands them; DAPO then discards the groups whose
rewards all agree (dynamic sampling) and pays for refills with extra generation. A pair of rollouts whose
rewards agree carries almost no gradient whatever the baseline, and on a prompt the policy always (or never)
solves nearly every pair agrees. Selection acts BEFORE generation: a step draws ``candidates_per_prompt``
times its usual number of prompts, scores them, and keeps the usual number, so the step generates exactly
its configured budget.

- ``probe``: p = g_x(x), the predicted pass rate of a prompt-only probe (PCA of the pooled prompt state at
  the probe layer, standardisation, ridge; fitted on the replay buffer with each prompt group's mean reward
  as target). Score: p (1 - p), half the probability 2 p (1 - p) that the two rollouts of a pair disagree.
- ``history`` (a GRESO-style filter; Zheng et al. 2025, arXiv 2506.02177, simplified): a prompt whose
  last z visits all had agreeing rewards is skipped with probability min(max_skip, 1 - (1 - base_skip)^z);
  a prompt never seen, or whose last visit disagreed, is always kept.

Every prompt stays reachable: under ``probe`` an ``exploration_share`` of the kept prompts is drawn
uniformly from the candidates the score did not pick, and under ``history`` no skip probability reaches 1.
A candidate left out comes back in the next epoch (the dataloader reshuffles).

Bias: like DAPO's filter, selection changes the distribution of prompts trained on (towards middle
difficulty, i.e. it reweights the objective); each kept prompt's advantages are POISE's, unbiased.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import torch

from poise_verl.core.cross_rollout import group_inverse

__all__ = ["HistoryFilter", "groups_all_agree", "pair_information", "prompt_id", "select_by_score"]


def pair_information(pass_rate: torch.Tensor) -> torch.Tensor:
    """``(C,)`` predicted pass rates p -> p (1 - p): half the chance that a pair of rollouts disagree."""
    p = pass_rate.to(torch.float64).clamp(0.0, 1.0)
    return p * (1.0 - p)


def select_by_score(
    scores: torch.Tensor, keep: int, exploration_share: float, generator: torch.Generator
) -> torch.Tensor:
    """Indices of ``keep`` candidates: the best-scored, plus a uniform draw from the rest.

    Args:
        scores: ``(C,)`` one score per candidate, higher is better; ties are broken at random.
        keep: how many to keep (<= C).
        exploration_share: the fraction of ``keep`` drawn uniformly from the candidates not picked by score.
        generator: the step's random generator (seeded: a rerun picks the same prompts).

    Returns:
        ``(keep,)`` int64 candidate indices: first the ``keep - round(share * keep)`` best, then the explored.
    """
    count = scores.shape[0]
    if not 0 <= keep <= count:
        raise ValueError(f"cannot keep {keep} of {count} candidates")
    if not 0.0 <= exploration_share <= 1.0:
        raise ValueError(f"exploration_share must be in [0, 1], got {exploration_share}")
    explore = round(exploration_share * keep)
    shuffled = torch.randperm(count, generator=generator)  # random tie-break under the stable sort
    order = shuffled[torch.argsort(scores[shuffled].to(torch.float64), descending=True, stable=True)]
    best, rest = order[: keep - explore], order[keep - explore :]
    explored = rest[torch.randperm(rest.shape[0], generator=generator)[:explore]]
    return torch.cat([best, explored])


def groups_all_agree(rewards: torch.Tensor, group_index: Any) -> tuple[torch.Tensor, list[Any]]:
    """Whether each prompt group's rewards all agree (a zero-variance group).

    Args:
        rewards: ``(B,)``; group_index: ``(B,)`` uids.

    Returns:
        ``(agree (G,) bool, uids (G,))``, in the order of ``group_inverse``.
    """
    inverse, counts, uniques = group_inverse(group_index)
    values = rewards.reshape(-1).to(torch.float64)
    low = torch.full((counts.shape[0],), float("inf"), dtype=torch.float64).scatter_reduce(
        0, inverse, values, "amin"
    )
    high = torch.full((counts.shape[0],), float("-inf"), dtype=torch.float64).scatter_reduce(
        0, inverse, values, "amax"
    )
    return (high - low) <= 1e-9, uniques


class HistoryFilter:
    """GRESO-style pre-rollout filter from each prompt's recent reward history.

    Args:
        base_skip: skip probability after one all-agreeing visit.
        max_skip: cap (< 1, so every prompt stays reachable).
    """

    def __init__(self, base_skip: float, max_skip: float):
        if not 0.0 <= base_skip <= max_skip < 1.0:
            raise ValueError(
                f"need 0 <= base_skip <= max_skip < 1, got base_skip={base_skip}, max_skip={max_skip}"
            )
        self.base_skip, self.max_skip = base_skip, max_skip
        self.streaks: dict[str, int] = {}  # prompt id -> consecutive recent visits whose rewards all agreed

    def skip_probability(self, prompt_ids: Sequence[str]) -> torch.Tensor:
        """``(C,)`` min(max_skip, 1 - (1 - base_skip)^z) per candidate; 0 for a prompt never seen."""
        streaks = torch.tensor([self.streaks.get(str(p), 0) for p in prompt_ids], dtype=torch.float64)
        return torch.clamp(1.0 - (1.0 - self.base_skip) ** streaks, max=self.max_skip)

    def select(self, prompt_ids: Sequence[str], keep: int, generator: torch.Generator) -> torch.Tensor:
        """Indices of ``keep`` candidates: those not skipped, in candidate order, then skipped ones if short."""
        if not 0 <= keep <= len(prompt_ids):
            raise ValueError(f"cannot keep {keep} of {len(prompt_ids)} candidates")
        skipped = torch.rand(
            len(prompt_ids), generator=generator, dtype=torch.float64
        ) < self.skip_probability(prompt_ids)
        order = torch.cat([(~skipped).nonzero().squeeze(1), skipped.nonzero().squeeze(1)])
        return order[:keep]

    def update(self, prompt_ids: Sequence[str], all_agree: Sequence[bool]) -> None:
        """Record one visit of each prompt: a streak grows on agreement and resets on disagreement."""
        for prompt, agree in zip(prompt_ids, all_agree, strict=True):
            self.streaks[str(prompt)] = self.streaks.get(str(prompt), 0) + 1 if bool(agree) else 0

    def state_dict(self) -> dict[str, Any]:
        return {"base_skip": self.base_skip, "max_skip": self.max_skip, "streaks": dict(self.streaks)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.streaks = {str(k): int(v) for k, v in state["streaks"].items()}


def prompt_id(messages: Any) -> str:
    """A stable id of a prompt (a hash of its chat messages), so its history survives epochs and resumes."""
    text = json.dumps(list(messages), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()
