"""The unbiased pass@k estimator against a brute-force count over all size-k subsets."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest

from poise_verl.analysis.passk import mean_pass_at_k, pass_at_k, report_ks


def brute_force_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Share of the size-k subsets of n samples (the first c correct) that hold a correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(samples[i] for i in subset) for subset in subsets), len(subsets))


@pytest.mark.parametrize("n", range(1, 11))
def test_pass_at_k_matches_brute_force(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(brute_force_pass_at_k(n, c, k)), abs=1e-12)


def test_pass_at_1_is_the_mean_and_pass_at_n_is_any():
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8)
    assert pass_at_k(8, 1, 8) == 1.0
    assert pass_at_k(8, 0, 8) == 0.0
    assert mean_pass_at_k([0, 4, 8], 8, 1) == pytest.approx(0.5)


def test_large_n_is_stable():
    # C(200, 100) overflows floats; the product form does not.
    assert 0.0 <= pass_at_k(200, 3, 100) <= 1.0
    assert pass_at_k(200, 3, 100) == pytest.approx(1 - (100 * 99 * 98) / (200 * 199 * 198))


def test_invalid_arguments():
    for n, c, k in ((4, 5, 1), (4, 1, 5), (4, 1, 0), (4, -1, 1)):
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_report_ks():
    assert report_ks(1) == [1]
    assert report_ks(8) == [1, 2, 4, 8]
    assert report_ks(6) == [1, 2, 4, 6]
