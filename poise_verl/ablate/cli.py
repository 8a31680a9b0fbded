"""The command line: ``python -m poise_verl.ablate`` (the package docstring describes it)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from poise_verl.ablate.algorithms import ALGORITHMS, DEFAULT_ALGOS, REFERENCE_ALGO
from poise_verl.ablate.launch import log, run_all
from poise_verl.ablate.metrics import collect
from poise_verl.ablate.plan import Run, check_extra_overrides, check_folder, plan_runs, read_algo_config
from poise_verl.ablate.report import fmt, fmt_seconds, mean_sd_text, write_report

DEFAULT_SEEDS = (0, 1, 2)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" in argv:
        split = argv.index("--")
        argv, extra = argv[:split], argv[split + 1 :]
    else:
        extra = []
    parser = argparse.ArgumentParser(
        prog="python -m poise_verl.ablate",
        description=(
            "POISE (with and without prompt selection) vs DAPO vs GRPO at one rollout budget over several "
            "seeds; Hydra overrides after `--`."
        ),
    )
    parser.add_argument(
        "--algos", default=",".join(DEFAULT_ALGOS), help="algorithms to run (poise_verl/ablate/algorithms.py)"
    )
    parser.add_argument(
        "--seeds", default=",".join(map(str, DEFAULT_SEEDS)), help="seeds; each sets SEED_KEYS"
    )
    parser.add_argument("--output", default=None, help="ablation folder (default: ablations/<timestamp>)")
    parser.add_argument(
        "--target-accuracy",
        type=float,
        default=None,
        help=f"accuracy to time (default: {REFERENCE_ALGO}'s mean final validation accuracy)",
    )
    parser.add_argument(
        "--metric",
        default=None,
        help="validation metric column to use (default: mean of val-core/<source>/acc/mean@<n>)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the runs and their commands, launch nothing"
    )
    parser.add_argument(
        "--report-only", action="store_true", help="write the report from the runs already there"
    )
    parser.add_argument(
        "--no-ray-temp-dir",
        action="store_true",
        help="do not give each run a short Ray temp dir under /tmp (e.g. when joining a cluster)",
    )
    args = parser.parse_args(argv)
    return args, extra


def _algo_list(text: str) -> list[str]:
    algos = [a.strip() for a in text.split(",") if a.strip()]
    known = sorted(ALGORITHMS)
    unknown = [a for a in algos if a not in known]
    if unknown or not algos:
        raise SystemExit(f"ablate: unknown algorithm(s) {unknown}: choose from {known}")
    if len(set(algos)) != len(algos):
        raise SystemExit(f"ablate: --algos lists an algorithm twice: {algos}")
    return algos


def _seed_list(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"ablate: --seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"ablate: --seeds must list distinct integers, got {text!r}")
    return seeds


def plan_from_args(args: argparse.Namespace, extra: list[str]) -> tuple[list[str], list[Run], Path]:
    """The algorithms, the runs (folders checked) and the ablation folder the command line asks for."""
    algos, seeds = _algo_list(args.algos), _seed_list(args.seeds)
    check_extra_overrides(extra, algos)
    output = Path(args.output or Path("ablations") / time.strftime("%Y%m%d-%H%M%S")).resolve()
    configs = {algo: read_algo_config(algo, extra) for algo in algos}
    if any(c.test_freq <= 0 for c in configs.values()):
        raise SystemExit(
            "ablate: trainer.test_freq <= 0 validates never: set trainer.test_freq to a positive step count"
        )
    budgets = {c.rollouts_per_step for c in configs.values()}
    if len(budgets) != 1:
        raise SystemExit(
            f"ablate: the algorithms would run at different budgets {budgets}: set budget.rollouts_per_step"
        )
    runs = plan_runs(algos, seeds, output, extra, configs)
    for run in runs:
        check_folder(run)
    log(f"{len(runs)} runs ({', '.join(algos)} x seeds {seeds}) at {budgets.pop()} rollouts/step in {output}")
    return algos, runs, output


def log_summary(summary: dict, report: Path) -> None:
    """The report's headline numbers on the console."""
    for algo, s in summary["algorithms"].items():
        hit = s["to_target"]
        log(
            f"{algo}: final accuracy {mean_sd_text(s['final_accuracy'])}, to target "
            f"{fmt_seconds(hit['wall_clock_s']) if hit else 'not reached'}"
        )
    for name, ratio in summary["ratios"].items():
        log(
            f"{name} wall-clock to target: {fmt(ratio['wall_clock_s'], 2)} "
            f"({fmt(ratio['steps_wall_clock_s'], 2)} without validations)"
        )
    log(f"report: {report}")


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    algos, runs, output = plan_from_args(args, extra)
    if args.dry_run:
        ray_dir = None if args.no_ray_temp_dir else "<ray temp dir>"
        for run in runs:
            print(f"[{run.status()}] {run.name}: {' '.join(run.command(ray_dir))}")
        return 0
    # A Ray temp dir of the user's own wins (Hydra refuses to append a key twice).
    use_ray_temp_dir = not args.no_ray_temp_dir and not any("ray_init._temp_dir" in o for o in extra)
    from poise_verl.verl_ext.stopping import Terminated, catch_stop_signals

    catch_stop_signals()  # a cluster's SIGTERM, like Ctrl-C, stops the run in progress and removes its temp folder
    try:
        failed = [] if args.report_only else run_all(runs, use_ray_temp_dir=use_ray_temp_dir)
    except KeyboardInterrupt as stop:
        how = "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted (Ctrl-C)"
        log(f"{how}: the run in progress was stopped; rerun the same command to resume it")
        return 143 if isinstance(stop, Terminated) else 130
    results = collect(runs, args.metric)
    if not results:
        log("no run has logged metrics yet: no report")
        return 1
    summary = write_report(results, algos, output / "report", args.target_accuracy)
    log_summary(summary, output / "report" / "summary.md")
    if failed:
        log("failed: " + ", ".join(run.name for run in failed) + " (rerun the same command to resume them)")
        return 1
    return 0
