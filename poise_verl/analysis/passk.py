"""avg@k and the unbiased pass@k estimator (Chen et al. 2021, "Evaluating Large Language Models Trained on
Code", eq. 1).

From ``n`` samples of which ``c`` are correct, ``pass@k = 1 - C(n - c, k) / C(n, k)``: the probability that a
random size-``k`` subset of the ``n`` samples holds at least one correct one, an unbiased estimate of the
chance that ``k`` fresh samples hold one. It is computed as ``1 - prod_{i = n - c + 1}^{n} (1 - k / i)``,
which avoids huge binomials. avg@k is the mean correctness over ``k`` samples (= pass@1 with n = k).
"""

from __future__ import annotations

from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct (requires ``1 <= k <= n``, ``0 <= c <= n``)."""
    if not 1 <= k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every size-k subset contains a correct sample
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def report_ks(k: int) -> list[int]:
    """The k values reported for ``k`` samples per prompt: 1, 2, 4, ... up to k, and k itself."""
    ks = [1]
    while ks[-1] * 2 <= k:
        ks.append(ks[-1] * 2)
    if ks[-1] != k:
        ks.append(k)
    return ks


def mean_pass_at_k(correct_counts: Sequence[int], n: int, k: int) -> float:
    """pass@k averaged over prompts, each with ``n`` samples of which ``correct_counts[i]`` are correct."""
    if not correct_counts:
        return 0.0
    return sum(pass_at_k(n, c, k) for c in correct_counts) / len(correct_counts)
