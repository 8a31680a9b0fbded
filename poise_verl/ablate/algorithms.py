"""The algorithms an ablation can compare: one entry each, the only place that says how to select one.

An entry names the Hydra overrides that select the algorithm (before the user's own overrides) and what the
report needs to know about it. A variant of an algorithm is one more entry that also sets ``algo_name`` to
its own name: the composed ``trainer.experiment_name`` (``tiny_${algo_name}``, ``qwen3_4b_${algo_name}``)
then names the variant, so its runs do not share the base algorithm's experiment name (in wandb, say).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Algorithm:
    name: str  # the run folder's name and the name in --algos, tables and plots
    overrides: tuple[str, ...]  # the Hydra overrides that select it, first on the run's command line
    colour: str  # its colour in every figure
    probe: bool = False  # logs POISE's probe metrics (poise/probe_pearson, ...): probe figure and Pearson
    dynamic_sampling: bool = False  # drops groups whose rewards agree (DAPO): extra generated rollouts

    @property
    def override_keys(self) -> tuple[str, ...]:
        return tuple(override.lstrip("+~").split("=", 1)[0] for override in self.overrides)


ALGORITHMS: dict[str, Algorithm] = {
    algorithm.name: algorithm
    for algorithm in (
        Algorithm("poise", ("algo=poise",), "tab:blue", probe=True),
        # POISE that keeps, of twice the step's prompts, those whose prompt-only probe predicts the most
        # informative pass rate (poise_verl/core/selection.py); the generation budget is unchanged.
        Algorithm(
            "poise_select",
            ("algo=poise", "poise.selection.mode=probe", "algo_name=poise_select"),
            "tab:purple",
            probe=True,
        ),
        # POISE with a GRESO-style filter from each prompt's reward history, the same way.
        Algorithm(
            "poise_history",
            ("algo=poise", "poise.selection.mode=history", "algo_name=poise_history"),
            "tab:brown",
            probe=True,
        ),
        # The control for POISE's probe: POISE's 2 rollouts per prompt and budget, the sibling's reward as every
        # step's baseline (RLOO with n=2: A_i = R_i - R_j), never the probe's prediction. The probe is still fitted
        # and scored (poise/probe_pearson), so its predictions can be compared with the baseline it did not give.
        Algorithm(
            "rloo2",
            ("algo=poise", "poise.bootstrap_steps=${trainer.total_training_steps}", "algo_name=rloo2"),
            "tab:gray",
        ),
        Algorithm("dapo", ("algo=dapo",), "tab:orange", dynamic_sampling=True),
        Algorithm("grpo", ("algo=grpo",), "tab:green"),
        # On verl's colocated asynchronous trainer: the next batch generates across the weight update.
        Algorithm("poise_async", ("algo=poise_async",), "tab:cyan", probe=True),
        Algorithm("grpo_async", ("algo=grpo_async",), "tab:olive"),
        # On verl's fully asynchronous trainer: the rollout on a device of its own, generating while the actor trains.
        Algorithm("poise_fully_async", ("algo=poise_fully_async",), "tab:red", probe=True),
        Algorithm("grpo_fully_async", ("algo=grpo_fully_async",), "tab:pink"),
    )
}
# Every algorithm: `python -m poise_verl.ablate` alone runs the whole comparison; --algos picks a subset.
DEFAULT_ALGOS = tuple(ALGORITHMS)
# The algorithm whose mean final accuracy is the default target, and the denominator of the ratios.
REFERENCE_ALGO = "dapo"


def colour(name: str, index: int) -> str:
    """An algorithm's colour; one of matplotlib's cycle for a name the registry does not know."""
    return ALGORITHMS[name].colour if name in ALGORITHMS else f"C{index + 3}"
