"""One value probe per domain, each fitted on its own domain's rows of the replay buffer.

On mixed data (math and code prompts in one run, GURU-style) the expected reward depends on the domain's
reward rule as much as on the prompt, so the official code keeps one probe per domain (math, code, other;
holi-lab/POISE ``src/poise/domain_estimator_bank.py``), each refit from scratch on that domain's part of the
buffer, and routes each rollout to its domain's probe. A rollout of a domain not in the table goes to
``fallback`` ("other"), the rule the buffer stores it by (``buffer.storage_domain``).

Rule for a domain with too few rows. The official bank fits a domain only after it has seen a number of
steps of that domain (and refuses to start when a domain has no rows at all). Here a domain's probe is
(re)fitted once the buffer holds at least ``min_fit_rows`` rows of that domain; until then ``predict``
marks its rows as unfitted (``fitted = False``) and the trainer baselines them with the sibling's reward
(RLOO), logged once when it happens. RLOO is itself an unbiased baseline, so the fallback changes variance,
never the expected gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from poise_verl.core.buffer import FALLBACK_DOMAIN, ProbeDataset, storage_domain
from poise_verl.core.probe import ValueProbe

__all__ = ["DomainProbes"]


class DomainProbes:
    """A probe per domain.

    Args:
        domains: the domains (``poise.buffer.capacity``'s keys; must include ``fallback``).
        make_probe: builds a fresh, unfitted probe (``config.build_value_probe`` binds the settings).
        min_fit_rows: a domain's probe is fitted once its buffer rows reach this many.
        fallback: the domain rows of an unknown domain are routed to.
    """

    def __init__(
        self,
        domains: Sequence[str],
        make_probe: Callable[[], ValueProbe],
        min_fit_rows: int,
        fallback: str = FALLBACK_DOMAIN,
    ):
        if fallback not in domains:
            raise ValueError(f"fallback domain {fallback!r} must be one of {list(domains)}")
        self.domains = [str(domain) for domain in domains]
        self.fallback = fallback
        self.min_fit_rows = min_fit_rows
        self.probes: dict[str, ValueProbe] = {domain: make_probe() for domain in self.domains}
        self.num_fits: dict[str, int] = dict.fromkeys(self.domains, 0)
        # Buffer rows each domain's probe was last fitted on (0: never fitted).
        self.fit_rows: dict[str, int] = dict.fromkeys(self.domains, 0)

    def route(self, domains: Sequence[str]) -> list[str]:
        """The probe domain of each row."""
        return [storage_domain(domain, self.domains, self.fallback) for domain in domains]

    def fitted_domains(self) -> list[str]:
        return [domain for domain in self.domains if self.probes[domain].is_fitted]

    def predict(
        self, prompt: torch.Tensor, response: torch.Tensor, scalar: torch.Tensor, domains: Sequence[str]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """g_d(phi_i) of each row with its domain's probe.

        Args:
            prompt: ``(B, Hp)``; response: ``(B, Hr)``; scalar: ``(B, S)``; domains: B domain names.

        Returns:
            ``(predictions (B,) float32, fitted (B,) bool)``: rows whose domain's probe is not fitted yet have
            ``fitted = False`` and prediction 0 (not to be used).
        """
        routed = self.route(domains)
        predictions = torch.zeros(len(routed), dtype=torch.float32)
        fitted = torch.zeros(len(routed), dtype=torch.bool)
        for domain in dict.fromkeys(routed):
            probe = self.probes[domain]
            if not probe.is_fitted:
                continue
            rows = torch.tensor([i for i, d in enumerate(routed) if d == domain], dtype=torch.long)
            predictions[rows] = probe.predict(prompt[rows], response[rows], scalar[rows]).cpu()
            fitted[rows] = True
        return predictions, fitted

    def refit(self, dataset: ProbeDataset) -> dict[str, dict[str, float]]:
        """Refit, from scratch, the probe of every domain whose buffer rows reach ``min_fit_rows``.

        Args:
            dataset: the replay buffer's rows (``ProbeReplayBuffer.dataset()``), domains as stored.

        Returns:
            domain -> metrics: ``rows`` and ``refit`` (0 or 1) for every domain, plus the probe's fit metrics
            (``train_mae`` ...) for the refit ones.
        """
        metrics: dict[str, dict[str, float]] = {}
        for domain in self.domains:
            data = dataset.select_domain(domain)
            out = {"rows": float(data.num_rows), "refit": 0.0}
            if data.num_rows >= self.min_fit_rows:
                fit = self.probes[domain].fit(
                    data.prompt_feats, data.response_feats, data.scalar_feats, data.targets
                )
                self.num_fits[domain] += 1
                self.fit_rows[domain] = int(data.num_rows)
                out.update({**fit, "refit": 1.0, "num_fits": float(self.num_fits[domain])})
            out["fitted"] = float(self.probes[domain].is_fitted)
            metrics[domain] = out
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {
            "domains": {domain: self.probes[domain].state_dict() for domain in self.domains},
            "num_fits": dict(self.num_fits),
            "fit_rows": dict(self.fit_rows),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "domains" not in state:
            raise ValueError(
                "this probe state holds a single probe for all domains (written before per-domain probes); "
                "it cannot be resumed by this version: start the run in a new folder"
            )
        unknown = sorted(set(state["domains"]) - set(self.domains))
        if unknown:
            raise ValueError(f"saved probes for domains {unknown} that poise.buffer.capacity does not list")
        for domain, probe_state in state["domains"].items():
            self.probes[domain].load_state_dict(probe_state)
        self.num_fits.update({domain: int(count) for domain, count in state["num_fits"].items()})
        self.fit_rows.update({domain: int(rows) for domain, rows in state.get("fit_rows", {}).items()})
