"""How well does POISE's probe estimate a prompt's value? Probe vs a critic of the policy's size vs baselines.

    python -m poise_verl.analysis.value_estimator --model PATH --data FILE.parquet [--num-prompts 200] [--m 8]
        [--layers all|L1,L2,...] [--output DIR] [--seed 0]

The paper's experiment (POISE, value-estimator comparison), on your model and data:

1. Sample ``m`` rollouts per prompt from the policy (temperature 1, as in training) and score them; a
   prompt's empirical pass rate over the ``m`` rollouts is its ground-truth value V(x).
2. Split the prompts into training and held-out prompts (seeded).
3. POISE probe: features phi from the policy's own forward over each rollout (``analysis.features``: pooled
   decoder-layer states and entropy statistics, every layer hooked in one forward), the m rollouts of a
   prompt grouped into pairs (n = 2, as POISE trains), each row's target its sibling's reward
   (``core.cross_rollout.sibling_targets``), the official probe (PCA 32/64 of the raw pooled states, one
   standardisation, ridge alpha 100).
   A held-out prompt's value estimate is the mean of the probe's predictions over its m rollouts (and,
   as POISE sees it during training, over one pair).
4. Critic: a copy of the policy with a scalar head at the last prompt token, trained with MSE on the
   training prompts' rewards (``analysis.critic``), learning rate and epochs picked on a slice of the
   training prompts.
5. Baselines: the training-set mean pass rate (a constant: Pearson 0 by convention), and the prompt's own
   mean reward over 2 of its rollouts (a noisy direct estimate).

Reported on held-out prompts against their empirical pass rates: MAE and Pearson (``core.diagnostics``;
Pearson of a constant predictor is 0), each estimator's training time and FLOPs, a sweep over every decoder
layer for the probe, and a second comparison against a target that excludes the 2 rollouts the 2-rollout
estimators read (the probe reads a rollout's response, which carries that rollout's outcome; the disjoint
target removes this advantage). Writes DIR/results.md, DIR/results.json, DIR/layer_sweep.png,
DIR/scatter.png.

The stages, in order: ``sample`` (prompts, rollouts, rewards), ``split``, ``rollout_features``
(``analysis.features``), ``probe_sweep.layer_sweep`` (the probe at every layer), ``estimators.compare`` (every
entry of ``estimators.ESTIMATORS``, the probe, the critic and the baselines, scored alike), ``report.write``.

Paper anchor (Qwen3-4B, DAPO-Math, avg@8 of held-out prompts): probe Pearson 0.870 / MAE 0.141, critic
0.676 / 0.262.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from pathlib import Path

import torch

from poise_verl.analysis import report
from poise_verl.analysis.estimators import Study, compare
from poise_verl.analysis.features import (
    RolloutFeatures,
    check_packed_forward,
    extract_features,
)
from poise_verl.analysis.policy import CheckpointError, eos_token_ids, load_policy
from poise_verl.analysis.probe_sweep import ProbeSettings, choose_layers, layer_sweep
from poise_verl.analysis.prompts import DataError, encode_prompt, read_prompts
from poise_verl.analysis.sampling import score_responses
from poise_verl.config import default_poise_settings
from poise_verl.core.capture import decoder_layers
from poise_verl.core.probe_features import FEATURE_ORDERS
from poise_verl.generation import generate_hf
from poise_verl.reasoning_split import end_of_thinking_ids

logger = logging.getLogger("poise_verl.analysis.value_estimator")

PAPER_ANCHOR = {
    "setting": "official POISE, Qwen3-4B, DAPO-Math, target = avg@8 pass rate of held-out prompts",
    "probe": {"pearson": 0.870, "mae": 0.141},
    "critic": {"pearson": 0.676, "mae": 0.262},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m poise_verl.analysis.value_estimator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model", required=True, help="HF model directory or verl checkpoint .../global_step_N"
    )
    parser.add_argument("--data", nargs="+", required=True, help="verl-format parquet file(s)")
    parser.add_argument("--num-prompts", type=int, default=200, help="prompts drawn (seeded) from the data")
    parser.add_argument("--m", type=int, default=8, help="rollouts per prompt (even, >= 4; the paper uses 8)")
    parser.add_argument(
        "--layers", default="all", help="probe layer sweep: 'all' or comma-separated 0-based layers"
    )
    parser.add_argument(
        "--probe-layer",
        type=int,
        default=None,
        help="layer of the main comparison (default: 19/36 of the depth, POISE's Qwen3-4B choice)",
    )
    parser.add_argument("--output", default="value_estimator_output", help="output directory (created)")
    parser.add_argument("--seed", type=int, default=0, help="prompt draw, split, sampling and critic seed")
    parser.add_argument("--heldout-fraction", type=float, default=0.5, help="share of prompts held out")
    parser.add_argument("--temperature", type=float, default=1.0, help="rollout temperature (POISE: 1.0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="rollout top_p (POISE: 1.0)")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="response token limit")
    # The probe's defaults are the trainer's (hydra_configs/poise_trainer.yaml, the official values).
    poise = default_poise_settings()
    parser.add_argument(
        "--pool-tokens", type=int, default=poise.pool_last_k, help="tokens pooled per part (poise.pool_last_k)"
    )
    parser.add_argument(
        "--end-of-thinking-token",
        default=poise.end_of_thinking_token or "none",
        help="splits entropy parts and ends the response pool, one token or several ('none' to disable)",
    )
    parser.add_argument(
        "--prompt-components",
        type=int,
        default=poise.probe.prompt_pca_dim,
        help="probe PCA dims, prompt (poise.probe.prompt_pca_dim)",
    )
    parser.add_argument(
        "--response-components",
        type=int,
        default=poise.probe.response_pca_dim,
        help="probe PCA dims, response (poise.probe.response_pca_dim)",
    )
    parser.add_argument(
        "--ridge-alpha", type=float, default=poise.probe.ridge.alpha, help="probe ridge alpha (poise.probe.ridge.alpha)"
    )
    parser.add_argument(
        "--probe-order",
        choices=FEATURE_ORDERS,
        default=poise.probe.feature_order,
        help="probe input transform (poise.probe.feature_order): official (default) or standardise_first",
    )
    parser.add_argument("--critic-epochs", type=int, default=10, help="critic: most epochs tried")
    parser.add_argument(
        "--critic-lr",
        default="1e-5,1e-4,1e-3",
        help="critic Adam learning rate(s); with several, lr and epochs are picked on a training slice",
    )
    parser.add_argument("--critic-batch-size", type=int, default=16, help="critic prompts per step")
    parser.add_argument(
        "--critic-validation-fraction",
        type=float,
        default=0.2,
        help="share of training prompts used to pick the critic's lr and epochs (0 with one lr: no selection)",
    )
    parser.add_argument("--batch-size", type=int, default=256, help="rollouts per generate call")
    parser.add_argument("--token-budget", type=int, default=8192, help="tokens per packed feature forward")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--chat-template-kwargs", type=json.loads, default={}, help="JSON for apply_chat_template"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if args.m < 4 or args.m % 2:
        parser.error("--m must be even and >= 4 (pairs of rollouts, and rollouts beyond the first pair)")
    if args.num_prompts < 4:
        parser.error("--num-prompts must be >= 4")
    if not 0 < args.heldout_fraction < 1:
        parser.error("--heldout-fraction must lie in (0, 1)")
    try:
        args.critic_lr = [float(v) for v in str(args.critic_lr).split(",") if v.strip()]
    except ValueError:
        parser.error("--critic-lr must be a number or comma-separated numbers")
    if not args.critic_lr or args.critic_epochs < 1:
        parser.error("need at least one --critic-lr and --critic-epochs >= 1")
    return args


def pearson_ceiling(pass_rates: torch.Tensor, m: int) -> float:
    """Estimated Pearson between the TRUE pass rates and their m-sample estimates.

    No estimator that is independent of the sampled outcomes can, in expectation, correlate better with
    the empirical pass rate. Var(true p) = Var(p_hat) - mean(p_hat (1 - p_hat)) / (m - 1) (binomial noise,
    unbiased); the ceiling is sqrt(Var(true p) / Var(p_hat)), 0 when the pass rates do not vary.
    """
    rates = pass_rates.double()
    observed = float(rates.var(correction=0))
    if observed <= 1e-12:
        return 0.0
    noise = float((rates * (1 - rates)).mean()) / (m - 1)
    return math.sqrt(max(0.0, observed - noise) / observed)


def sample(args: argparse.Namespace, model, tokenizer, rows, timing: dict[str, float]):
    """Stage 1: ``m`` rollouts per prompt and their rewards; returns prompt ids, responses, ``(P, m)`` rewards."""
    prompt_ids = [encode_prompt(tokenizer, row.messages, args.chat_template_kwargs) for row in rows]
    torch.manual_seed(args.seed)
    clock = time.monotonic()
    responses = generate_hf(
        model,
        prompt_ids,
        n=args.m,
        eos_ids=eos_token_ids(model, tokenizer),
        pad_id=tokenizer.pad_token_id,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        batch_rows=args.batch_size,
        progress=not args.no_progress,
    )
    timing["generation_seconds"] = time.monotonic() - clock
    clock = time.monotonic()
    _, correct = score_responses(tokenizer, rows, responses)
    timing["scoring_seconds"] = time.monotonic() - clock
    # The probe regresses rewards in [0, 1]: correctness (a scorer's "acc", or a full score).
    return prompt_ids, responses, torch.tensor(correct, dtype=torch.float32)


def run(args: argparse.Namespace) -> dict:
    """Draw prompts, sample and score rollouts, then ``analyse``; returns the results dict."""
    started = time.monotonic()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    all_rows = read_prompts(args.data)
    chosen = sorted(
        random.Random(args.seed).sample(range(len(all_rows)), min(args.num_prompts, len(all_rows)))
    )
    rows = [all_rows[i] for i in chosen]
    if len(rows) < 4:
        raise DataError(f"need at least 4 prompts, the data has {len(rows)}")
    model, tokenizer, layout = load_policy(args.model, dtype=torch.float32, device=device)
    marker_ids(args, tokenizer)  # a marker the tokenizer cannot encode stops the study before sampling
    timing: dict[str, float] = {}
    prompt_ids, responses, rewards = sample(args, model, tokenizer, rows, timing)
    return analyse(args, model, tokenizer, prompt_ids, responses, rewards, layout.kind, timing, started)


def marker_ids(args: argparse.Namespace, tokenizer) -> tuple[int, ...] | None:
    """The end-of-thinking marker's token ids (``--end-of-thinking-token``), None for 'none'."""
    marker = None if str(args.end_of_thinking_token).lower() == "none" else args.end_of_thinking_token
    try:
        return end_of_thinking_ids(tokenizer, marker, where="--end-of-thinking-token") or None
    except ValueError as error:
        raise DataError(str(error)) from None


