"""poise-verl: POISE (Policy Optimization with Internal State Value Estimation) on verl 0.9.1.

POISE keeps GRPO/DAPO's sampling and clipped PPO update but replaces the group-mean baseline with a value
predicted by a light probe on the policy's own hidden states. With two rollouts per prompt, rollout i's
baseline is the probe's prediction from its sibling's features, so the policy gradient stays unbiased.

Importing this package registers the advantage estimator ``poise`` with verl's ``register_adv_est``, so
``algorithm.adv_estimator=poise`` works in any verl config. verl imports this package, the trainer modes, the
feature-capture engine and (on ``VERL_PLATFORM=cpu``) the CPU platform in every process through the
``verl.plugins`` entry points declared in pyproject.toml, the one way poise-verl's plugins load.

The algorithm itself lives in :mod:`poise_verl.core` (pure torch); :mod:`poise_verl.verl_ext` holds the
thin adapters that plug it into verl's registries.
"""

import importlib.util

# The pure-torch core works without verl (a bare GPU box, a notebook); where verl is installed, importing
# poise_verl registers the estimator, and any error in doing so propagates.
if importlib.util.find_spec("verl") is not None:
    from poise_verl.verl_ext import adv_estimator as _adv_estimator  # noqa: F401  (registers "poise")

__version__ = "0.1.0"
