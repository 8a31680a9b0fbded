"""POISE's central claim by Monte Carlo (see ``poise_verl.core.montecarlo``).

With the baseline taken from the sibling rollout, the policy-gradient estimate stays unbiased and its
variance drops; the same probe's prediction used as the rollout's own baseline, or a probe refit on the
batch before the advantages are fixed, biases it.
"""

from __future__ import annotations

import pytest

from poise_verl.core.montecarlo import BanditConfig, format_result, run_bandit_simulation

# 12 coordinates: |z| > 4 on any of them has probability ~ 12 * 6e-5 < 1e-3 for an unbiased estimator.
UNBIASED_MAX_Z = 4.0
BIASED_MIN_Z = 6.0


@pytest.fixture(scope="module")
def result():
    config = BanditConfig()
    simulation = run_bandit_simulation(config)
    print("\n" + format_result(simulation, config))
    return simulation


def test_cross_rollout_baseline_is_unbiased(result):
    assert result.max_abs_z["cross"] < UNBIASED_MAX_Z, result.z_scores["cross"]
    # Sanity check of the harness itself: the plain REINFORCE estimate is unbiased too.
    assert result.max_abs_z["no_baseline"] < UNBIASED_MAX_Z, result.z_scores["no_baseline"]


def test_cross_rollout_baseline_reduces_variance(result):
    assert result.variance_ratio["cross"] < 0.75, result.variance_ratio


def test_own_prediction_as_baseline_is_biased(result):
    assert result.max_abs_z["self"] > BIASED_MIN_Z, result.z_scores["self"]


def test_refitting_before_the_advantages_is_biased(result):
    assert result.max_abs_z["cross_refit_same_batch"] > BIASED_MIN_Z, result.z_scores[
        "cross_refit_same_batch"
    ]


def test_the_probe_tracks_the_reward(result):
    # The cross baseline must carry signal, or the variance test above would be vacuous.
    assert result.probe_pearson > 0.05


def test_the_report_names_every_estimator(result):
    report = format_result(result, BanditConfig())
    for name in ("no_baseline", "cross", "self", "cross_refit_same_batch"):
        assert f"\n{name} " in report
