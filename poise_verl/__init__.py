"""poise-verl: POISE (Policy Optimization with Internal State Value Estimation) on verl 0.9.1.

POISE keeps GRPO/DAPO's sampling and clipped PPO update but replaces the group-mean baseline with a value
predicted by a light probe on the policy's own hidden states. With two rollouts per prompt, rollout i's
baseline is the probe's prediction from its sibling's features, so the policy gradient stays unbiased.

Importing this package registers the advantage estimator ``poise`` with verl's ``register_adv_est``, so
``algorithm.adv_estimator=poise`` works in any verl config. verl imports this package in every process
through the ``verl.plugins`` entry point declared in pyproject.toml (set ``VERL_USE_EXTERNAL_PLUGINS=none``
to turn that off, and ``VERL_USE_EXTERNAL_MODULES=poise_verl`` to name it explicitly instead).

The algorithm itself lives in :mod:`poise_verl.core` (pure torch); :mod:`poise_verl.verl_ext` holds the
thin adapters that plug it into verl's registries.
"""

import importlib.util

# The pure-torch core works without verl (a bare GPU box, a notebook); where verl is installed, importing
# poise_verl registers the estimator, and any error in doing so propagates.
if importlib.util.find_spec("verl") is not None:
    from poise_verl.verl_ext import adv_estimator as _adv_estimator  # noqa: F401  (registers "poise")

__version__ = "0.1.0"
