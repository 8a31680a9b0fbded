"""POISE's algorithm in pure torch: features, probe, replay buffer, cross-rollout advantages.

How POISE differs from GRPO/DAPO: instead of normalising rewards within a large group of rollouts
(DAPO: n = 16 plus dynamic sampling), POISE samples n = 2 rollouts per prompt and takes each rollout's
baseline from a small value probe g evaluated on its sibling's internal state:
b_i = mean_{j != i} g(phi_j), A_i = R_i - b_i, with no std normalisation. g reads phi from the actor's own
old-log-prob forward pass (``pooling``, ``entropy``), is refit each step on a replay buffer of
(phi_j, mean sibling reward) rows (``buffer``, ``probe``, ``cross_rollout.sibling_targets``), and is refit
only AFTER the advantages are fixed, which keeps the policy gradient unbiased (``montecarlo``).

Nothing here imports Ray, Hydra or verl; inputs are tensors, masks and group ids.
"""

from poise_verl.core.buffer import FALLBACK_DOMAIN, ProbeDataset, ProbeReplayBuffer, storage_domain
from poise_verl.core.cross_rollout import (
    check_groups,
    cross_baselines,
    cross_rollout_advantages,
    group_inverse,
    leave_one_out_mean,
    sibling_targets,
)
from poise_verl.core.diagnostics import baseline_diagnostics
from poise_verl.core.domain_probes import DomainProbes
from poise_verl.core.entropy import (
    DEFAULT_ENTROPY_FEATURES,
    ENTROPY_FEATURE_NAMES,
    ENTROPY_SPLITS,
    end_of_thinking_parts,
    entropy_feature_matrix,
    entropy_statistics,
)
from poise_verl.core.marker import marker_ends
from poise_verl.core.pooling import (
    DEFAULT_POOL_TOKENS,
    PooledFeatures,
    PooledPositions,
    pool_at_positions,
    pool_packed,
    pooled_positions_packed,
)
from poise_verl.core.probe import (
    PROBE_REGISTRY,
    LogisticProbe,
    MLPProbe,
    PCARidgeProbe,
    ValueProbe,
    build_probe,
    ridge_fit,
)
from poise_verl.core.probe_features import FeatureTransform

__all__ = [
    "DEFAULT_ENTROPY_FEATURES",
    "DEFAULT_POOL_TOKENS",
    "ENTROPY_FEATURE_NAMES",
    "ENTROPY_SPLITS",
    "FALLBACK_DOMAIN",
    "PROBE_REGISTRY",
    "DomainProbes",
    "FeatureTransform",
    "LogisticProbe",
    "MLPProbe",
    "PCARidgeProbe",
    "PooledFeatures",
    "PooledPositions",
    "ProbeDataset",
    "ProbeReplayBuffer",
    "ValueProbe",
    "baseline_diagnostics",
    "build_probe",
    "check_groups",
    "cross_baselines",
    "cross_rollout_advantages",
    "end_of_thinking_parts",
    "entropy_feature_matrix",
    "entropy_statistics",
    "group_inverse",
    "leave_one_out_mean",
    "marker_ends",
    "pool_at_positions",
    "pool_packed",
    "pooled_positions_packed",
    "ridge_fit",
    "sibling_targets",
    "storage_domain",
]
