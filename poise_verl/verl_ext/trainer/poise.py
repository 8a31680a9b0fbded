"""POISE's trainer: small hooks on verl 0.9.1's v1 sync trainer (``trainer.v1.trainer_mode=poise``).

One POISE step reads like the algorithm:

    generate -> reward -> old log-probs + features (one forward) -> probe predictions g(phi_i)
    -> verl's advantage stage (KL penalty, rollout correction) with the ``poise`` estimator:
       A_i = R_i - mean_{j != i} g(phi_j)
    -> [the probes see this batch only now] push rows to the replay buffer, refit (in the background)
    -> actor update -> wait for the refit

How it differs from GRPO/DAPO: two rollouts per prompt; rollout i's baseline is the probe's value prediction
from its sibling's features, with no std normalisation; no dynamic sampling. The probes (one per domain) are
refit on the replay buffer only after the step's advantages are fixed: a probe that has seen R_i cannot
baseline R_i without bias. During the first ``poise.bootstrap_steps`` steps, and for any domain whose probe
is not fitted yet, the baseline is the sibling's reward (RLOO).

POISE changes only the baseline: ``_compute_advantage`` runs verl's own advantage stage around the
``poise`` estimator (``poise_verl.verl_ext.adv_estimator``), so ``algorithm.use_kl_in_reward`` and
``algorithm.rollout_correction`` act under POISE exactly as under GRPO. ``fit`` and ``_step_once`` are verl's.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass

import numpy as np
import ray
import torch
import transfer_queue as tq
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.utils.debug import marked_timer

from poise_verl.config import POISE_STATE_FILE, PoiseSettings, TrainerMode
from poise_verl.core.buffer import storage_domain
from poise_verl.core.cross_rollout import cross_baselines, lone_rows, sibling_targets
from poise_verl.core.diagnostics import baseline_diagnostics
from poise_verl.core.entropy import entropy_feature_matrix, entropy_statistics
from poise_verl.reasoning_split import end_of_thinking_ids, official_text_parts
from poise_verl.verl_ext.capture_engine import (
    CAPTURE_LAYER_KEY,
    POOL_K_KEY,
    PROMPT_FEATURES,
    RESPONSE_CUT_MARKER_KEY,
    RESPONSE_FEATURES,
)
from poise_verl.verl_ext.feature_dump import write_step_dump
from poise_verl.verl_ext.probe_worker import ProbeWorker, ReplayBufferActor
from poise_verl.verl_ext.step_predictions import StepPredictions, step_predictions
from poise_verl.verl_ext.trainer.checked_sync import CheckedSyncTrainer, to_list
from poise_verl.verl_ext.trainer.selection import PromptSelector

logger = logging.getLogger(__name__)


@dataclass
class StepRollouts:
    """One step's rollouts as POISE reads them, in verl's batch order (B rows, padding rows included).

    Attributes:
        uids: ``(B,)`` prompt uid per row. domains: B probe domains (``poise.buffer.capacity`` keys).
        rewards: ``(B,)`` R_i, the summed verifiable reward (before any KL penalty).
        prompt, response: ``(B, H)`` pooled layer-L states; scalars: ``(B, S)`` entropy statistics.
        valid: ``(B,)`` bool, False on verl's padding rows (``is_padding``: no prompt, no reward, no group).
        lone: ``(B,)`` bool, True on a real row whose prompt has no other rollout in the batch (verl keeps a group
            whose other generations failed): no sibling to baseline it, so advantage 0, and no sibling reward to
            train the probe on, so it stays out of the replay buffer. ``paired`` is every other real row.
        empty_responses: rollouts with no response token.
    """

    uids: np.ndarray
    domains: list[str]
    rewards: torch.Tensor
    prompt: torch.Tensor
    response: torch.Tensor
    scalars: torch.Tensor
    valid: torch.Tensor
    lone: torch.Tensor
    empty_responses: int

    @property
    def paired(self) -> torch.Tensor:
        return self.valid & ~self.lone


class PoiseSteps:
    """POISE's hooks on verl's trainer step: feature capture, probe baselines, the refit after the advantages,
    optional prompt selection (a :class:`PromptSelector`) and POISE's state in checkpoints. Mixed into verl's sync
    trainer (:class:`PoiseTrainer`) and into its colocated asynchronous one
    (:class:`poise_verl.verl_ext.trainer.colocate_async.PoiseColocateAsyncTrainer`)."""

    def __init__(self, config):
        super().__init__(config)
        self.poise = PoiseSettings.from_config(config.poise)
        domains = list(self.poise.buffer.capacity)
        self.replay_buffer_actor = ReplayBufferActor.remote(dict(self.poise.buffer.capacity))
        n = int(config.actor_rollout_ref.rollout.n)
        prompt_min_fit_rows = (
            max(2, self.poise.min_fit_rows // n) if self.poise.selection.mode == "probe" else None
        )
        self.probe_worker = ProbeWorker.remote(
            self.poise.probe, domains, self.poise.min_fit_rows, prompt_min_fit_rows
        )
        self.selector = PromptSelector(
            self.poise.selection,
            probe_worker=self.probe_worker,
            feature_reader=self._prompt_feature_reader,
            domain_key=self.poise.buffer.domain_key,
            n=n,
            probe_layer=self.poise.probe_layer,
            pool_last_k=self.poise.pool_last_k,
            seed=int(config.data.get("seed", 0) or 0),
        )
        self._pending_refit = None  # (rows-held ref, refit-metrics ref) of the refit issued this step
        self._rloo_domains: set[str] = set()  # domains on RLOO after the bootstrap, announced in the log
        self._lone_announced = False  # rollouts without a sibling (failed generations), announced once
        self.end_of_thinking_ids: tuple[int, ...] = ()  # the marker's token ids, () for none

    # ---------------------------------------------------------------- set-up
    def _init_tokenizer(self):
        super()._init_tokenizer()
        # The start-up check (preflight) refuses the same markers before Ray, naming the tokenizer's folder.
        self.end_of_thinking_ids = end_of_thinking_ids(self.tokenizer, self.poise.end_of_thinking_token)

    def _prompt_feature_reader(self):
        from poise_verl.verl_ext.prompt_features import PromptFeatureReader

        ranks = self.actor_rollout_wg._query_dispatch_info("actor")
        return PromptFeatureReader(self.config, self.tokenizer, self.actor_rollout_wg, max(ranks) + 1)

    # ---------------------------------------------------------------- the step's prompts
    def _next_train_batch(self, num_prompts: int | None = None):
        """verl's next prompts, or with ``poise.selection`` on, the selector's pick of more candidates."""
        keep = int(num_prompts or self.config.data.train_batch_size)
        draw = self.selector.candidates_to_draw(keep)
        if draw is None:
            return super()._next_train_batch(num_prompts)
        candidates = super()._next_train_batch(draw)
        with marked_timer("select", self.timing_raw, color="purple"):
            return self.selector.choose(candidates, keep, self.global_steps)

    def prepare_step(self) -> dict:
        metrics = super().prepare_step()
        metrics.update(self.selector.take_metrics())
        return metrics

    # ---------------------------------------------------------------- old log-probs + features
    def _compute_old_log_prob(self, batch, metrics):
        """verl's old-log-prob pass, with the capture flag on for this pass only (not ref, not training)."""
        cut = self.end_of_thinking_ids if self.poise.response_pool_until_end_of_thinking else ()
        flags = {
            CAPTURE_LAYER_KEY: self.poise.probe_layer,
            POOL_K_KEY: self.poise.pool_last_k,
            RESPONSE_CUT_MARKER_KEY: cut,
        }
        batch.extra_info.update(flags)
        try:
            out = super()._compute_old_log_prob(batch, metrics)
        finally:
            for key in flags:
                batch.extra_info.pop(key, None)
        for key in flags:
            out.extra_info.pop(key, None)
        return out

    # ---------------------------------------------------------------- advantages
    def _compute_advantage(self, batch, metrics):
        """Probe predictions -> verl's advantage stage with the poise estimator -> only then the probes learn."""
        rollouts = self._read_rollouts(batch)
        with marked_timer("probe_predict", self.timing_raw, color="purple"):
            predictions, fitted = ray.get(
                self.probe_worker.predict.remote(
                    rollouts.prompt, rollouts.response, rollouts.scalars, rollouts.domains
                )
            )  # g_d(phi_i), from probes fitted on earlier steps only
        bootstrap = self.global_steps <= self.poise.bootstrap_steps
        paired = rollouts.paired  # a lone rollout (its siblings failed to generate) gets advantage 0
        from_probe = fitted & paired & (not bootstrap)
        if not bootstrap:
            self._announce_rloo_domains(rollouts, fitted)
        self._announce_lone_rollouts(rollouts)
        step = StepPredictions(rollouts.uids, predictions, from_probe, paired)
        with step_predictions(step):
            batch = super()._compute_advantage(batch, metrics)
        metrics.update(self._poise_metrics(rollouts, predictions, fitted, from_probe))
        if self.poise.feature_dump_dir:
            self._dump_step(batch, rollouts, predictions, fitted, from_probe)
        metrics.update(
            self.selector.record_outcome(
                rollouts.uids[paired.numpy()], rollouts.rewards[paired], rollouts.prompt[paired]
            )
        )
        # The advantages are fixed and written; only now may the probes learn from this batch's rewards.
        self._issue_refit(rollouts)
        return batch

    def _read_rollouts(self, batch) -> StepRollouts:
        domain_key = self.poise.buffer.domain_key
        fields = [
            "uid",
            "response_mask",
            "rm_scores",
            "responses",
            "entropy",
            PROMPT_FEATURES,
            RESPONSE_FEATURES,
        ]
        data = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=[*fields, domain_key]
        )
        uids = np.array([str(uid) for uid in to_list(data["uid"])], dtype=object)
        domains = [storage_domain(d, self.poise.buffer.capacity) for d in to_list(data[domain_key])]
        padded = data.exclude("uid", domain_key).to_padded_tensor()
        response_mask = padded["response_mask"].to(torch.float32)  # (B, T)
        valid = torch.tensor([not tag.get("is_padding", False) for tag in batch.tags], dtype=torch.bool)
        return StepRollouts(
            uids=uids,
            domains=domains,
            rewards=padded["rm_scores"].to(torch.float32).sum(-1),  # R_i
            prompt=padded[PROMPT_FEATURES].to(torch.float32),
            response=padded[RESPONSE_FEATURES].to(torch.float32),
            scalars=self._entropy_scalars(padded["entropy"], response_mask, padded["responses"]),
            valid=valid,
            lone=lone_rows(uids, valid),
            empty_responses=int(((response_mask.sum(-1) == 0) & valid).sum()),
        )

    def _entropy_scalars(self, entropy, response_mask, responses) -> torch.Tensor:
        """``(B, T)`` token entropies, mask and ids -> ``(B, S)`` the probe's entropy scalars, the reasoning and
        answer parts split by ``poise.entropy_split``."""
        parts = None
        if self.poise.entropy_split == "official_text":  # the official code's rule, on the decoded responses
            parts = official_text_parts(self.tokenizer, responses, response_mask)
        stats = entropy_statistics(entropy, response_mask, responses, self.end_of_thinking_ids, parts=parts)
        return entropy_feature_matrix(stats, self.poise.entropy_features)

    def _dump_step(self, batch, rollouts: StepRollouts, predictions, fitted, from_probe) -> None:
        """``poise.feature_dump_dir``: this step's rows as the probes and verl's advantage stage saw them."""
        # The rollout's own log-probs (actor_rollout_ref.rollout.calculate_log_probs): which weights generated the row.
        behaviour = ["rollout_log_probs"] if self.config.actor_rollout_ref.rollout.calculate_log_probs else []
        data = tq.kv_batch_get(
            keys=batch.keys,
            partition_id=batch.partition_id,
            select_fields=["prompts", "responses", "advantages", *behaviour],
        )
        extra = {"rollout_log_probs": list(data["rollout_log_probs"].unbind())} if behaviour else {}
        write_step_dump(
            self.poise.feature_dump_dir,
            self.global_steps,
            {
                "uids": [str(uid) for uid in rollouts.uids],
                "domains": list(rollouts.domains),
                "valid": rollouts.paired,
                "lone": rollouts.lone,
                "prompt_ids": list(data["prompts"].unbind()),
                "response_ids": list(data["responses"].unbind()),
                "rewards": rollouts.rewards,
                "prompt_features": rollouts.prompt,
                "response_features": rollouts.response,
                "entropy_features": rollouts.scalars,
                "entropy_feature_names": list(self.poise.entropy_features),
                "predictions": predictions,
                "fitted": fitted,
                "from_probe": from_probe,
                "advantages": list(data["advantages"].unbind()),
                "probe_rows": ray.get(self.probe_worker.fit_rows.remote()),
                **extra,
            },
        )

    def _announce_rloo_domains(self, rollouts: StepRollouts, fitted: torch.Tensor) -> None:
        """After the bootstrap, say once per domain (in the log, not only in a metric) when RLOO stands in."""
        unfitted = {
            d
            for d, f, v in zip(rollouts.domains, fitted.tolist(), rollouts.valid.tolist(), strict=True)
            if v and not f
        }
        for domain in sorted(unfitted - self._rloo_domains):
            logger.warning(
                "POISE step %d: the probe for domain %r is not fitted yet (its buffer rows are below "
                "poise.min_fit_rows=%d), so its rollouts are baselined with the sibling's reward (RLOO) until it is",
                self.global_steps,
                domain,
                self.poise.min_fit_rows,
            )
        for domain in sorted(self._rloo_domains - unfitted):
            logger.warning(
                "POISE step %d: the probe for domain %r is fitted; probe baselines from now on",
                self.global_steps,
                domain,
            )
        self._rloo_domains = unfitted

    def _announce_lone_rollouts(self, rollouts: StepRollouts) -> None:
        """The first time a rollout comes without a sibling, say so in the log (``poise/lone_rollouts`` counts them)."""
        if self._lone_announced or not bool(rollouts.lone.any()):
            return
        self._lone_announced = True
        first = rollouts.uids[int(rollouts.lone.nonzero()[0, 0])]
        logger.warning(
            "POISE step %d: %d rollout(s) came without a sibling (the other generations of their prompt failed or "
            "returned nothing; first prompt uid=%r). They get advantage 0 (no policy gradient) and stay out of the "
            "probe's replay buffer; poise/lone_rollouts counts them every step. Said once",
            self.global_steps,
            int(rollouts.lone.sum()),
            first,
        )

    def _poise_metrics(self, rollouts: StepRollouts, predictions, fitted, from_probe) -> dict[str, float]:
        valid = rollouts.valid
        metrics = {
            "poise/phase_probe": float(from_probe[valid].float().mean()) if bool(valid.any()) else 0.0,
            "poise/reward_mean": float(rollouts.rewards[valid].mean()) if bool(valid.any()) else 0.0,
            "poise/empty_responses": float(rollouts.empty_responses),
            "poise/lone_rollouts": float(rollouts.lone.sum()),
        }
        # Predictions made before this step's refit, against the rewards then realised; per domain and overall.
        scored = fitted & rollouts.paired
        domains = np.array(rollouts.domains, dtype=object)
        groups = [("", scored)] + [
            (f"/{d}", scored & torch.from_numpy(domains == d)) for d in sorted(set(domains[scored.numpy()]))
        ]
        for suffix, rows in groups:
            if not bool(rows.any()):
                continue
            baselines = cross_baselines(
                predictions[rows], rollouts.uids[rows.numpy()]
            )  # b_i = mean_{j!=i} g(phi_j)
            for name, value in baseline_diagnostics(rollouts.rewards[rows], baselines).items():
                metrics[f"poise/probe_{name}{suffix}"] = float(value)
            metrics[f"poise/prediction_mean{suffix}"] = float(predictions[rows].mean())
        return metrics

    # ---------------------------------------------------------------- probe refit
    def _issue_refit(self, rollouts: StepRollouts) -> None:
        """Push this batch's paired rows (whole prompt groups) and refit the probes, in the background."""
        rows = rollouts.paired
        uids = rollouts.uids[rows.numpy()]
        rows_held = self.replay_buffer_actor.add_batch.remote(
            rollouts.prompt[rows],
            rollouts.response[rows],
            rollouts.scalars[rows],
            sibling_targets(rollouts.rewards[rows], uids),  # y_j = mean reward of j's siblings
            uids,
            [d for d, keep in zip(rollouts.domains, rows.tolist(), strict=True) if keep],
        )
        # Passing rows_held as an argument makes Ray run the refit after the push has landed.
        self._pending_refit = self.probe_worker.refit.remote(self.replay_buffer_actor, rows_held)

    def _step_once(self, metrics, timing_raw, sample_batch_size):
        batch = super()._step_once(metrics, timing_raw, sample_batch_size)
        with marked_timer("probe_refit_wait", timing_raw, color="purple"):
            if self._pending_refit is not None:
                metrics.update(ray.get(self._pending_refit))
                self._pending_refit = None
        return batch

    # ---------------------------------------------------------------- checkpoints
    def _resume_folder(self) -> str:
        """The checkpoint folder verl resumes from: the one named by resume_from_path, or the latest step's."""
        root = self.config.trainer.default_local_dir
        if self.config.trainer.resume_mode == "resume_path" and self.config.trainer.resume_from_path:
            return self.config.trainer.resume_from_path
        return os.path.join(root, f"global_step_{self.global_steps}")

    def _write_run_state(self, folder: str) -> None:
        """POISE's state beside verl's checkpoint (written before verl's files and its tracker: a save cut short
        never leaves a checkpoint that resumes without its probes and buffer)."""
        super()._write_run_state(folder)
        state = {
            "global_steps": self.global_steps,
            "probe": ray.get(self.probe_worker.state_dict.remote()),
            "buffer": ray.get(self.replay_buffer_actor.state_dict.remote()),
            "settings": asdict(self.poise),
            "selection": self.selector.state_dict(),
        }
        tmp = os.path.join(folder, POISE_STATE_FILE + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, os.path.join(folder, POISE_STATE_FILE))

    def _load_checkpoint(self):
        super()._load_checkpoint()
        if self.global_steps == 0:
            return
        path = os.path.join(self._resume_folder(), POISE_STATE_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} is missing: the checkpoint at {self._resume_folder()} holds no POISE state (probes, replay "
                "buffer). It was not written by the POISE trainer; resume it with the algorithm that wrote it, "
                "or point trainer.default_local_dir at a new folder"
            )
        state = torch.load(path, weights_only=False)
        ray.get(self.probe_worker.load_state_dict.remote(state["probe"]))
        ray.get(self.replay_buffer_actor.load_state_dict.remote(state["buffer"]))
        self.selector.load_state_dict(state.get("selection"))
        logger.warning(
            "Restored POISE state from %s (%s buffer rows)",
            path,
            ray.get(self.replay_buffer_actor.num_rows.remote()),
        )


@register_trainer(TrainerMode.POISE)
class PoiseTrainer(PoiseSteps, CheckedSyncTrainer):
    """verl's sync trainer with POISE (``trainer.v1.trainer_mode=poise``, what ``algo=poise`` runs)."""
