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
   (``core.cross_rollout.sibling_targets``), the official probe (standardise, PCA 32/64, ridge alpha 100).
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
from poise_verl.analysis.critic import predict as critic_predict
from poise_verl.analysis.critic import select_and_train_critic
from poise_verl.analysis.features import check_packed_forward, end_of_thinking_id, extract_features
from poise_verl.analysis.policy import CheckpointError, eos_token_ids, load_policy
from poise_verl.analysis.prompts import DataError, encode_prompt, read_prompts
from poise_verl.analysis.sampling import generate_hf, score_responses
from poise_verl.core.capture import decoder_layers
from poise_verl.core.cross_rollout import sibling_targets
from poise_verl.core.diagnostics import baseline_diagnostics
from poise_verl.core.probe import RANDOMIZED_PCA_ABOVE, build_probe

logger = logging.getLogger("poise_verl.analysis.value_estimator")

# POISE reads decoder layer 19 of Qwen3-4B's 36; the default probe layer keeps that relative depth.
OFFICIAL_LAYER_FRACTION = 19 / 36

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
    parser.add_argument("--pool-tokens", type=int, default=10, help="tokens pooled per part (official: 10)")
    parser.add_argument(
        "--end-of-thinking-token",
        default="</think>",
        help="splits entropy parts and ends the response pool ('none' to disable; ignored if not one token)",
    )
    parser.add_argument(
        "--prompt-components", type=int, default=32, help="probe PCA dims, prompt (official 32)"
    )
    parser.add_argument(
        "--response-components", type=int, default=64, help="probe PCA dims, response (official 64)"
    )
    parser.add_argument("--ridge-alpha", type=float, default=100.0, help="probe ridge alpha (official 100)")
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


def _layers(spec: str, count: int) -> list[int]:
    if spec.strip().lower() == "all":
        return list(range(count))
    layers = sorted({int(v) for v in spec.split(",") if v.strip()})
    bad = [layer for layer in layers if not 0 <= layer < count]
    if bad:
        raise ValueError(f"--layers {bad} outside the model's {count} decoder layers (0-based)")
    return layers


def probe_fit_flops(rows: int, widths: tuple[int, int, int], components: tuple[int, int]) -> float:
    """Approximate floating-point operations of one ``PCARidgeProbe.fit`` (order of magnitude).

    Per hidden-state block of ``F`` features keeping ``c`` components: standardising (~4NF), the PCA the
    core runs (Gram matrix 2NF^2 + symmetric eigendecomposition ~9F^3; thin SVD ~4FN^2 + 8N^3 when N < F;
    randomised subspace iteration ~2(2q+2)NF(c+10) for large blocks), projection 2NFc; then ridge on D
    inputs: 2ND^2 + D^3/3. Golub & Van Loan's operation counts.
    """
    total = 0.0
    for features, requested in zip(widths[:2], components, strict=True):
        total += 4.0 * rows * features
        count = min(requested, max(rows - 1, 0), features)
        if count == 0:
            continue
        if max(rows, features) > RANDOMIZED_PCA_ABOVE and count < 0.8 * min(rows, features):
            width = min(count + 10, min(rows, features))
            iterations = 7 if count < 0.1 * min(rows, features) else 4
            total += 2.0 * (2 * iterations + 2) * rows * features * width
        elif rows >= features:
            total += 2.0 * rows * features**2 + 9.0 * features**3
        else:
            total += 4.0 * features * rows**2 + 8.0 * rows**3
        total += 2.0 * rows * features * count
    inputs = min(components[0], widths[0], max(rows - 1, 0)) + min(components[1], widths[1], max(rows - 1, 0))
    inputs += widths[2]
    total += 4.0 * rows * widths[2] + 2.0 * rows * inputs**2 + inputs**3 / 3.0
    return total


