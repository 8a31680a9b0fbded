"""The probe worker and the replay-buffer actor: Ray actors that hold POISE's value estimator state.

``ReplayBufferActor`` keeps the probe's training rows (whole prompt groups, per-domain capacity, oldest
evicted first: :class:`poise_verl.core.buffer.ProbeReplayBuffer`). ``ProbeWorker`` holds the probe
(:func:`poise_verl.core.probe.build_probe`), predicts values for a batch and refits from scratch on the
buffer's rows. Both are CPU actors that ask Ray for no CPUs, so they sit beside the GPU workers on the
driver's node; the refit is issued after the step's advantages are fixed and runs while the actor updates.
"""

from __future__ import annotations

import os
from typing import Any

import ray
import torch

from poise_verl.core.buffer import ProbeReplayBuffer
from poise_verl.core.probe import build_probe


@ray.remote(num_cpus=0)
class ReplayBufferActor:
    """A Ray actor around :class:`poise_verl.core.buffer.ProbeReplayBuffer`."""

    def __init__(self, capacity: dict[str, int]):
        self.buffer = ProbeReplayBuffer(capacity_by_domain=capacity)

    def add_groups(self, groups: list[dict[str, Any]]) -> int:
        """Append whole prompt groups; returns the rows held afterwards."""
        for group in groups:
            self.buffer.add_group(**group)
        return self.buffer.num_rows

    def dataset(self):
        return self.buffer.dataset()

    def num_rows(self) -> int:
        return self.buffer.num_rows

    def num_rows_by_domain(self) -> dict[str, int]:
        return self.buffer.num_rows_by_domain

    def state_dict(self) -> dict[str, Any]:
        return self.buffer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state)


@ray.remote(num_cpus=0)
class ProbeWorker:
    """Holds the probe g(phi); predicts, and refits from scratch on the replay buffer's rows."""

    def __init__(self, name: str, probe_kwargs: dict[str, Any], min_fit_rows: int):
        # The refit overlaps the actor update; a few threads, never more than the node has.
        torch.set_num_threads(max(1, min(4, (os.cpu_count() or 1))))
        self.probe = build_probe(name, **probe_kwargs)
        self.min_fit_rows = min_fit_rows
        self.num_fits = 0

    def is_fitted(self) -> bool:
        return self.probe.is_fitted

    def predict(self, prompt: torch.Tensor, response: torch.Tensor, scalars: torch.Tensor) -> torch.Tensor:
        """``(B,)`` predicted values g(phi_i) in [0, 1]."""
        return self.probe.predict(prompt, response, scalars)

    def refit(self, buffer: ReplayBufferActor, rows_held: int | None = None) -> dict[str, float]:
        """Fit the probe from scratch on everything the buffer holds (after this step's advantages).

        ``rows_held`` is the result of the push that must land first; the trainer passes its object ref, so
        Ray starts this call only once the push has finished.
        """
        data = ray.get(buffer.dataset.remote())
        rows = data.num_rows
        if rows < self.min_fit_rows:
            return {"poise/probe_fit_rows": float(rows), "poise/probe_refit": 0.0}
        metrics = self.probe.fit(data.prompt_feats, data.response_feats, data.scalar_feats, data.targets)
        self.num_fits += 1
        out = {f"poise/probe_fit_{k}": float(v) for k, v in metrics.items()}
        out.update({"poise/probe_fit_rows": float(rows), "poise/probe_refit": 1.0, "poise/probe_num_fits": float(self.num_fits)})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"probe": self.probe.state_dict(), "num_fits": self.num_fits}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.probe.load_state_dict(state["probe"])
        self.num_fits = int(state["num_fits"])
