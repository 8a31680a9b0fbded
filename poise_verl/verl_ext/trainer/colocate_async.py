"""poise-verl's trainer modes on verl 0.9.1's colocated asynchronous trainer (``PPOTrainerColocateAsync``).

verl's ``colocate_async`` trainer keeps the next batch's prompts generating ahead of the step that trains on the
current one: before each update it aborts the rollouts still running (``abort_all_requests``), and after the
weight update it resumes them with the new weights (partial rollout: verl's asynchronous client sends each
aborted request again with the tokens it has so far). A batch is whichever prompt groups have finished, whole
groups only, so both rollouts of a POISE prompt always land in the same batch; a rollout can be some updates
behind the policy being trained, and verl's rollout correction (``algorithm.rollout_correction``) weighs it as
under any of its trainers.

- ``checked_colocate_async`` (``algo=grpo_async``): that trainer plus the checks and metrics of
  :class:`~poise_verl.verl_ext.trainer.checked_sync.CheckedSteps`;
- ``poise_colocate_async`` (``algo=poise_async``): the same plus POISE (:class:`~.poise.PoiseSteps`). The rule
  that keeps POISE's gradient unbiased holds as in the sync trainer: a batch's baselines come from probes fitted
  on earlier batches only, and the probes see the batch after its advantages are fixed. A stale behaviour
  policy changes neither: b_i = g(phi_j) uses the sibling j, independent of rollout i given the prompt.

Both report ``colocate_async`` to verl (its replay buffer, its TransferQueue checkpoint of the prompts generated
ahead, its warm-up of ``trainer.v1.colocate_async.num_warmup_batches``).
"""

from __future__ import annotations

from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_colocate_async import PPOTrainerColocateAsync

from poise_verl.config import TrainerMode
from poise_verl.verl_ext.trainer.checked_sync import CheckedSteps, reports_mode
from poise_verl.verl_ext.trainer.poise import PoiseSteps


@register_trainer(TrainerMode.CHECKED_COLOCATE_ASYNC)
class CheckedColocateAsyncTrainer(CheckedSteps, reports_mode("colocate_async"), PPOTrainerColocateAsync):
    """verl's colocated asynchronous trainer plus :class:`CheckedSteps`."""


@register_trainer(TrainerMode.POISE_COLOCATE_ASYNC)
class PoiseColocateAsyncTrainer(PoiseSteps, CheckedColocateAsyncTrainer):
    """verl's colocated asynchronous trainer with POISE."""
