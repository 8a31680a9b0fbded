"""poise-verl's trainer modes, registered with verl's ``register_trainer`` on import.

- ``checked_sync`` (``algo=grpo``): verl's sync trainer plus reward checks and the shared advantage metric;
- ``dapo`` (``algo=dapo``): the same plus a bound on DAPO's dynamic sampling;
- ``poise`` (``algo=poise``): the same plus feature capture and probe baselines (``poise.py``);
- ``checked_colocate_async`` (``algo=grpo_async``) and ``poise_colocate_async`` (``algo=poise_async``): the same
  on verl's colocated asynchronous trainer (``colocate_async.py``).

verl imports this module in every Ray process through the package's ``verl.plugins`` entry point.
"""

from poise_verl.verl_ext.trainer.checked_sync import CheckedSyncTrainer, DapoTrainer
from poise_verl.verl_ext.trainer.colocate_async import CheckedColocateAsyncTrainer, PoiseColocateAsyncTrainer
from poise_verl.verl_ext.trainer.poise import PoiseTrainer

__all__ = [
    "CheckedColocateAsyncTrainer",
    "CheckedSyncTrainer",
    "DapoTrainer",
    "PoiseColocateAsyncTrainer",
    "PoiseTrainer",
]
