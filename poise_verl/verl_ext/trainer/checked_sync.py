"""verl's v1 sync trainer with poise-verl's checks, the shared advantage metric, and DAPO's bounded refills.

``CheckedSyncTrainer`` (``trainer.v1.trainer_mode=checked_sync``, what ``algo=grpo`` runs) is verl's
``PPOTrainerSync`` plus: a non-finite reward stops the run naming the rollout and the reward function, every
algorithm logs ``training/adv_std`` (the spread of the per-rollout advantages, comparable across GRPO, DAPO and
POISE), and ``runtime.poll_interval_s`` sets how often verl's replay buffer looks for finished rollouts.
``DapoTrainer`` (``dapo``) adds a bound on DAPO's dynamic sampling; the POISE trainer builds on the first.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import transfer_queue as tq
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

from poise_verl.config import RUN_IDENTITY_FILE, TrainerMode, run_identity
from poise_verl.verl_ext.checkpoint_guard import atomic_write_text, guarded_save


def to_list(field) -> list:
    """A TransferQueue non-tensor field (or a tensor) as a plain list."""
    return list(field.tolist()) if hasattr(field, "tolist") else list(field)


def per_rollout_advantage_std(advantages: torch.Tensor, response_mask: torch.Tensor) -> float:
    """Std over the batch of A_i, each rollout's mean token advantage. ``(bs, T)``, ``(bs, T)`` -> float."""
    mask = response_mask.to(torch.float32)
    per_rollout = (advantages.to(torch.float32) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return float(per_rollout.std())


def partial_rollout_share(tags: list[dict]) -> dict[str, float]:
    """The share of a batch's rollouts generated across a weight update (partial rollouts, whose tokens come from
    two or more policy versions), from verl's per-trajectory tags.

    Each trajectory records the weight versions it started and ended under (``min_global_steps``,
    ``max_global_steps``); verl logs how far behind they are (``training/off_policy/trajectory_staleness*``) and
    how many versions one spans, but not how many rollouts were partial. 0 under a synchronous trainer.
    """
    spans = [
        (tag["min_global_steps"], tag["max_global_steps"])
        for tag in tags
        if not tag.get("is_padding", False) and tag.get("min_global_steps") is not None
    ]
    if not spans:
        return {}
    return {"rollout/partial_share": float(np.mean([last is not None and last > first for first, last in spans]))}


class CheckedSteps:
    """The checks and the shared metrics every poise-verl trainer mode adds to verl's step, sync or asynchronous:
    a non-finite reward stops the run, ``training/adv_std``, ``rollout/partial_share``, the replay buffer's poll."""

    def _step_once(self, metrics, timing_raw, sample_batch_size):
        batch = super()._step_once(metrics, timing_raw, sample_batch_size)
        metrics.update(partial_rollout_share(batch.tags))
        return batch

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
        """verl's advantage stage (KL penalty, rollout correction, the configured estimator), checked and logged."""
        data = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=["uid", "rm_scores"]
        )
        uids = np.array(to_list(data["uid"]), dtype=object)
        self._check_rewards(uids, data.exclude("uid").to_padded_tensor()["rm_scores"].sum(-1))
        batch = super()._compute_advantage(batch, metrics)
        data = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=["advantages", "response_mask"]
        )
        padded = data.to_padded_tensor()
        metrics["training/adv_std"] = per_rollout_advantage_std(padded["advantages"], padded["response_mask"])
        return batch

    def _save_checkpoint(self):
        """verl's save, after the run's own files: the algorithm that wrote it (refused at start when another one
        resumes it) and, through :meth:`_write_run_state`, what a trainer mode adds. verl writes its tracker file
        last, so a save cut short never names a checkpoint without them. A failed write (a full disk) stops the run
        with a message naming the folder and the checkpoint the same command resumes from."""
        root = self.config.trainer.default_local_dir
        with guarded_save(root, self.global_steps):
            folder = os.path.join(root, f"global_step_{self.global_steps}")
            os.makedirs(folder, exist_ok=True)
            self._write_run_state(folder)
            super()._save_checkpoint()

    def _write_run_state(self, folder: str) -> None:
        """Write what this trainer keeps beside verl's checkpoint into ``folder`` (a global_step_N folder)."""
        atomic_write_text(os.path.join(folder, RUN_IDENTITY_FILE), json.dumps(run_identity(self.config), indent=1))

    def _build_replay_buffer(self):
        buffer = super()._build_replay_buffer()
        poll_interval = self.config.get("runtime", {}).get("poll_interval_s", None)
        if poll_interval is not None:
            buffer.poll_interval = float(poll_interval)
        return buffer


def reports_mode(verl_mode: str) -> type:
    """A mixin making a trainer registered under its own name behave as verl's mode ``verl_mode``.

    verl 0.9.1 keys its behaviour on the mode's *name* (``trainer_mode == "sync"``): the synchronous or the
    asynchronous replay buffer, exact DAPO refills, TransferQueue state in checkpoints or not, the mode's config
    section (``trainer.v1.<mode>``). A subclass registered under another name would silently get the
    asynchronous variants, so it reports the verl mode it extends.
    """

    class ReportsMode:
        @property
        def trainer_mode(self) -> str:
            return verl_mode

        @trainer_mode.setter
        def trainer_mode(self, registered_name: str) -> None:  # verl assigns the configured name in __init__
            pass

    ReportsMode.__name__ = ReportsMode.__qualname__ = f"Reports_{verl_mode}"
    return ReportsMode


@register_trainer(TrainerMode.CHECKED_SYNC)
class CheckedSyncTrainer(CheckedSteps, reports_mode("sync"), PPOTrainerSync):
    """verl's ``PPOTrainerSync`` plus :class:`CheckedSteps`, with verl's sync semantics kept."""


@register_trainer(TrainerMode.DAPO)
class DapoTrainer(CheckedSyncTrainer):
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