def metrics(predicted: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """MAE, RMSE and Pearson of value estimates against pass rates (Pearson 0 for a constant side)."""
    diagnostics = baseline_diagnostics(rewards=target, baselines=predicted)
    return {key: diagnostics[key] for key in ("pearson", "mae", "rmse")}


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

    # 1. Rollouts and their rewards.
    prompt_ids = [encode_prompt(tokenizer, row.messages, args.chat_template_kwargs) for row in rows]
    torch.manual_seed(args.seed)
    timing: dict[str, float] = {}
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
    rewards = torch.tensor(correct, dtype=torch.float32)  # (P, m)
    return analyse(args, model, tokenizer, prompt_ids, responses, rewards, layout.kind, timing, started)


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
    """Steps 2-5 of the module docstring on sampled rollouts; writes the outputs and returns the results.

    Args:
        prompt_ids: ``P`` rendered prompts; responses: ``responses[p][s]`` (``sampling.Response``);
        rewards: ``(P, m)`` rewards in [0, 1].
    """
    device = next(model.parameters()).device
    count, m = rewards.shape
    pass_rates = rewards.mean(1)  # V(x) estimate over m rollouts, (P,)
    layer_count = len(decoder_layers(model))
    layers = _layers(args.layers, layer_count)
    probe_layer = (
        args.probe_layer if args.probe_layer is not None else round(OFFICIAL_LAYER_FRACTION * layer_count)
    )
    probe_layer = min(max(probe_layer, 0), layer_count - 1)
    if probe_layer not in layers:
        layers = sorted({*layers, probe_layer})
    think_token = None if str(args.end_of_thinking_token).lower() == "none" else args.end_of_thinking_token
    think_id = end_of_thinking_id(tokenizer, think_token)

    # 2. Split prompts.
    order = list(range(count))
    random.Random(args.seed + 7).shuffle(order)
    held = min(count - 2, max(2, round(args.heldout_fraction * count)))
    heldout, train = sorted(order[:held]), sorted(order[held:])

    # 3. Features of every rollout, every sweep layer in one packed forward.
    flat_prompts = [prompt_ids[p] for p in range(count) for _ in range(m)]
    flat_responses = [responses[p][s].token_ids for p in range(count) for s in range(m)]
    check_packed_forward(model, flat_prompts, flat_responses)
    clock = time.monotonic()
    features = extract_features(
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
    timing["feature_extraction_seconds"] = time.monotonic() - clock

    def rows_of(prompts: list[int]) -> torch.Tensor:
        return torch.tensor([p * m + s for p in prompts for s in range(m)])

    train_rows, heldout_rows = rows_of(train), rows_of(heldout)
    # Pairs (n = 2): rollouts 2j and 2j + 1 of a prompt are siblings; target_j = the sibling's reward.
    pair_ids = torch.tensor([p * (m // 2) + s // 2 for p in train for s in range(m)])
    targets = sibling_targets(rewards[train].reshape(-1), pair_ids)
    target_heldout = pass_rates[heldout]
    # Disjoint target: pass rate over rollouts 2..m-1, which the 2-rollout estimators never read.
    target_disjoint = rewards[heldout, 2:].mean(1)

    def new_probe():
        return build_probe(
            "ridge",
            prompt_components=args.prompt_components,
            response_components=args.response_components,
            alpha=args.ridge_alpha,
            seed=args.seed,
        )

    # One untimed fit first: the first LAPACK call of a process pays a one-off set-up that is not the probe's.
    new_probe().fit(
        features.prompt[layers[0]][train_rows],
        features.response[layers[0]][train_rows],
        features.scalars[train_rows],
        targets,
    )
    sweep, probe_values = [], {}
    for layer in layers:
        probe = new_probe()
        x_prompt, x_response = features.prompt[layer], features.response[layer]
        clock = time.perf_counter()
        fit = probe.fit(x_prompt[train_rows], x_response[train_rows], features.scalars[train_rows], targets)
        fit_seconds = time.perf_counter() - clock
        clock = time.perf_counter()
        predicted = probe.predict(
            x_prompt[heldout_rows], x_response[heldout_rows], features.scalars[heldout_rows]
        ).reshape(len(heldout), m)
        predict_seconds = time.perf_counter() - clock
        value_m, value_2 = predicted.mean(1), predicted[:, :2].mean(1)
        widths = (x_prompt.shape[1], x_response.shape[1], features.scalars.shape[1])
        entry = {
            "layer": layer,
            **metrics(value_m, target_heldout),
            "pearson_2_rollouts": metrics(value_2, target_heldout)["pearson"],
            "mae_2_rollouts": metrics(value_2, target_heldout)["mae"],
            "fit_seconds": fit_seconds,
            "predict_seconds": predict_seconds,
            "fit_flops": probe_fit_flops(
                len(train_rows), widths, (args.prompt_components, args.response_components)
            ),
            "train_mae_in_sample": fit["train_mae"],
            "constant_fallback": fit["constant_fallback"],
        }
        sweep.append(entry)
        probe_values[layer] = (value_m, value_2)
    main_probe = next(e for e in sweep if e["layer"] == probe_layer)
    value_m, value_2 = probe_values[probe_layer]

    # 4. Critic of the policy's size: prompt-only V(x), trained on the training prompts' rewards.
    train_prompts = [prompt_ids[p] for p in train]
    run_critic, selection = select_and_train_critic(
        model,
        train_prompts,
        pass_rates[train].tolist(),
        tokenizer.pad_token_id,
        args.critic_epochs,
        args.critic_lr,
        args.critic_batch_size,
        args.seed,
        args.critic_validation_fraction,
        device,
    )
    clock = time.perf_counter()
    critic_values = critic_predict(
        run_critic.critic, [prompt_ids[p] for p in heldout], tokenizer.pad_token_id
    )
    critic_predict_seconds = time.perf_counter() - clock
    del run_critic.critic

    # 5. Baselines.
    train_mean = float(pass_rates[train].mean())
    constant = torch.full((len(heldout),), train_mean)
    group_mean_2 = rewards[heldout, :2].mean(1)

    estimators = {
        "probe_m_rollouts": {
            "label": f"POISE probe, layer {probe_layer}, mean over the m={m} rollouts",
            **metrics(value_m, target_heldout),
            "train_seconds": main_probe["fit_seconds"],
            "train_flops": main_probe["fit_flops"],
            "predict_seconds": main_probe["predict_seconds"],
        },
        "probe_2_rollouts": {
            "label": f"POISE probe, layer {probe_layer}, mean over 2 rollouts (n=2, as in training)",
            **metrics(value_2, target_heldout),
            "train_seconds": main_probe["fit_seconds"],
            "train_flops": main_probe["fit_flops"],
            "predict_seconds": main_probe["predict_seconds"],
        },
        "critic": {
            "label": f"critic ({run_critic.parameters:,} parameters, prompt-only V(x))",
            **metrics(critic_values, target_heldout),
            "train_seconds": run_critic.seconds,
            "train_flops": run_critic.flops,
            "selection_seconds": selection["seconds"],
            "selection_flops": selection["flops"],
            "predict_seconds": critic_predict_seconds,
        },
        "train_mean": {
            "label": "training-set mean pass rate (constant)",
            **metrics(constant, target_heldout),
            "train_seconds": 0.0,
            "train_flops": float(len(train) * m),
            "predict_seconds": 0.0,
        },
        "group_mean_2": {
            "label": "the prompt's own mean reward over 2 rollouts",
            **metrics(group_mean_2, target_heldout),
            "train_seconds": 0.0,
            "train_flops": 0.0,
            "predict_seconds": 0.0,
        },
    }
    disjoint = {
        "probe_2_rollouts": metrics(value_2, target_disjoint),
        "critic": metrics(critic_values, target_disjoint),
        "train_mean": metrics(constant, target_disjoint),
        "group_mean_2": metrics(group_mean_2, target_disjoint),
    }
    response_lengths = torch.tensor(
        [len(r.token_ids) for group in responses for r in group], dtype=torch.float32
    )
    results = {
        "settings": {
            "model": str(args.model),
            "model_kind": model_kind,
            "data": [str(p) for p in args.data],
            "num_prompts": count,
            "m": m,
            "seed": args.seed,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "max_new_tokens": args.max_new_tokens,
            "probe": {
                "name": "ridge",
                "prompt_components": args.prompt_components,
                "response_components": args.response_components,
                "alpha": args.ridge_alpha,
                "pool_tokens": args.pool_tokens,
                "entropy_features": list(features.entropy_names),
                "end_of_thinking_token": think_token if think_id is not None else None,
                "probe_layer": probe_layer,
                "decoder_layers": layer_count,
                "feature_capture": "core.capture.PackedPoolingHook on every swept layer, one packed forward",
            },
            "critic": {
                "parameters": run_critic.parameters,
                "lr": run_critic.lr,
                "epochs": run_critic.epochs,
                "batch_size": args.critic_batch_size,
                "lr_grid": args.critic_lr,
                "max_epochs": args.critic_epochs,
                "validation_prompts": selection.get("validation_prompts", 0),
                "tokens": run_critic.tokens,
            },
            "device": str(device),
            "threads": torch.get_num_threads(),
        },
        "data_summary": {
            "train_prompts": len(train),
            "heldout_prompts": len(heldout),
            "rollouts": count * m,
            "mean_pass_rate": float(pass_rates.mean()),
            "heldout_mean_pass_rate": float(target_heldout.mean()),
            "fraction_prompts_all_wrong": float((pass_rates == 0).float().mean()),
            "fraction_prompts_all_right": float((pass_rates == 1).float().mean()),
            "mean_response_tokens": float(response_lengths.mean()),
            "truncated_fraction": float(sum(r.truncated for g in responses for r in g) / (count * m)),
            "empty_response_pools": features.empty_responses,
            "pearson_ceiling_heldout": pearson_ceiling(target_heldout, m),
        },
        "estimators": estimators,
        "disjoint_target": disjoint,
        "layer_sweep": sweep,
        "critic_selection": selection["grid"],
        "timing": {**timing, "total_seconds": time.monotonic() - started},
        "paper_anchor": PAPER_ANCHOR,
    }
    report.check_finite(results)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (output / "results.md").write_text(report.markdown(results))
    report.plot_layer_sweep(sweep, probe_layer, output / "layer_sweep.png")
    report.plot_scatter(
        target_heldout, {"probe": value_m, "critic": critic_values}, output / "scatter.png", m
    )
    return results


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
