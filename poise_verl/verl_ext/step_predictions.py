"""How the POISE trainer hands one step's probe predictions to the ``poise`` estimator inside verl's stage.

verl 0.9.1's v1 advantage stage reads a fixed list of fields from the batch, so the predictions cannot travel
in it; the trainer enters ``step_predictions(...)`` around verl's stage and the estimator reads them back
(``poise_verl.verl_ext.adv_estimator``). This module imports nothing of verl: the trainer module, which verl
imports while it initialises, can import it without an import cycle.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["StepPredictions", "current_step_predictions", "step_predictions"]


@dataclass(frozen=True)
class StepPredictions:
    """What the POISE trainer hands the estimator for one step, one entry per row in verl's batch order.

    Attributes:
        uids: ``(bs,)`` prompt uid of each row, to check alignment with verl's ``index``.
        predictions: ``(bs,)`` g(phi_i) from a probe fitted on earlier steps only.
        from_probe: ``(bs,)`` bool; False where the row's baseline input is its reward instead (RLOO:
            bootstrap steps, or a domain whose probe is not fitted yet).
        valid: ``(bs,)`` bool; False on verl's padding rows and on a rollout whose siblings never arrived
            (advantage 0, in no group).
    """

    uids: np.ndarray
    predictions: torch.Tensor
    from_probe: torch.Tensor
    valid: torch.Tensor


_CURRENT: ContextVar[StepPredictions | None] = ContextVar("poise_step_predictions", default=None)


@contextmanager
def step_predictions(step: StepPredictions) -> Iterator[None]:
    """Make ``step`` the predictions the ``poise`` estimator uses while verl's advantage stage runs."""
    token = _CURRENT.set(step)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current_step_predictions() -> StepPredictions | None:
    """The predictions of the step whose advantage stage is running, or None outside one."""
    return _CURRENT.get()
