"""Prompt selection for the POISE trainer (``poise.selection``; off by default, beyond the paper).

verl's sync trainer asks ``_next_train_batch`` for each step's prompts. With selection on, the POISE trainer
draws ``candidates_per_prompt`` times as many from the dataloader and its :class:`PromptSelector` keeps the usual
number, the only ones handed to generation, so the step's generation budget is unchanged
(``poise_verl/core/selection.py`` has the rules and their bias):

- ``probe``: the candidates' pooled prompt states come from a prompt-only forward of the actor
  (:class:`poise_verl.verl_ext.prompt_features.PromptFeatureReader`); the prompt-only probes (one per domain,
  refit with the main probes) predict each pass rate p; the best p(1-p) are kept, plus an exploration share.
  Until a domain's prompt probe is fitted its candidates score as the most informative (p = 1/2).
- ``history``: a GRESO-style filter skips prompts whose recent visits all had agreeing rewards.

After the advantages, each kept prompt's outcome is recorded: its realised group rewards against the
prediction (``poise/selection/prompt_pearson``), whether its rewards all agreed (the history, and
``poise/zero_variance_share``), and, under ``probe``, how far the pre-generation prompt state is from the one
the old-log-prob pass captured (``poise/selection/feature_diff_max``, ~0 when both passes agree).
"""

from __future__ import annotations

import numpy as np
import ray
import torch
from verl.utils import tensordict_utils as tu

from poise_verl.core.diagnostics import baseline_diagnostics
from poise_verl.core.selection import (
    HistoryFilter,
    groups_all_agree,
    pair_information,
    prompt_id,
    select_by_score,
)


class PromptSelector:
    """Chooses each step's prompts from more candidates (``poise.selection``) and learns from what they gave.

    Held by the POISE trainer, which draws the candidates and times the choice. ``probe_worker``: the Ray actor
    with the prompt-only probes; ``feature_reader``: makes the reader of the candidates' prompt states (the
    actor's prompt-only forward), called at the first choice by probe, once the worker group exists.
    """

    def __init__(self, settings, *, probe_worker, feature_reader, domain_key: str, n: int, probe_layer: int,
                 pool_last_k: int, seed: int):
        self.settings = settings
        self.probe_worker = probe_worker
        self._make_feature_reader = feature_reader
        self._feature_reader = None
        self.domain_key, self.n, self.seed = domain_key, n, seed
        self.probe_layer, self.pool_last_k = probe_layer, pool_last_k
        self._history = HistoryFilter(settings.history.base_skip, settings.history.max_skip)
        self._metrics: dict[str, float] = {}
        self._kept: dict[str, dict] = {}  # uid -> prompt id, predicted pass rate, scoring-time prompt state

    # ---------------------------------------------------------------- choosing the step's prompts
    def candidates_to_draw(self, keep: int) -> int | None:
        """How many prompts to draw for a step that keeps KEEP, or None to take the dataloader's as they come
        (selection off, or under ``probe`` before any prompt probe is fitted: nothing to score with yet)."""
        if self.settings.mode == "none":
            return None
        if self.settings.mode == "probe" and not ray.get(self.probe_worker.prompt_fitted_domains.remote()):
            self._metrics = {"poise/selection/active": 0.0}
            return None
        return keep * self.settings.candidates_per_prompt

    def choose(self, candidates, keep: int, step: int):
        """The KEEP prompts of CANDIDATES (a TensorDict from verl's dataloader) this step generates for."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        raw_prompts = list(candidates["raw_prompt"])
        ids = [prompt_id(messages) for messages in raw_prompts]
        if self.settings.mode == "probe":
            index, predicted, features = self._by_probe(candidates, raw_prompts, keep, generator)
        else:
            index = self._history.select(ids, keep, generator)
            predicted, features = None, None
            # A prompt never seen has no history: in a run shorter than an epoch the filter cannot act.
            self._metrics = {
                "poise/selection/seen_before_share": sum(i in self._history.streaks for i in ids) / len(ids),
                "poise/selection/mean_skip_probability": float(self._history.skip_probability(ids).mean()),
            }
        batch = tu.index_select_tensor_dict(candidates, index)
        uids = [str(uid) for uid in batch["uid"]]
        self._kept = {
            uid: {
                "prompt": ids[int(i)],
                "predicted": None if predicted is None else float(predicted[i]),
                "features": None if features is None else features[i],
            }
            for uid, i in zip(uids, index.tolist(), strict=True)
        }
        self._metrics.update(
            {
                "poise/selection/active": 1.0,
                "poise/selection/candidates": float(len(ids)),
                "poise/selection/kept": float(keep),
            }
        )
        return batch

    def _by_probe(self, candidates, raw_prompts, keep: int, generator: torch.Generator):
        if self._feature_reader is None:
            self._feature_reader = self._make_feature_reader()
        features = self._feature_reader.read(raw_prompts, self.probe_layer, self.pool_last_k)
        domains = [str(d) for d in candidates[self.domain_key]]
        predicted, fitted = ray.get(self.probe_worker.predict_prompts.remote(features, domains))
        predicted = torch.where(fitted, predicted, torch.full_like(predicted, 0.5))  # unfitted: most informative
        index = select_by_score(pair_information(predicted), keep, self.settings.exploration_share, generator)
        agree = predicted.double() ** self.n + (1 - predicted.double()) ** self.n  # P(all n rewards agree) at p
        self._metrics = {
            "poise/selection/predicted_zero_variance_share": float(agree[index].mean()),
            "poise/selection/candidates_predicted_zero_variance_share": float(agree.mean()),
        }
        return index, predicted, features

    def take_metrics(self) -> dict:
        """This step's choice, for the step's metrics (once)."""
        metrics, self._metrics = self._metrics, {}
        return metrics

    # ---------------------------------------------------------------- what the kept prompts gave
    def record_outcome(self, uids: np.ndarray, rewards: torch.Tensor, prompt_features: torch.Tensor) -> dict:
        """After the advantages: the realised outcome of this step's prompts (``uids``, ``rewards`` of real rows)."""
        agree, group_uids = groups_all_agree(rewards, uids)
        metrics = {"poise/zero_variance_share": float(agree.double().mean()) if agree.numel() else 0.0}
        kept = [u for u in group_uids if u in self._kept]
        if not kept:
            return metrics
        agrees = dict(zip(group_uids, agree.tolist(), strict=True))
        self._history.update([self._kept[u]["prompt"] for u in kept], [agrees[u] for u in kept])
        if self.settings.mode == "probe":
            realised = torch.stack([rewards[torch.from_numpy(uids == u)].mean() for u in kept])
            predicted = torch.tensor([self._kept[u]["predicted"] for u in kept])
            metrics["poise/selection/prompt_pearson"] = baseline_diagnostics(realised, predicted)["pearson"]
            metrics["poise/selection/prompt_mae"] = float((realised - predicted).abs().mean())
            captured = {u: prompt_features[int(np.flatnonzero(uids == u)[0])] for u in kept}
            metrics["poise/selection/feature_diff_max"] = max(
                float((captured[u] - self._kept[u]["features"]).abs().max()) for u in kept
            )
        self._kept = {}
        return metrics

    def state_dict(self) -> dict:
        return {"history": self._history.state_dict()}

    def load_state_dict(self, state: dict | None) -> None:
        if state is not None:
            self._history.load_state_dict(state["history"])
