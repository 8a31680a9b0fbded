"""poise-verl's trainer modes on verl 0.9.1's fully asynchronous trainer (``PPOTrainerSeparateAsync``).

verl's ``separate_async`` trainer puts the rollout servers on devices of their own (``actor_rollout_ref.rollout.
nnodes`` x ``n_gpus_per_node``) and never pauses them for a training phase: they generate the next batches while
the actor computes log-probs, advantages and its update, and after each step the actor's weights reach them
through a checkpoint engine (NCCL on GPUs, this project's ``gloo`` engine on the CPU). A request running across
a weight sync is aborted and resumed with the new weights (partial rollout, verl's
``FullyAsyncLLMServerClient``). A batch is whichever whole prompt groups have finished, so both rollouts of a
POISE prompt train together; a rollout may be some updates behind the policy that trains on it, and verl's
rollout correction (``algorithm.rollout_correction``) weighs it from the rollout's own log-probs.

- ``checked_separate_async`` (``algo=grpo_fully_async``): that trainer plus the checks and metrics of
  :class:`~poise_verl.verl_ext.trainer.checked_sync.CheckedSteps`;
- ``poise_separate_async`` (``algo=poise_fully_async``): the same plus POISE (:class:`~.poise.PoiseSteps`).

The rule that keeps POISE's gradient unbiased is the sync trainer's: a batch's baselines come from probes fitted
on earlier batches only (predict, then verl's advantage stage, then the refit), and b_i = g(phi_j) uses the
sibling j, independent of rollout i given the prompt, whatever policy sampled them. A rollout's features come from
the trainer's old-log-prob forward of its full tokens, by the weights the trainer holds at that step (verl's
``_compute_old_log_prob``: pi_old of the step, saved before its first mini-batch), also when the rollout itself
spans a weight sync.

Both report ``separate_async`` to verl (its section ``trainer.v1.separate_async``, its asynchronous replay buffer
and TransferQueue checkpoint). Each step also logs the overlap achieved (:func:`overlap_metrics`).
"""

from __future__ import annotations

import logging

from verl.trainer.ppo.v1 import trainer_separate_async
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_separate_async import PPOTrainerSeparateAsync

from poise_verl.config import TrainerMode
from poise_verl.verl_ext.trainer.checked_sync import CheckedSteps, reports_mode
from poise_verl.verl_ext.trainer.poise import PoiseSteps


def overlap_metrics(timing_raw: dict[str, float]) -> dict[str, float]:
    """How much of a step each side spent waiting, from verl's phase timers (seconds).

    ``separate_async/trainer_wait_share``: the share of the step the trainer waited for a batch to finish
    generating (``gen``: sampling from the replay buffer); 0 when the rollout servers keep ahead.
    ``separate_async/rollout_weight_wait_share``: the share of the step the rollout servers were stopped for the
    weight sync (``update_weights``: abort, transfer, resume). Both near 0 is full overlap; a large first share
    asks for more rollout devices, a large second one for a faster weight-sync backend or a larger
    ``parameter_sync_step``.
    """
    step = float(timing_raw.get("step", 0.0))
    if step <= 0.0:
        return {}
    return {
        "separate_async/trainer_wait_share": float(timing_raw.get("gen", 0.0)) / step,
        "separate_async/rollout_weight_wait_share": float(timing_raw.get("update_weights", 0.0)) / step,
    }


class OverlapMetrics:
    """Adds :func:`overlap_metrics` to each step's metrics (the step timer closes after ``on_step_end``)."""

    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        metrics.update(overlap_metrics(timing_raw))
        return super()._compute_metrics(batch, metrics, timing_raw, global_steps=global_steps, epoch=epoch)


class StandaloneRolloutSetup:
    """verl 0.9.1's ``PPOTrainerSeparateAsync._setup`` logs its rollout-only layout (``hybrid_engine=false``) with
    ``logger.info(..., flush=True)``, which ``logging`` refuses (TypeError) whenever INFO is enabled, as it is by
    verl's default ``VERL_LOGGING_LEVEL``: that one module's INFO is off while verl sets up."""

    def _setup(self):
        verl_logger = trainer_separate_async.logger
        level = verl_logger.level
        verl_logger.setLevel(max(level, logging.WARNING))
        try:
            super()._setup()
        finally:
            verl_logger.setLevel(level)


@register_trainer(TrainerMode.CHECKED_SEPARATE_ASYNC)
class CheckedSeparateAsyncTrainer(
    OverlapMetrics, CheckedSteps, StandaloneRolloutSetup, reports_mode("separate_async"), PPOTrainerSeparateAsync
):
    """verl's fully asynchronous trainer plus :class:`CheckedSteps` and the overlap metrics."""


@register_trainer(TrainerMode.POISE_SEPARATE_ASYNC)
class PoiseSeparateAsyncTrainer(PoiseSteps, CheckedSeparateAsyncTrainer):
    """verl's fully asynchronous trainer with POISE."""
