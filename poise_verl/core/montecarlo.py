"""Monte Carlo check of POISE's central claim: the cross-rollout baseline keeps the gradient unbiased.

Run ``python -m poise_verl.core.montecarlo`` to print the figures; ``tests/core/test_unbiasedness.py``
asserts on the same simulation.

The setting is a tabular softmax bandit that mimics an LLM step: ``X`` prompts, ``K`` answers ("actions"),
policy pi(a | x) = softmax(theta[x]), Bernoulli reward with success probability p[x, a]. Each batch holds
``M`` prompt groups of n = 2 rollouts. A rollout's features copy what POISE sees:

- prompt block: a noisy embedding of the prompt, shared by the two siblings (same prompt, same state);
- response block: one-hot(action) plus noise and a few pure-noise dimensions (the response's state);
- scalar block: the action's surprisal -log pi(a | x) plus noise (an entropy-like statistic).

The value probe g is the real ``PCARidgeProbe`` (alpha = 100), fitted the POISE way: on an independent
earlier batch, with sibling targets. Because answers are prompt-specific (prompt x prefers answer x), the
response block tells g which prompt it is looking at, so g(phi_i) depends on rollout i's own action, as a
real probe's does. Each replicate batch gives a policy-gradient estimate

    G = (1 / B) sum_i A_i grad_theta log pi(a_i | x_i)

for four choices of A_i, compared with the exact gradient of J = mean_x E_a[p[x, a]]:

- ``no_baseline``: A_i = R_i (unbiased, high variance);
- ``cross``: A_i = R_i - g(phi_j), j the sibling (POISE; unbiased, lower variance);
- ``self``: A_i = R_i - g(phi_i), the rollout's own prediction (biased: g(phi_i) depends on a_i);
- ``cross_refit_same_batch``: the cross baseline from a ridge refit on THIS batch's sibling targets before
  the advantages are computed (biased: b_i = g(phi_j) has seen the row (phi_j, R_i)). This leak is
  exaggerated on purpose (alpha = 1 on one 48-row batch) so that it is measurable; with the buffer and
  alpha = 100 it is smaller but still there, which is why POISE fixes advantages before refitting.

The z-score of coordinate c is (mean over replicates of G_c - exact_c) / (its standard error).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from poise_verl.core.cross_rollout import sibling_targets
from poise_verl.core.probe import PCARidgeProbe
from poise_verl.core.probe_features import OFFICIAL

__all__ = ["BanditConfig", "MonteCarloResult", "main", "run_bandit_simulation"]

ESTIMATORS = ("no_baseline", "cross", "self", "cross_refit_same_batch")


@dataclass(frozen=True)
class BanditConfig:
    """Parameters of the simulation (defaults give wide margins; see the module docstring)."""

    # p[x, a]: an easy, a medium and a hard prompt; 4 answers each.
    success_probability: tuple[tuple[float, ...], ...] = (
        (0.95, 0.80, 0.60, 0.40),
        (0.30, 0.70, 0.40, 0.20),
        (0.05, 0.20, 0.60, 0.10),
    )
    # theta[x, a] = preferred_logit when a == x else 0: prompt x prefers answer x.
    preferred_logit: float = 1.5
    groups_per_batch: int = 24  # M prompt groups of n = 2 rollouts; a multiple of the number of prompts
    replicates: int = 8000  # independent batches
    probe_fit_groups: int = 2048  # size of the earlier batch the probe is fitted on
    prompt_dim: int = 4
    prompt_signal: float = 0.5  # prompt embedding scale; noise has std 1
    response_noise: float = 0.3
    response_extra_dims: int = 4
    surprisal_noise: float = 0.1
    refit_alpha: float = 1.0  # ridge alpha of the "refit on this batch" mistake
    probe_alpha: float = 100.0  # ridge alpha of the POISE probe (the official value; the claim holds for any)
    seed: int = 0


@dataclass
class MonteCarloResult:
    """Figures of one simulation.

    Attributes:
        exact_gradient: ``(X * K,)`` exact grad of J.
        mean_gradient: estimator -> ``(X * K,)`` mean of G over replicates.
        z_scores: estimator -> ``(X * K,)`` (mean - exact) / standard error.
        max_abs_z: estimator -> max |z| over coordinates.
        total_variance: estimator -> sum over coordinates of Var(G).
        variance_ratio: estimator -> total_variance / total_variance of ``no_baseline``.
        relative_bias: estimator -> ||mean - exact|| / ||exact||.
        probe_pearson: correlation of the cross baseline with the reward, over all rollouts.
    """

    exact_gradient: torch.Tensor
    mean_gradient: dict[str, torch.Tensor] = field(default_factory=dict)
    z_scores: dict[str, torch.Tensor] = field(default_factory=dict)
    max_abs_z: dict[str, float] = field(default_factory=dict)
    total_variance: dict[str, float] = field(default_factory=dict)
    variance_ratio: dict[str, float] = field(default_factory=dict)
    relative_bias: dict[str, float] = field(default_factory=dict)
    probe_pearson: float = 0.0


def _policy(config: BanditConfig) -> tuple[torch.Tensor, torch.Tensor]:
    success = torch.tensor(config.success_probability, dtype=torch.float64)  # (X, K)
    prompts, actions = success.shape
    logits = torch.zeros(prompts, actions, dtype=torch.float64)
    logits[torch.arange(prompts), torch.arange(prompts) % actions] = config.preferred_logit
    return torch.softmax(logits, dim=1), success


def _sample(config: BanditConfig, replicates: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Draw ``replicates`` batches of M groups x 2 rollouts; every tensor is (replicates, M, 2, ...)."""
    policy, success = _policy(config)
    prompts, actions = success.shape
    groups = config.groups_per_batch
    # Group g asks prompt g mod X, so every batch holds M / X groups of each prompt.
    prompt = (torch.arange(groups) % prompts).expand(replicates, 2, groups).transpose(1, 2)  # (R, M, 2)
    probs = policy[prompt.reshape(-1)]  # (R*M*2, K)
    action = torch.multinomial(probs, 1, replacement=True, generator=generator).reshape(prompt.shape)
    reward = torch.rand(prompt.shape, generator=generator, dtype=torch.float64) < success[prompt, action]
    reward = reward.to(torch.float64)

    embedding = torch.eye(prompts, config.prompt_dim, dtype=torch.float64) * config.prompt_signal
    prompt_noise = torch.randn(
        replicates, groups, 1, config.prompt_dim, generator=generator, dtype=torch.float64
    )
    prompt_feats = embedding[prompt] + prompt_noise  # identical for the two siblings
    one_hot = torch.nn.functional.one_hot(action, actions).to(torch.float64)
    extra = torch.zeros(*action.shape, config.response_extra_dims, dtype=torch.float64)
    response_clean = torch.cat([one_hot, extra], dim=-1)
    response_feats = response_clean + config.response_noise * torch.randn(
        response_clean.shape, generator=generator, dtype=torch.float64
    )
    surprisal = -torch.log(policy[prompt, action])
    scalar_feats = (
        surprisal
        + config.surprisal_noise * torch.randn(surprisal.shape, generator=generator, dtype=torch.float64)
    ).unsqueeze(-1)
    return {
        "prompt": prompt,
        "action": action,
        "reward": reward,
        "prompt_feats": prompt_feats,
        "response_feats": response_feats,
        "scalar_feats": scalar_feats,
    }


