"""poise-verl's trainer modes, registered with verl's ``register_trainer`` on import.

- ``checked_sync`` (``algo=grpo``): verl's sync trainer plus reward checks and the shared advantage metric;
- ``dapo`` (``algo=dapo``): the same plus a bound on DAPO's dynamic sampling;
- ``poise`` (``algo=poise``): the same plus feature capture and probe baselines (``poise.py``).

verl imports this module in every Ray process through the package's ``verl.plugins`` entry point.
"""

from poise_verl.verl_ext.trainer.checked_sync import CheckedSyncTrainer, DapoTrainer
from poise_verl.verl_ext.trainer.poise import PoiseTrainer

__all__ = ["CheckedSyncTrainer", "DapoTrainer", "PoiseTrainer"]
