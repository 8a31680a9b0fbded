"""The probe worker and the replay-buffer actor: Ray actors that hold POISE's value-estimator state.

``ReplayBufferActor`` keeps the probes' training rows (whole prompt groups, per-domain capacity, oldest
evicted first: :class:`poise_verl.core.buffer.ProbeReplayBuffer`). ``ProbeWorker`` holds one probe per
domain (:class:`poise_verl.core.domain_probes.DomainProbes`), predicts values for a batch and refits every
domain's probe from scratch on that domain's rows. Both are CPU actors that ask Ray for no CPUs, so they sit
beside the GPU workers on the driver's node; the refit is issued after the step's advantages are fixed and
runs while the actor updates.
"""

from __future__ import annotations

import os
from typing import Any

import ray
import torch

from poise_verl.config import ProbeSettings, build_value_probe
from poise_verl.core.buffer import ProbeReplayBuffer
from poise_verl.core.domain_probes import DomainProbes


@ray.remote(num_cpus=0)
class ReplayBufferActor:
    """A Ray actor around :class:`poise_verl.core.buffer.ProbeReplayBuffer`."""

    def __init__(self, capacity: dict[str, int]):
        self.buffer = ProbeReplayBuffer(capacity_by_domain=capacity)

    def add_batch(self, prompt, response, scalar, targets, uids, domains) -> dict[str, int]:
        """Append a batch's rows, split into whole prompt groups; returns the rows held per domain."""
        self.buffer.add_groups(prompt, response, scalar, targets, uids, domains)
        return self.buffer.num_rows_by_domain

    def dataset(self):
        return self.buffer.dataset()

    def num_rows(self) -> int:
        return self.buffer.num_rows

    def state_dict(self) -> dict[str, Any]:
        return self.buffer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state)


@ray.remote(num_cpus=0)
class ProbeWorker:
    """Holds the probes g_d(phi); predicts, and refits from scratch on the replay buffer's rows."""

    def __init__(
        self,
        settings: ProbeSettings,
        domains: list[str],
        min_fit_rows: int,
        prompt_min_fit_rows: int | None = None,
    ):
        """``prompt_min_fit_rows``: also keep the prompt-only probes (``poise.selection.mode=probe``), each
        fitted once its domain holds that many prompt groups; None: no prompt probes."""
        # The refit overlaps the actor update: a few threads, never more than the node has, and the platform's
        # thread count where it sets one (the CPU platform's OMP_NUM_THREADS=1: more threads were slower there).
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(4, os.cpu_count() or 1))))
        self.probes = DomainProbes(domains, lambda: build_value_probe(settings), min_fit_rows)
        self.prompt_probes = None
        if prompt_min_fit_rows is not None:
            self.prompt_probes = DomainProbes(
                domains, lambda: build_value_probe(settings, prompt_only=True), prompt_min_fit_rows
            )

    def fitted_domains(self) -> list[str]:
        return self.probes.fitted_domains()

    def predict(self, prompt, response, scalar, domains) -> tuple[torch.Tensor, torch.Tensor]:
        """``(predictions (B,), fitted (B,) bool)``: g_d(phi_i) with each row's domain probe."""
        return self.probes.predict(prompt, response, scalar, domains)

    def fit_rows(self) -> dict[str, int]:
        """Buffer rows each domain's probe was last fitted on (what a prediction made now has seen)."""
        return dict(self.probes.fit_rows)

    def prompt_fitted_domains(self) -> list[str]:
        return self.prompt_probes.fitted_domains() if self.prompt_probes is not None else []

    def predict_prompts(self, prompt, domains) -> tuple[torch.Tensor, torch.Tensor]:
        """``(predicted pass rates (B,), fitted (B,) bool)`` of candidate prompts from their pooled states alone."""
        empty = prompt.new_zeros(prompt.shape[0], 0)
        return self.prompt_probes.predict(prompt, empty, empty, domains)

    def refit(self, buffer: ReplayBufferActor, rows_held: dict[str, int] | None = None) -> dict[str, float]:
        """Refit every domain's probe with enough rows (after this step's advantages are fixed).

        ``rows_held`` is the result of the push that must land first; the trainer passes its object ref, so
        Ray starts this call only once the push has finished.
        """
        dataset = ray.get(buffer.dataset.remote())
        per_domain = self.probes.refit(dataset)
        metrics: dict[str, float] = {}
        if self.prompt_probes is not None:
            for domain, values in self.prompt_probes.refit(dataset.prompt_rows()).items():
                metrics[f"poise/selection/prompt_probe_refit/{domain}"] = values["refit"]
                if "train_mae" in values:
                    metrics[f"poise/selection/prompt_probe_train_mae/{domain}"] = values["train_mae"]
        for domain, values in per_domain.items():
            metrics[f"poise/buffer_rows/{domain}"] = values["rows"]
            metrics[f"poise/probe_refit/{domain}"] = values["refit"]
            for key in ("train_mae", "train_rmse", "constant_fallback"):
                if key in values:
                    metrics[f"poise/probe_fit_{key}/{domain}"] = values[key]
        metrics["poise/buffer_rows"] = sum(values["rows"] for values in per_domain.values())
        metrics["poise/probe_refit"] = float(any(values["refit"] for values in per_domain.values()))
        # Fits so far, per domain and summed over the domains (one refit per fitted domain per step).
        for domain, count in self.probes.num_fits.items():
            metrics[f"poise/probe_num_fits/{domain}"] = float(count)
        metrics["poise/probe_num_fits"] = float(sum(self.probes.num_fits.values()))
        return metrics

    def state_dict(self) -> dict[str, Any]:
        state = self.probes.state_dict()
        if self.prompt_probes is not None:
            state["prompt_probes"] = self.prompt_probes.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = dict(state)
        prompt_state = state.pop("prompt_probes", None)
        self.probes.load_state_dict(state)
        if self.prompt_probes is not None and prompt_state is not None:
            self.prompt_probes.load_state_dict(prompt_state)