def _flat(batch: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    value = batch[key]
    return value.reshape(-1, value.shape[-1])


def _fit_probe(config: BanditConfig, generator: torch.Generator) -> PCARidgeProbe:
    """The POISE probe: PCARidgeProbe fitted on an earlier, independent batch with sibling targets."""
    earlier = _sample(config, max(1, config.probe_fit_groups // config.groups_per_batch), generator)
    rewards = earlier["reward"].reshape(-1)
    group_index = torch.arange(rewards.shape[0]) // 2  # rollouts 2g and 2g + 1 are siblings
    probe = PCARidgeProbe(
        prompt_components=32, response_components=64, seed=config.seed, feature_order=OFFICIAL, alpha=config.probe_alpha
    )
    probe.fit(
        _flat(earlier, "prompt_feats"),
        _flat(earlier, "response_feats"),
        _flat(earlier, "scalar_feats"),
        sibling_targets(rewards, group_index),  # target_j = R_i, i the sibling of j
    )
    return probe


def _refit_same_batch_baselines(batch: dict[str, torch.Tensor], alpha: float) -> torch.Tensor:
    """The mistake: per replicate, ridge on (phi_j, R_sibling(j)) of THIS batch, then b_i = g(phi_j)."""
    features = torch.cat([batch["prompt_feats"], batch["response_feats"], batch["scalar_feats"]], dim=-1)
    replicates = features.shape[0]
    x = features.reshape(replicates, -1, features.shape[-1])  # (R, B, D)
    targets = batch["reward"].flip(-1).reshape(replicates, -1)  # sibling reward of each row, (R, B)
    x_mean, y_mean = x.mean(1, keepdim=True), targets.mean(1, keepdim=True)
    centred_x, centred_y = x - x_mean, targets - y_mean
    gram = centred_x.transpose(1, 2) @ centred_x + alpha * torch.eye(x.shape[-1], dtype=x.dtype)
    weights = torch.linalg.solve(gram, (centred_x.transpose(1, 2) @ centred_y.unsqueeze(-1)))  # (R, D, 1)
    predictions = (centred_x @ weights).squeeze(-1) + y_mean  # g(phi_j) for every row, (R, B)
    predictions = predictions.clamp(0.0, 1.0).reshape(batch["reward"].shape)
    return predictions.flip(-1)  # b_i = g(phi_j)


def run_bandit_simulation(config: BanditConfig | None = None) -> MonteCarloResult:
    """Simulate ``config.replicates`` batches and score the four baselines (see module docstring)."""
    config = config or BanditConfig()
    if config.groups_per_batch % len(config.success_probability) != 0:
        raise ValueError("groups_per_batch must be a multiple of the number of prompts")
    generator = torch.Generator().manual_seed(config.seed)
    policy, success = _policy(config)
    prompts, actions = success.shape
    # Exact gradient of J = mean_x sum_a pi(a|x) p[x, a]: dJ/dtheta[x] = pi_x * (p_x - V_x) / X.
    value = (policy * success).sum(1, keepdim=True)  # V_x
    exact = (policy * (success - value) / prompts).reshape(-1)

    probe = _fit_probe(config, generator)
    batch = _sample(config, config.replicates, generator)
    shape = batch["reward"].shape  # (R, M, 2)
    predictions = (
        probe.predict(
            _flat(batch, "prompt_feats").to(torch.float32),
            _flat(batch, "response_feats").to(torch.float32),
            _flat(batch, "scalar_feats").to(torch.float32),
        )
        .to(torch.float64)
        .reshape(shape)
    )  # g(phi_i)
    reward = batch["reward"]
    baselines = {
        "no_baseline": torch.zeros_like(reward),
        "cross": predictions.flip(-1),  # b_i = g(phi_j), j = the sibling (n = 2)
        "self": predictions,  # b_i = g(phi_i): the biased choice
        "cross_refit_same_batch": _refit_same_batch_baselines(batch, config.refit_alpha),
    }
    # grad_theta log pi(a | x) = one_hot(x) outer (one_hot(a) - pi_x), flattened to X * K coordinates.
    score = torch.nn.functional.one_hot(batch["action"], actions).to(torch.float64) - policy[batch["prompt"]]
    prompt_one_hot = torch.nn.functional.one_hot(batch["prompt"], prompts).to(torch.float64)
    rollouts = shape[1] * shape[2]  # B

    result = MonteCarloResult(exact_gradient=exact)
    for name in ESTIMATORS:
        advantage = reward - baselines[name]  # A_i = R_i - b_i
        weighted = (advantage.unsqueeze(-1) * score).unsqueeze(-2) * prompt_one_hot.unsqueeze(
            -1
        )  # (R,M,2,X,K)
        gradient = weighted.sum((1, 2)).reshape(config.replicates, -1) / rollouts  # G per replicate
        mean = gradient.mean(0)
        standard_error = gradient.std(0) / math.sqrt(config.replicates)
        z = (mean - exact) / standard_error
        result.mean_gradient[name] = mean
        result.z_scores[name] = z
        result.max_abs_z[name] = float(z.abs().max())
        result.total_variance[name] = float(gradient.var(0).sum())
        result.relative_bias[name] = float((mean - exact).norm() / exact.norm())
    for name in ESTIMATORS:
        result.variance_ratio[name] = result.total_variance[name] / result.total_variance["no_baseline"]
    cross, flat_reward = baselines["cross"].reshape(-1), reward.reshape(-1)
    result.probe_pearson = float(torch.corrcoef(torch.stack([cross, flat_reward]))[0, 1])
    return result


def format_result(result: MonteCarloResult, config: BanditConfig) -> str:
    """A small table of the figures."""
    coordinates = result.exact_gradient.numel()
    prompts, answers = len(config.success_probability), len(config.success_probability[0])
    header = (
        f"softmax bandit: {prompts} prompts x {answers} answers, {config.replicates} batches of "
        f"{config.groups_per_batch} groups x 2 rollouts, seed {config.seed}"
    )
    probe_line = (
        "probe: PCARidgeProbe fitted on an earlier batch with sibling targets; "
        f"corr(cross baseline, reward) = {result.probe_pearson:.3f}"
    )
    columns = (
        f"{'estimator':<24}{f'max|z| ({coordinates} coords)':>22}{'rel. bias':>11}"
        f"{'total var':>12}{'var / no_baseline':>19}"
    )
    lines = [header, probe_line, columns]
    for name in ESTIMATORS:
        lines.append(
            f"{name:<24}{result.max_abs_z[name]:>22.2f}{result.relative_bias[name]:>11.3f}"
            f"{result.total_variance[name]:>12.3e}{result.variance_ratio[name]:>19.3f}"
        )
    return "\n".join(lines)


def main() -> None:
    config = BanditConfig()
    print(format_result(run_bandit_simulation(config), config))


if __name__ == "__main__":
    main()