def split(count: int, seed: int, heldout_fraction: float) -> tuple[list[int], list[int]]:
    """Stage 2: training and held-out prompts (seeded; at least 2 of each)."""
    order = list(range(count))
    random.Random(seed + 7).shuffle(order)
    held = min(count - 2, max(2, round(heldout_fraction * count)))
    return sorted(order[held:]), sorted(order[:held])


def rollout_features(
    args: argparse.Namespace, model, prompt_ids, responses, layers: list[int], think_id: tuple[int, ...] | None
) -> RolloutFeatures:
    """Stage 3: the probe's features of every rollout, every swept layer in one packed forward."""
    count, m = len(prompt_ids), len(responses[0])
    flat_prompts = [prompt_ids[p] for p in range(count) for _ in range(m)]
    flat_responses = [responses[p][s].token_ids for p in range(count) for s in range(m)]
    check_packed_forward(model, flat_prompts, flat_responses)
    return extract_features(
        model,
        flat_prompts,
        flat_responses,
        layers,
        k=args.pool_tokens,
        end_of_thinking_token_id=think_id,
        temperature=args.temperature if args.temperature > 0 else 1.0,
        token_budget=args.token_budget,
        progress=not args.no_progress,
    )


def analyse(
    args: argparse.Namespace,
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    responses,
    rewards: torch.Tensor,
    model_kind: str,
    timing: dict[str, float],
    started: float,
) -> dict:
    """Stages 2-5 of the module docstring on sampled rollouts; writes the outputs and returns the results.

    Args:
        prompt_ids: ``P`` rendered prompts; responses: ``responses[p][s]`` (``generation.Response``);
        rewards: ``(P, m)`` rewards in [0, 1].
    """
    layer_count = len(decoder_layers(model))
    layers, probe_layer = choose_layers(args.layers, args.probe_layer, layer_count)
    think_id = marker_ids(args, tokenizer)
    train, heldout = split(len(prompt_ids), args.seed, args.heldout_fraction)

    clock = time.monotonic()
    features = rollout_features(args, model, prompt_ids, responses, layers, think_id)
    timing["feature_extraction_seconds"] = time.monotonic() - clock

    probe = ProbeSettings(
        args.prompt_components, args.response_components, args.ridge_alpha, args.seed, args.probe_order
    )
    fits = layer_sweep(features, layers, rewards, train, heldout, probe)
    study = Study(args, model, tokenizer, prompt_ids, rewards, train, heldout, probe_layer, fits)
    compared = compare(study)

    probe_settings = {
        "name": "ridge",
        "prompt_components": args.prompt_components,
        "response_components": args.response_components,
        "alpha": args.ridge_alpha,
        "pool_tokens": args.pool_tokens,
        "entropy_features": list(features.entropy_names),
        "end_of_thinking_token": None if think_id is None else args.end_of_thinking_token,
        "probe_layer": probe_layer,
        "decoder_layers": layer_count,
        "feature_capture": "core.capture.PackedPoolingHook on every swept layer, one packed forward",
    }
    results = {
        "settings": {
            "model": str(args.model),
            "model_kind": model_kind,
            "data": [str(p) for p in args.data],
            "num_prompts": len(prompt_ids),
            "m": study.m,
            "seed": args.seed,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "max_new_tokens": args.max_new_tokens,
            "probe": probe_settings,
            **compared["settings"],
            "device": str(next(model.parameters()).device),
            "threads": torch.get_num_threads(),
        },
        "data_summary": data_summary(study, responses, features),
        "estimators": compared["estimators"],
        "disjoint_target": compared["disjoint_target"],
        "layer_sweep": [fits[layer].entry for layer in layers],
        **compared["records"],
        "timing": {**timing, "total_seconds": time.monotonic() - started},
        "paper_anchor": PAPER_ANCHOR,
    }
    report.write(results, Path(args.output), study.pass_rates[heldout], compared["scatter"])
    return results


