"""poise-verl's trainer modes, registered with verl's ``register_trainer`` on import.

- ``checked_sync`` (``algo=grpo``): verl's sync trainer plus reward checks and the shared advantage metric;
- ``dapo`` (``algo=dapo``): the same plus a bound on DAPO's dynamic sampling;
- ``poise`` (``algo=poise``): the same plus feature capture and probe baselines (``poise.py``);
- ``checked_colocate_async`` (``algo=grpo_async``) and ``poise_colocate_async`` (``algo=poise_async``): the same
  on verl's colocated asynchronous trainer (``colocate_async.py``);
- ``checked_separate_async`` (``algo=grpo_fully_async``) and ``poise_separate_async`` (``algo=poise_fully_async``):
  the same on verl's fully asynchronous trainer, rollout on devices of its own (``separate_async.py``).

verl imports this package in every Ray process through the package's ``verl.plugins`` entry point; the modes
register when verl's trainer registry (``verl.trainer.ppo.v1``) is imported, at once if it already is, so the
processes that never look a mode up (the rollout, reward and probe workers) do not import the trainers.
"""

import importlib
import sys

from poise_verl.verl_ext.after_import import when_imported

_MODULES = [f"{__name__}.{name}" for name in ("checked_sync", "poise", "colocate_async", "separate_async")]
_executed: set[str] = set()


def _register_trainer_modes() -> None:
    # Importing one of these modules directly imports verl's registry from inside it, before it has defined its
    # classes, which the others import: wait until it has finished (it calls this again then).
    if any(name in sys.modules and name not in _executed for name in _MODULES):
        return
    for name in _MODULES:
        importlib.import_module(name)  # each registers its modes with verl's register_trainer


def _executed_one(name: str) -> None:
    _executed.add(name)
    _register_trainer_modes()


when_imported("verl.trainer.ppo.v1", _register_trainer_modes)
for _name in _MODULES:
    when_imported(_name, lambda name=_name: _executed_one(name))
