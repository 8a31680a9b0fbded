"""poise-verl: POISE (Policy Optimization with Internal State Value Estimation) on verl 0.9.1.

POISE keeps GRPO/DAPO's sampling and clipped PPO update but replaces the group-mean baseline with a value
predicted by a light probe on the policy's own hidden states. With two rollouts per prompt, rollout i's
baseline is the probe's prediction from its sibling's features, so the policy gradient stays unbiased.

Importing this package registers the advantage estimator ``poise`` with verl's ``register_adv_est``, so
``algorithm.adv_estimator=poise`` works in any verl config, and the feature-capture engine with verl's engine
registry. verl imports this package, the trainer modes and the CPU platform in every process through the
``verl.plugins`` entry points declared in pyproject.toml, the one way poise-verl's plugins load. Each piece
registers the moment verl imports the registry it goes into (:mod:`poise_verl.verl_ext.after_import`), so a
process that never looks one up does not import it.

The algorithm itself lives in :mod:`poise_verl.core` (pure torch); :mod:`poise_verl.verl_ext` holds the
thin adapters that plug it into verl's registries.
"""

import importlib.util

# The pure-torch core works without verl (a bare GPU box, a notebook). Where verl is installed, the estimator and
# the feature-capture engine register as soon as verl's registry for each (core_algos, the engine package) is
# imported, at once if it already is; any error in doing so propagates to that import. A process that never loads
# a registry never pays for it.
if importlib.util.find_spec("verl") is not None:
    from poise_verl.verl_ext.after_import import when_imported

    def _register_estimator() -> None:
        from poise_verl.verl_ext import adv_estimator  # noqa: F401  (registers "poise")

    def _register_capture_engine() -> None:
        from poise_verl.verl_ext import capture_engine  # noqa: F401  (the engine of VERL_ENGINE_VENDOR=poise)

    when_imported("verl.trainer.ppo.core_algos", _register_estimator)
    when_imported("verl.workers.engine", _register_capture_engine)

__version__ = "0.1.0"