def data_summary(study: Study, responses, features: RolloutFeatures) -> dict:
    """What the sampled rollouts look like: pass rates, lengths, truncation, and the Pearson noise ceiling."""
    pass_rates, m = study.pass_rates, study.m
    count = len(study.prompt_ids)
    target = pass_rates[study.heldout]
    lengths = torch.tensor([len(r.token_ids) for group in responses for r in group], dtype=torch.float32)
    return {
        "train_prompts": len(study.train),
        "heldout_prompts": len(study.heldout),
        "rollouts": count * m,
        "mean_pass_rate": float(pass_rates.mean()),
        "heldout_mean_pass_rate": float(target.mean()),
        "fraction_prompts_all_wrong": float((pass_rates == 0).float().mean()),
        "fraction_prompts_all_right": float((pass_rates == 1).float().mean()),
        "mean_response_tokens": float(lengths.mean()),
        "truncated_fraction": float(sum(r.truncated for g in responses for r in g) / (count * m)),
        "empty_response_pools": features.empty_responses,
        "pearson_ceiling_heldout": pearson_ceiling(target, m),
    }


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        results = run(args)
    except (CheckpointError, DataError) as error:
        sys.exit(f"error: {error}")
    print(report.markdown(results))
    print(f"wrote {Path(args.output)}/results.md, results.json, layer_sweep.png, scatter.png")


if __name__ == "__main__":
    main()
