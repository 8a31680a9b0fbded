"""POISE's trainer (and DAPO's guarded one) as small hooks on verl 0.9.1's v1 sync trainer.

One POISE step reads like the algorithm:

    generate -> reward -> old log-probs + features (one forward) -> probe predictions -> poise advantages
    -> [probe sees this batch only now] push rows to the replay buffer, refit the probe (in the background)
    -> actor update -> wait for the refit

How it differs from GRPO/DAPO: two rollouts per prompt; rollout i's baseline is the probe's value prediction
from its sibling's features, b_i = g(phi_j), so A_i = R_i - b_i with no std normalisation; no dynamic
sampling. The probe is refit on the replay buffer only after the step's advantages are fixed: a probe that
has seen R_i cannot baseline R_i without bias. During the first ``poise.bootstrap_steps`` steps the baseline
is the sibling's reward (RLOO), while the buffer fills and the probe gets its first fits.

Everything below is an override of a named hook of ``PPOTrainerSync``; ``fit`` and ``_step_once`` are verl's.
Select with ``trainer.v1.trainer_mode=poise`` (``algo=poise`` does it).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict

import numpy as np
import ray
import torch
import transfer_queue as tq
from tensordict import TensorDict
from verl.trainer.ppo.core_algos import get_adv_estimator_fn
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils.debug import marked_timer
from verl.workers.utils.padding import response_to_nested

from poise_verl.config import PoiseSettings
from poise_verl.core.cross_rollout import cross_baselines, sibling_targets
from poise_verl.core.diagnostics import baseline_diagnostics
from poise_verl.core.entropy import entropy_feature_matrix, entropy_statistics
from poise_verl.verl_ext.capture_engine import (
    CAPTURE_LAYER_KEY,
    POOL_K_KEY,
    PROMPT_FEATURES,
    RESPONSE_FEATURES,
    THINK_TOKEN_KEY,
)
from poise_verl.verl_ext.probe_worker import ProbeWorker, ReplayBufferActor

logger = logging.getLogger(__name__)

POISE_STATE_FILE = "poise_state.pt"


def _to_list(field) -> list:
    return list(field.tolist()) if hasattr(field, "tolist") else list(field)


def per_rollout_advantage_std(advantages: torch.Tensor, response_mask: torch.Tensor) -> float:
    """Std over the batch of A_i, each rollout's mean token advantage. ``(bs, T)``, ``(bs, T)`` -> float."""
    mask = response_mask.to(torch.float32)
    per_rollout = (advantages.to(torch.float32) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return float(per_rollout.std())


@register_trainer("poise_sync")
class SyncTrainer(PPOTrainerSync):
    """``PPOTrainerSync`` under another registered name, with verl's sync semantics kept.

    verl 0.9.1 keys its synchronous behaviour on the mode's *name* (``trainer_mode == "sync"``): the
    synchronous replay buffer, exact DAPO refills, no TransferQueue state in checkpoints. A subclass
    registered as ``poise`` would silently get the asynchronous variants, so it reports ``sync`` here.
    Also applies ``runtime.poll_interval_s``: how often verl's replay buffer looks for finished rollouts
    (its constructor default is 2 s, which puts a 2 s floor under every generation phase).
    """

    def _check_rewards(self, uids: np.ndarray, rewards: torch.Tensor) -> None:
        """A non-finite reward is an error naming the rollout and the reward function, never a NaN advantage."""
        if torch.isfinite(rewards).all():
            return
        bad = int((~torch.isfinite(rewards)).nonzero()[0, 0])
        function = self.config.reward.custom_reward_function
        raise ValueError(
            f"reward of rollout {bad} (uid={uids[bad]!r}) is {rewards[bad].item()}: the reward function "
            f"{function.get('name')} in {function.get('path')} must return a finite number"
        )

    def _compute_advantage(self, batch, metrics):
        data = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=["uid", "rm_scores"]
        )
        uids = np.array(_to_list(data["uid"]), dtype=object)
        self._check_rewards(uids, data.exclude("uid").to_padded_tensor()["rm_scores"].sum(-1))
        batch = super()._compute_advantage(batch, metrics)
        # One name for every algorithm, so ablations compare GRPO/DAPO's spread of advantages with POISE's.
        data = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=["advantages", "response_mask"]
        )
        padded = data.to_padded_tensor()
        metrics["training/adv_std"] = per_rollout_advantage_std(padded["advantages"], padded["response_mask"])
        return batch

    def _build_replay_buffer(self):
        buffer = super()._build_replay_buffer()
        poll_interval = self.config.get("runtime", {}).get("poll_interval_s", None)
        if poll_interval is not None:
            buffer.poll_interval = float(poll_interval)
        return buffer

    @property
    def trainer_mode(self) -> str:
        return "sync"

    @trainer_mode.setter
    def trainer_mode(self, registered_name: str) -> None:  # verl assigns the configured name in __init__
        pass


