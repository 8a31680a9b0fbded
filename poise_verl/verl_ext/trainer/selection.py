"""Prompt selection for the POISE trainer (``poise.selection``; off by default, beyond the paper).

verl's sync trainer asks ``_next_train_batch`` for each step's prompts. With selection on, this mixin draws
``candidates_per_prompt`` times as many from the dataloader, keeps the usual number and hands only those to
generation, so the step's generation budget is unchanged (``poise_verl/core/selection.py`` has the rules and
their bias):

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

import logging

import numpy as np
import ray
import torch
from verl.utils import tensordict_utils as tu
from verl.utils.debug import marked_timer

from poise_verl.core.diagnostics import baseline_diagnostics
from poise_verl.core.selection import (
    HistoryFilter,
    groups_all_agree,
    pair_information,
    prompt_id,
    select_by_score,
)

logger = logging.getLogger(__name__)


class PromptSelection:
    """Mixin of ``PoiseTrainer``: ``_next_train_batch`` keeps the most informative of more candidates."""

    def _init_selection(self) -> None:
        settings = self.poise.selection
        self._history = HistoryFilter(settings.history.base_skip, settings.history.max_skip)
        self._feature_reader = None
        self._selection_metrics: dict[str, float] = {}
        self._kept: dict[str, dict] = {}  # uid -> prompt id, predicted pass rate, scoring-time prompt state

    # ---------------------------------------------------------------- choosing the step's prompts
    def _next_train_batch(self, num_prompts: int | None = None):
        settings = self.poise.selection
        keep = int(num_prompts or self.config.data.train_batch_size)
        if settings.mode == "none":
            return super()._next_train_batch(num_prompts)
        if settings.mode == "probe" and not ray.get(self.probe_worker.prompt_fitted_domains.remote()):
            self._selection_metrics = {"poise/selection/active": 0.0}  # nothing to score with yet
            return super()._next_train_batch(num_prompts)
        candidates = super()._next_train_batch(keep * settings.candidates_per_prompt)
        generator = torch.Generator().manual_seed(
            int(self.config.data.get("seed", 0) or 0) * 1_000_003 + self.global_steps
        )
        with marked_timer("select", self.timing_raw, color="purple"):
            raw_prompts = list(candidates["raw_prompt"])
            ids = [prompt_id(messages) for messages in raw_prompts]
            if settings.mode == "probe":
                index, predicted, features = self._select_by_probe(candidates, raw_prompts, keep, generator)
            else:
                index = self._history.select(ids, keep, generator)
                predicted, features = None, None
                # A prompt never seen has no history: in a run shorter than an epoch the filter cannot act.
                self._selection_metrics = {
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
        self._selection_metrics.update(
            {
                "poise/selection/active": 1.0,
                "poise/selection/candidates": float(len(ids)),
                "poise/selection/kept": float(keep),
            }
        )
        return batch

    def _select_by_probe(self, candidates, raw_prompts, keep: int, generator: torch.Generator):
        if self._feature_reader is None:
            from poise_verl.verl_ext.prompt_features import PromptFeatureReader

            ranks = self.actor_rollout_wg._query_dispatch_info("actor")
            self._feature_reader = PromptFeatureReader(
                self.config, self.tokenizer, self.actor_rollout_wg, max(ranks) + 1
            )
        features = self._feature_reader.read(raw_prompts, self.poise.probe_layer, self.poise.pool_last_k)
        domains = [str(d) for d in candidates[self.poise.buffer.domain_key]]
        predicted, fitted = ray.get(self.probe_worker.predict_prompts.remote(features, domains))
        predicted = torch.where(
            fitted, predicted, torch.full_like(predicted, 0.5)
        )  # unfitted: most informative
        index = select_by_score(
            pair_information(predicted), keep, self.poise.selection.exploration_share, generator
        )
        n = int(self.config.actor_rollout_ref.rollout.n)
        agree = (
            predicted.double() ** n + (1 - predicted.double()) ** n
        )  # P(all n rewards agree) at pass rate p
        self._selection_metrics = {
            "poise/selection/predicted_zero_variance_share": float(agree[index].mean()),
            "poise/selection/candidates_predicted_zero_variance_share": float(agree.mean()),
        }
        return index, predicted, features

    def prepare_step(self) -> dict:
        metrics = super().prepare_step()
        metrics.update(self._selection_metrics)
        self._selection_metrics = {}
        return metrics

    # ---------------------------------------------------------------- what the kept prompts gave
    def _selection_outcome_metrics(
        self, uids: np.ndarray, rewards: torch.Tensor, prompt_features: torch.Tensor
    ) -> dict:
        """After the advantages: the realised outcome of this step's prompts (``uids``, ``rewards`` of real rows)."""
        agree, group_uids = groups_all_agree(rewards, uids)
        metrics = {"poise/zero_variance_share": float(agree.double().mean()) if agree.numel() else 0.0}
        kept = [u for u in group_uids if u in self._kept]
        if not kept:
            return metrics
        agrees = dict(zip(group_uids, agree.tolist(), strict=True))
        self._history.update([self._kept[u]["prompt"] for u in kept], [agrees[u] for u in kept])
        if self.poise.selection.mode == "probe":
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

    def _selection_state(self) -> dict:
        return {"history": self._history.state_dict()}

    def _load_selection_state(self, state: dict | None) -> None:
        if state is not None:
            self._history.load_state_dict(state["history"])
