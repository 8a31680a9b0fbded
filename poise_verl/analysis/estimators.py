"""The value estimators the study compares, as a list of named entries (:data:`ESTIMATORS`).

Each entry says how to get its value estimate of every held-out prompt from the :class:`Study` (the rollouts,
their rewards, the split, the probe's layer sweep, the policy) and what that cost. The study scores every
entry against the held-out pass rates, and the entries marked ``disjoint`` also against the pass rate over
rollouts 3..m (which no 2-rollout estimator reads). Another estimator, e.g. a probe variant, is one more
entry: a function ``Study -> Estimate`` and a label.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from poise_verl.analysis.critic import predict as critic_predict
from poise_verl.analysis.critic import select_and_train_critic
from poise_verl.analysis.probe_sweep import LayerFit, metrics


@dataclass
class Study:
    """What the estimators may read: ``P`` prompts with ``m`` rollouts each, split into train and held-out."""

    args: argparse.Namespace  # the command line (critic and probe settings, seed)
    model: torch.nn.Module  # the policy
    tokenizer: object
    prompt_ids: list[list[int]]  # (P,) rendered prompts
    rewards: torch.Tensor  # (P, m) rewards in [0, 1]
    train: list[int]  # training prompts
    heldout: list[int]  # held-out prompts, the ones every estimator is scored on
    probe_layer: int  # the main comparison's layer
    probe_fits: dict[int, LayerFit]  # the probe at every swept layer

    @property
    def m(self) -> int:
        return self.rewards.shape[1]

    @property
    def pass_rates(self) -> torch.Tensor:
        return self.rewards.mean(1)


@dataclass
class Estimate:
    """One estimator's value estimates of the held-out prompts and its cost."""

    values: torch.Tensor  # (H,)
    train_seconds: float
    train_flops: float
    predict_seconds: float
    costs: dict = field(default_factory=dict)  # more cost entries for results.json (the critic's selection)
    settings: dict | None = None  # what it was, for results.json's settings
    records: dict = field(default_factory=dict)  # top-level results.json entries (the critic's grid)


@dataclass(frozen=True)
class EstimatorSpec:
    name: str  # its key in results.json
    label: Callable[[Study, Estimate], str]  # its row label in results.md
    estimate: Callable[[Study], Estimate]
    disjoint: bool = True  # also scored against the pass rate over rollouts 3..m
    scatter: str | None = None  # its panel title in scatter.png, if it has one


def _probe(rollouts: str) -> Callable[[Study], Estimate]:
    """The main layer's probe; its value estimate the mean over the m rollouts or over the first pair."""

    def estimate(study: Study) -> Estimate:
        fit = study.probe_fits[study.probe_layer]
        entry = fit.entry
        values = fit.value_m if rollouts == "m" else fit.value_2
        return Estimate(values, entry["fit_seconds"], entry["fit_flops"], entry["predict_seconds"])

    return estimate


def _critic(study: Study) -> Estimate:
    """A critic of the policy's size, prompt-only V(x), trained on the training prompts' pass rates."""
    args, pad_id = study.args, study.tokenizer.pad_token_id
    run, selection = select_and_train_critic(
        study.model,
        [study.prompt_ids[p] for p in study.train],
        study.pass_rates[study.train].tolist(),
        pad_id,
        args.critic_epochs,
        args.critic_lr,
        args.critic_batch_size,
        args.seed,
        args.critic_validation_fraction,
        next(study.model.parameters()).device,
    )
    clock = time.perf_counter()
    values = critic_predict(run.critic, [study.prompt_ids[p] for p in study.heldout], pad_id)
    predict_seconds = time.perf_counter() - clock
    del run.critic
    settings = {
        "parameters": run.parameters,
        "lr": run.lr,
        "epochs": run.epochs,
        "batch_size": args.critic_batch_size,
        "lr_grid": args.critic_lr,
        "max_epochs": args.critic_epochs,
        "validation_prompts": selection.get("validation_prompts", 0),
        "tokens": run.tokens,
    }
    return Estimate(
        values,
        run.seconds,
        run.flops,
        predict_seconds,
        costs={"selection_seconds": selection["seconds"], "selection_flops": selection["flops"]},
        settings=settings,
        records={"critic_selection": selection["grid"]},
    )


def _train_mean(study: Study) -> Estimate:
    value = float(study.pass_rates[study.train].mean())
    return Estimate(torch.full((len(study.heldout),), value), 0.0, float(len(study.train) * study.m), 0.0)


def _group_mean_2(study: Study) -> Estimate:
    return Estimate(study.rewards[study.heldout, :2].mean(1), 0.0, 0.0, 0.0)


ESTIMATORS: list[EstimatorSpec] = [
    EstimatorSpec(
        "probe_m_rollouts",
        lambda s, _: f"POISE probe, layer {s.probe_layer}, mean over the m={s.m} rollouts",
        _probe("m"),
        disjoint=False,  # reads every rollout of the target
        scatter="probe",
    ),
    EstimatorSpec(
        "probe_2_rollouts",
        lambda s, _: f"POISE probe, layer {s.probe_layer}, mean over 2 rollouts (n=2, as in training)",
        _probe("2"),
    ),
    EstimatorSpec(
        "critic",
        lambda _, e: f"critic ({e.settings['parameters']:,} parameters, prompt-only V(x))",
        _critic,
        scatter="critic",
    ),
    EstimatorSpec("train_mean", lambda s, e: "training-set mean pass rate (constant)", _train_mean),
    EstimatorSpec("group_mean_2", lambda s, e: "the prompt's own mean reward over 2 rollouts", _group_mean_2),
]


def compare(study: Study, specs: list[EstimatorSpec] = ESTIMATORS) -> dict:
    """Every estimator of ``specs``, in order, scored on the held-out prompts.

    Returns ``estimators`` and ``disjoint_target`` (results.json's tables), ``settings`` and ``records`` (what
    estimators report about themselves) and ``scatter`` (panel title -> held-out values).
    """
    target = study.pass_rates[study.heldout]
    # Disjoint target: pass rate over rollouts 3..m, which the 2-rollout estimators never read.
    target_disjoint = study.rewards[study.heldout, 2:].mean(1)
    out = {"estimators": {}, "disjoint_target": {}, "settings": {}, "records": {}, "scatter": {}}
    for spec in specs:
        estimate = spec.estimate(study)
        out["estimators"][spec.name] = {
            "label": spec.label(study, estimate),
            **metrics(estimate.values, target),
            "train_seconds": estimate.train_seconds,
            "train_flops": estimate.train_flops,
            **estimate.costs,
            "predict_seconds": estimate.predict_seconds,
        }
        if spec.disjoint:
            out["disjoint_target"][spec.name] = metrics(estimate.values, target_disjoint)
        if estimate.settings is not None:
            out["settings"][spec.name] = estimate.settings
        out["records"].update(estimate.records)
        if spec.scatter:
            out["scatter"][spec.scatter] = estimate.values
    return out
