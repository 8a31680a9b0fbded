"""Replay buffer of probe training rows.

GRPO/DAPO keep nothing between steps. POISE refits its value probe from scratch every step on the most
recent rows of a buffer, so that the probe follows the moving policy while seeing more than one batch: a
row is ``(phi_j, target_j)``, with phi_j = (pooled prompt state, pooled response state, scalar features)
and target_j the mean reward of j's siblings.

Rules:

- rows enter as whole prompt groups (the rollouts of one prompt, identified by its uid) and leave as
  whole groups, so a group's rows are never split;
- capacity is counted in ROWS per domain (official: math 4096, code 3072, other 3072); after an insert,
  the oldest groups of that domain are evicted until the domain fits;
- a domain missing from the capacity table is stored under ``fallback_domain`` ("other"); a group larger
  than its domain's capacity is a configuration error (``ValueError``), never silently dropped;
- within a call, groups are aged in order of first appearance in the batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["FALLBACK_DOMAIN", "ProbeDataset", "ProbeReplayBuffer", "storage_domain"]

# Where rows of a domain that has no capacity of its own go (the official code's "other").
FALLBACK_DOMAIN = "other"


def storage_domain(
    domain: str, known_domains: Mapping[str, Any] | Sequence[str], fallback: str = FALLBACK_DOMAIN
) -> str:
    """The domain a row of ``domain`` is stored (and probed) under: itself when known, else ``fallback``."""
    return str(domain) if str(domain) in known_domains else fallback


@dataclass(frozen=True)
class ProbeDataset:
    """The buffer's rows, concatenated (domains in capacity-table order, oldest group first).

    Attributes:
        prompt_feats: ``(N, Hp)``; response_feats: ``(N, Hr)``; scalar_feats: ``(N, S)``; targets: ``(N,)``.
        domains: length-N list of each row's (stored) domain.
        uids: length-N list of each row's group uid.
    """

    prompt_feats: torch.Tensor
    response_feats: torch.Tensor
    scalar_feats: torch.Tensor
    targets: torch.Tensor
    domains: list[str]
    uids: list[str]

    @property
    def num_rows(self) -> int:
        return int(self.targets.shape[0])

    def prompt_rows(self) -> ProbeDataset:
        """One row per prompt group: its pooled prompt state and mean target, for the prompt-only probe.

        The mean over a group of its rows' sibling targets (leave-one-out means) is the group's mean reward.
        Response and scalar blocks have width 0.
        """
        first: dict[str, int] = {}
        for row, uid in enumerate(self.uids):
            first.setdefault(uid, row)
        number = {uid: group for group, uid in enumerate(first)}
        inverse = torch.tensor([number[uid] for uid in self.uids], dtype=torch.long)
        groups = len(first)
        sums = torch.zeros(groups, dtype=self.targets.dtype).index_add_(0, inverse, self.targets)
        counts = torch.zeros(groups, dtype=self.targets.dtype).index_add_(
            0, inverse, torch.ones_like(self.targets)
        )
        rows = torch.tensor(list(first.values()), dtype=torch.long)
        return ProbeDataset(
            prompt_feats=self.prompt_feats[rows],
            response_feats=self.response_feats[rows][:, :0],
            scalar_feats=self.scalar_feats[rows][:, :0],
            targets=sums / counts.clamp(min=1),
            domains=[self.domains[i] for i in rows.tolist()],
            uids=list(first),
        )

    def select_domain(self, domain: str) -> ProbeDataset:
        """The rows stored under ``domain``."""
        rows = torch.tensor([i for i, d in enumerate(self.domains) if d == domain], dtype=torch.long)
        return ProbeDataset(
            prompt_feats=self.prompt_feats[rows],
            response_feats=self.response_feats[rows],
            scalar_feats=self.scalar_feats[rows],
            targets=self.targets[rows],
            domains=[domain] * int(rows.numel()),
            uids=[self.uids[i] for i in rows.tolist()],
        )


@dataclass
class _Group:
    uid: str
    prompt: torch.Tensor  # (n, Hp)
    response: torch.Tensor  # (n, Hr)
    scalar: torch.Tensor  # (n, S)
    targets: torch.Tensor  # (n,)

    @property
    def rows(self) -> int:
        return int(self.targets.shape[0])


class ProbeReplayBuffer:
    """Per-domain FIFO of whole prompt groups, bounded in rows.

    Args:
        capacity_by_domain: domain -> maximum rows (``poise.buffer.capacity``; official: math 4096, code 3072,
            other 3072).
        fallback_domain: where groups of a domain absent from the table go (must be in the table).
    """

    def __init__(self, capacity_by_domain: Mapping[str, int], fallback_domain: str = FALLBACK_DOMAIN):
        self._reset(capacity_by_domain, fallback_domain)

    def _reset(self, capacity_by_domain: Mapping[str, int], fallback_domain: str) -> None:
        capacity = dict(capacity_by_domain)
        if fallback_domain not in capacity:
            raise ValueError(
                f"fallback_domain {fallback_domain!r} must be one of the capacity table's domains "
                f"{sorted(capacity)}"
            )
        bad = {domain: rows for domain, rows in capacity.items() if int(rows) < 1}
        if bad:
            raise ValueError(f"every domain capacity must be >= 1 row, got {bad}")
        self.capacity_by_domain = {str(domain): int(rows) for domain, rows in capacity.items()}
        self.fallback_domain = fallback_domain
        self._groups: dict[str, deque[_Group]] = {domain: deque() for domain in self.capacity_by_domain}
        self._rows: dict[str, int] = dict.fromkeys(self.capacity_by_domain, 0)
        self._dims: tuple[int, int, int] | None = None

    # ----------------------------------------------------------------- sizes
    @property
    def num_rows(self) -> int:
        """Rows held, all domains together."""
        return sum(self._rows.values())

    @property
    def num_rows_by_domain(self) -> dict[str, int]:
        """Rows held per (stored) domain."""
        return dict(self._rows)

    def storage_domain(self, domain: str) -> str:
        """The domain a group of ``domain`` is stored under (itself, or the fallback)."""
        return storage_domain(domain, self.capacity_by_domain, self.fallback_domain)

    # ----------------------------------------------------------------- inserting
    def add_group(
        self,
        uid: str,
        domain: str,
        prompt_feats: torch.Tensor,
        response_feats: torch.Tensor,
        scalar_feats: torch.Tensor,
        targets: torch.Tensor,
    ) -> list[str]:
        """Append one prompt group and evict the oldest groups of its domain until it fits.

        Args:
            uid: the prompt's group id.
            domain: the data domain (e.g. "math"); unknown ones are stored under ``fallback_domain``.
            prompt_feats: ``(n, Hp)``; response_feats: ``(n, Hr)``; scalar_feats: ``(n, S)``;
                targets: ``(n,)``, the group's rows.

        Returns:
            uids of the evicted groups.
        """
        group = _Group(
            uid=str(uid),
            prompt=prompt_feats.detach().to("cpu").clone(),
            response=response_feats.detach().to("cpu").clone(),
            scalar=scalar_feats.detach().to("cpu").clone(),
            targets=targets.detach().to("cpu").reshape(-1).clone(),
        )
        rows = group.rows
        if rows == 0:
            raise ValueError(f"group {uid!r} has no rows")
        if not (group.prompt.dim() == group.response.dim() == group.scalar.dim() == 2):
            raise ValueError("feature blocks must be 2-D (rows, features)")
        if not group.prompt.shape[0] == group.response.shape[0] == group.scalar.shape[0] == rows:
            raise ValueError(f"group {uid!r}: feature blocks and targets disagree on the number of rows")
        dims = (group.prompt.shape[1], group.response.shape[1], group.scalar.shape[1])
        if self._dims is not None and dims != self._dims:
            raise ValueError(
                f"group {uid!r} has feature sizes (Hp, Hr, S) = {dims}, buffer holds {self._dims}"
            )
        stored = self.storage_domain(domain)
        capacity = self.capacity_by_domain[stored]
        if rows > capacity:
            raise ValueError(
                f"group {uid!r} has {rows} rows but domain {stored!r} holds at most {capacity}; "
                "raise its capacity"
            )
        self._dims = dims
        self._groups[stored].append(group)
        self._rows[stored] += rows
        evicted = []
        while self._rows[stored] > capacity:  # oldest first, whole groups only
            oldest = self._groups[stored].popleft()
            self._rows[stored] -= oldest.rows
            evicted.append(oldest.uid)
        return evicted

    def add_groups(
        self,
        prompt_feats: torch.Tensor,
        response_feats: torch.Tensor,
        scalar_feats: torch.Tensor,
        targets: torch.Tensor,
        uids: Sequence[Any] | np.ndarray,
        domains: Sequence[str] | np.ndarray,
    ) -> list[str]:
        """Split a batch into prompt groups by uid and add them, in order of first appearance.

        Args:
            prompt_feats: ``(B, Hp)``; response_feats: ``(B, Hr)``; scalar_feats: ``(B, S)``; targets:
                ``(B,)``.
            uids: ``(B,)`` group id of each row (siblings may sit anywhere in the batch).
            domains: ``(B,)`` domain of each row; must agree within a group.

        Returns:
            uids of the evicted groups.
        """
        uid_list = [str(uid) for uid in np.asarray(uids, dtype=object).reshape(-1)]
        domain_list = [str(domain) for domain in np.asarray(domains, dtype=object).reshape(-1)]
        if len(uid_list) != targets.shape[0] or len(domain_list) != targets.shape[0]:
            raise ValueError(
                f"uids ({len(uid_list)}) and domains ({len(domain_list)}) need one entry per row "
                f"({targets.shape[0]})"
            )
        rows_of: dict[str, list[int]] = {}
        for row, uid in enumerate(uid_list):
            rows_of.setdefault(uid, []).append(row)
        evicted: list[str] = []
        for uid, rows in rows_of.items():
            group_domains = {domain_list[row] for row in rows}
            if len(group_domains) != 1:
                raise ValueError(f"group {uid!r} spans several domains: {sorted(group_domains)}")
            index = torch.tensor(rows, dtype=torch.int64)
            evicted += self.add_group(
                uid,
                group_domains.pop(),
                prompt_feats.index_select(0, index.to(prompt_feats.device)),
                response_feats.index_select(0, index.to(response_feats.device)),
                scalar_feats.index_select(0, index.to(scalar_feats.device)),
                targets.index_select(0, index.to(targets.device)),
            )
        return evicted

    # ----------------------------------------------------------------- reading
    def dataset(self, domains: Sequence[str] | None = None) -> ProbeDataset:
        """All rows (or those of the given stored domains), concatenated.

        Returns:
            ProbeDataset with ``(N, Hp)``, ``(N, Hr)``, ``(N, S)``, ``(N,)`` tensors; empty tensors of the
            right width when the buffer holds nothing (width 0 before the first insert).
        """
        selected = list(self.capacity_by_domain) if domains is None else [str(d) for d in domains]
        unknown = [domain for domain in selected if domain not in self.capacity_by_domain]
        if unknown:
            raise ValueError(f"unknown domain(s) {unknown}; stored domains: {list(self.capacity_by_domain)}")
        groups = [(domain, group) for domain in selected for group in self._groups[domain]]
        hp, hr, s = self._dims if self._dims is not None else (0, 0, 0)
        if not groups:
            return ProbeDataset(
                torch.zeros(0, hp), torch.zeros(0, hr), torch.zeros(0, s), torch.zeros(0), [], []
            )
        return ProbeDataset(
            prompt_feats=torch.cat([group.prompt for _, group in groups]),
            response_feats=torch.cat([group.response for _, group in groups]),
            scalar_feats=torch.cat([group.scalar for _, group in groups]),
            targets=torch.cat([group.targets for _, group in groups]),
            domains=[domain for domain, group in groups for _ in range(group.rows)],
            uids=[group.uid for _, group in groups for _ in range(group.rows)],
        )

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Plain tensors, lists, ints and strings; ``torch.save``-able and ``weights_only``-loadable."""
        per_domain: dict[str, Any] = {}
        for domain, groups in self._groups.items():
            data = self.dataset([domain])
            per_domain[domain] = {
                "uids": [group.uid for group in groups],
                "group_rows": [group.rows for group in groups],
                "prompt_feats": data.prompt_feats,
                "response_feats": data.response_feats,
                "scalar_feats": data.scalar_feats,
                "targets": data.targets,
            }
        return {
            "capacity_by_domain": dict(self.capacity_by_domain),
            "fallback_domain": self.fallback_domain,
            "dims": list(self._dims) if self._dims is not None else None,
            "domains": per_domain,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the buffer saved by ``state_dict`` (capacities included)."""
        self._reset(state["capacity_by_domain"], state["fallback_domain"])
        self._dims = tuple(state["dims"]) if state["dims"] is not None else None
        for domain, saved in state["domains"].items():
            start = 0
            for uid, rows in zip(saved["uids"], saved["group_rows"], strict=True):
                rows_slice = slice(start, start + rows)
                self._groups[domain].append(
                    _Group(
                        uid=uid,
                        prompt=saved["prompt_feats"][rows_slice].clone(),
                        response=saved["response_feats"][rows_slice].clone(),
                        scalar=saved["scalar_feats"][rows_slice].clone(),
                        targets=saved["targets"][rows_slice].clone(),
                    )
                )
                self._rows[domain] += rows
                start += rows