@register_trainer("poise")
class PoiseTrainer(SyncTrainer):
    """verl's sync trainer with POISE's feature capture, probe baselines and probe state in checkpoints."""

    def __init__(self, config):
        super().__init__(config)
        self.poise = PoiseSettings.from_config(config.poise)
        probe = self.poise.probe
        probe_kwargs = {
            "seed": probe.seed,
            "prompt_components": probe.prompt_pca_dim,
            "response_components": probe.response_pca_dim,
        }
        if probe.name == "ridge":
            probe_kwargs["alpha"] = probe.ridge_alpha
        self.replay_buffer_actor = ReplayBufferActor.remote(dict(self.poise.buffer.capacity))
        self.probe_worker = ProbeWorker.remote(probe.name, probe_kwargs, self.poise.min_fit_rows)
        self._pending_refit = None  # (rows-held ref, refit-metrics ref) of the refit issued this step
        self.end_of_thinking_token_id: int | None = None

    # ---------------------------------------------------------------- set-up
    def _init_tokenizer(self):
        super()._init_tokenizer()
        token = self.poise.end_of_thinking_token
        if token is None:
            return
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(
                f"poise.end_of_thinking_token={token!r} is not a single token of the tokenizer at "
                f"{self.config.actor_rollout_ref.model.path}: set it to the model's end-of-thinking token, or null "
                "to use the whole response as the answer part"
            )
        self.end_of_thinking_token_id = int(token_id)

    # ---------------------------------------------------------------- old log-probs + features
    def _compute_old_log_prob(self, batch, metrics):
        """verl's old-log-prob pass, with the capture flag on for this pass only (not ref, not training)."""
        cut = self.end_of_thinking_token_id if self.poise.response_pool_until_end_of_thinking else None
        flags = {
            CAPTURE_LAYER_KEY: self.poise.probe_layer,
            POOL_K_KEY: self.poise.pool_last_k,
            THINK_TOKEN_KEY: -1 if cut is None else cut,
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
        """Probe predictions -> cross-rollout advantages -> (only then) hand this batch to the probe."""
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
            keys=batch.keys, partition_id=batch.partition_id, select_fields=fields + [domain_key]
        )
        nested_response_mask = data["response_mask"]
        uids = np.array(_to_list(data["uid"]), dtype=object)
        domains = [str(d) for d in _to_list(data[domain_key])]
        padded = data.exclude("uid", domain_key).to_padded_tensor()
        response_mask = padded["response_mask"].to(torch.float32)  # (bs, T)
        token_level_rewards = padded["rm_scores"].to(torch.float32)  # (bs, T)
        rewards = token_level_rewards.sum(-1)  # R_i, (bs,)
        self._check_rewards(uids, rewards)

        # phi: pooled layer-L hidden states from the old-log-prob pass, plus entropy statistics of that pass.
        prompt_features = padded[PROMPT_FEATURES].to(torch.float32)  # (bs, H)
        response_features = padded[RESPONSE_FEATURES].to(torch.float32)  # (bs, H)
        stats = entropy_statistics(
            padded["entropy"], response_mask, padded["responses"], self.end_of_thinking_token_id
        )
        scalar_features = entropy_feature_matrix(stats, self.poise.entropy_features)  # (bs, S)

        with marked_timer("probe_predict", self.timing_raw, color="purple"):
            predictions = None
            if ray.get(self.probe_worker.is_fitted.remote()):
                predictions = ray.get(
                    self.probe_worker.predict.remote(prompt_features, response_features, scalar_features)
                )  # g(phi_i), fitted on earlier steps only
        use_probe = predictions is not None and self.global_steps > self.poise.bootstrap_steps
        # Bootstrap: passing R as the "predictions" makes the estimator's sibling mean the RLOO baseline.
        reward_baselines = predictions if use_probe else rewards
        estimator = get_adv_estimator_fn(self.config.algorithm.adv_estimator)
        advantages, returns = estimator(
            token_level_rewards=token_level_rewards,
            response_mask=response_mask,
            index=uids,
            reward_baselines=reward_baselines,
            config=self.config.algorithm,
        )
        output = TensorDict(
            {
                "advantages": response_to_nested(advantages, nested_response_mask),
                "returns": response_to_nested(returns, nested_response_mask),
            },
            batch_size=len(batch),
        )
        batch = tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=output)

        metrics.update(self._poise_metrics(rewards, predictions, uids, advantages, response_mask, use_probe))
        metrics["poise/empty_responses"] = float((response_mask.sum(-1) == 0).sum())
        metrics["training/adv_std"] = per_rollout_advantage_std(advantages, response_mask)

        # The advantages above are fixed; only now may the probe learn from this batch's rewards.
        self._issue_refit(uids, domains, prompt_features, response_features, scalar_features, rewards)
        return batch

    def _poise_metrics(self, rewards, predictions, uids, advantages, response_mask, use_probe) -> dict:
        per_rollout_advantage = advantages.sum(-1) / response_mask.sum(-1).clamp(min=1)  # A_i
        metrics = {
            "poise/phase_probe": float(use_probe),
            "poise/adv_std": float(per_rollout_advantage.std()),
            "poise/adv_abs_mean": float(per_rollout_advantage.abs().mean()),
            "poise/reward_mean": float(rewards.mean()),
        }
        if predictions is not None:
            # Predictions made before this step's refit, against the rewards then realised.
            baselines = cross_baselines(predictions, uids)  # b_i = mean_{j != i} g(phi_j)
            for name, value in baseline_diagnostics(rewards, baselines).items():
                metrics[f"poise/probe_{name}"] = float(value)
            metrics["poise/prediction_mean"] = float(predictions.mean())
        return metrics

    # ---------------------------------------------------------------- probe refit
    def _issue_refit(self, uids, domains, prompt_features, response_features, scalar_features, rewards):
        """Push this batch's rows (whole prompt groups) and refit the probe, in the background."""
        targets = sibling_targets(rewards, uids)  # y_j = mean reward of j's siblings
        groups = []
        for uid in dict.fromkeys(uids.tolist()):
            rows = torch.as_tensor(np.flatnonzero(uids == uid))
            groups.append(
                {
                    "uid": str(uid),
                    "domain": domains[int(rows[0])],
                    "prompt_feats": prompt_features[rows],
                    "response_feats": response_features[rows],
                    "scalar_feats": scalar_features[rows],
                    "targets": targets[rows],
                }
            )
        rows_held = self.replay_buffer_actor.add_groups.remote(groups)
        # Passing rows_held as an argument makes Ray run the refit after the push has landed.
        refit = self.probe_worker.refit.remote(self.replay_buffer_actor, rows_held)
        self._pending_refit = (rows_held, refit)

    def _finish_refit(self) -> dict:
        if self._pending_refit is None:
            return {}
        rows_held, refit = self._pending_refit
        self._pending_refit = None
        metrics = ray.get(refit)
        metrics["poise/buffer_rows"] = float(ray.get(rows_held))
        return metrics

    def _step_once(self, metrics, timing_raw, sample_batch_size):
        batch = super()._step_once(metrics, timing_raw, sample_batch_size)
        with marked_timer("probe_refit_wait", timing_raw, color="purple"):
            metrics.update(self._finish_refit())
        return batch

    # ---------------------------------------------------------------- checkpoints
    def _step_folder(self) -> str:
        root = self.config.trainer.default_local_dir
        if self.config.trainer.resume_mode == "resume_path" and self.config.trainer.resume_from_path:
            return self.config.trainer.resume_from_path
        return os.path.join(root, f"global_step_{self.global_steps}")

    def _save_checkpoint(self):
        # POISE's state goes in first: verl writes latest_checkpointed_iteration.txt last, so a crash in
        # between never leaves a checkpoint that resumes without its probe and buffer.
        folder = os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}")
        os.makedirs(folder, exist_ok=True)
        state = {
            "global_steps": self.global_steps,
            "probe": ray.get(self.probe_worker.state_dict.remote()),
            "buffer": ray.get(self.replay_buffer_actor.state_dict.remote()),
            "settings": asdict(self.poise),
        }
        tmp = os.path.join(folder, POISE_STATE_FILE + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, os.path.join(folder, POISE_STATE_FILE))
        super()._save_checkpoint()

    def _load_checkpoint(self):
        super()._load_checkpoint()
        if self.global_steps == 0:
            return
        path = os.path.join(self._step_folder(), POISE_STATE_FILE)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} is missing: the checkpoint at {self._step_folder()} holds no POISE state (probe, replay "
                "buffer). It was not written by the POISE trainer; resume it with the algorithm that wrote it, "
                "or point trainer.default_local_dir at a new folder"
            )
        state = torch.load(path, weights_only=False)
        ray.get(self.probe_worker.load_state_dict.remote(state["probe"]))
        ray.get(self.replay_buffer_actor.load_state_dict.remote(state["buffer"]))
        logger.warning(
            "Restored POISE state from %s (%s buffer rows)",
            path,
            ray.get(self.replay_buffer_actor.num_rows.remote()),
        )


@register_trainer("dapo")
class DapoTrainer(SyncTrainer):
    """verl's sync trainer for DAPO, plus a bound on dynamic sampling.

    verl 0.9.1's v1 replay buffer ignores ``algorithm.filter_groups.max_num_gen_batches`` and keeps refilling
    while every group's rewards agree, so a task the policy always (or never) solves spins forever. Here each
    step may dispatch at most ``max_num_gen_batches`` extra batches of prompts; past that the run stops with
    an error that says what to change.
    """

    def on_sample_begin(self):
        super().on_sample_begin()
        self._refill_prompts_this_step = 0

    def _add_prompts_to_generate(self, num_prompts: int) -> int:
        filter_groups = self.config.algorithm.filter_groups
        max_batches = int(filter_groups.get("max_num_gen_batches", 0) or 0)
        train_batch_size = int(self.config.data.train_batch_size)
        self._refill_prompts_this_step = getattr(self, "_refill_prompts_this_step", 0) + num_prompts
        if max_batches > 0 and self._refill_prompts_this_step > max_batches * train_batch_size:
            raise RuntimeError(
                f"DAPO dynamic sampling could not fill step {self.global_steps}: after {max_batches} extra generation "
                f"batches of {train_batch_size} prompts, too few groups had rewards that differ "
                f"(algorithm.filter_groups.metric={filter_groups.metric}). The task is too easy or too hard for the "
                "policy: raise algorithm.filter_groups.max_num_gen_batches, lower data.train_batch_size, or check "
                "the reward function"
            )
        return super()._add_prompts_to_generate(num_prompts)
