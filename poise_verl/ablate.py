"""POISE vs DAPO vs GRPO at one generation budget, over several seeds, with a report.

    python -m poise_verl.ablate [--algos poise,dapo,grpo] [--seeds 0,1,2] [--output DIR]
                                [--target-accuracy A] [--dry-run] [--report-only] [-- HYDRA OVERRIDES ...]

Every run is an ordinary ``python -m poise_verl.main algo=X ...`` subprocess, one after another (seed-major:
seed 0 of every algorithm first, so an interrupted ablation still compares like with like). The overrides
after ``--`` reach every run unchanged, so the ablation runs on any recipe (``-- +recipe=qwen3_4b``). The
budget ``budget.rollouts_per_step`` is the same for all three; each algorithm divides it by its own ``n``
(POISE 2, DAPO and GRPO 16) into prompts per step.

Layout of DIR (default ``ablations/<timestamp>``)::

    runs/<algo>/seed_<S>/        trainer.default_local_dir of the run: verl checkpoints, metrics/*.jsonl,
        log.txt                  the run's output, appended across launches
        ablate_run.json          what the run is (command, budget, n), written before the first launch
        attempts.jsonl           one row per launch: wall-clock seconds and exit code
        ABLATE_DONE.json         marker written after exit code 0: command, wall-clock over all launches
    report/summary.md, summary.json, *.png

Resuming: rerun the same command. A run with ``ABLATE_DONE.json`` is skipped; any other run is launched again in
its folder, where verl (``trainer.resume_mode=auto``) and POISE resume from its last checkpoint. A folder
made with different overrides is refused rather than silently mixed.

Seeds: seed S sets every key of :data:`SEED_KEYS` that the composed config has to S (replacing a recipe's own,
e.g. qwen3_4b's ``data.seed=42``). The actor starts from the same pretrained weights in every run: nothing
random to seed there.

Wall-clock: measured around each subprocess (``process_wall_clock_s``, start-up included, summed over
launches) and reconstructed from the metrics as the cumulative ``timing_s/step + timing_s/testing`` along
the run's final trajectory (``train_wall_clock_s``: no start-up, no initial validation, no work lost to an
interruption). The plots and the time-to-target use the reconstructed one: it is comparable across
algorithms and across interrupted and uninterrupted runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

# poise_verl/hydra_configs links to the top-level hydra_configs/ in a checkout; a wheel carries the files.
CONFIG_DIR = Path(__file__).resolve().parent / "hydra_configs"
DEFAULT_ALGOS = ("poise", "dapo", "grpo")
DEFAULT_SEEDS = (0, 1, 2)
# The algorithm whose mean final accuracy is the default target, and the denominator of the ratios.
REFERENCE_ALGO = "dapo"

# What seed S sets (each key only where the composed config has it). In verl 0.9.1:
SEED_KEYS = (
    # The training prompts' shuffle (torchdata RandomSampler generator) and the random subsets drawn for
    # data.train_max_samples / data.val_max_samples (numpy default_rng(seed)).
    "data.seed",
    # The rollout server's sampling seed (vLLM: rollout.seed + replica rank; the CPU `hf` server ignores it).
    "actor_rollout_ref.rollout.seed",
    # The order of mini-batches in the PPO update (used when actor.shuffle=true).
    "actor_rollout_ref.actor.data_loader_seed",
    # random/numpy/torch seeds set by the FSDP engine under full_determinism.
    "actor_rollout_ref.actor.fsdp_config.seed",
    # POISE's probe: randomized PCA and the logistic/MLP initialisation.
    "poise.probe.seed",
)

DONE_MARKER = "ABLATE_DONE.json"
RUN_INFO = "ablate_run.json"
ATTEMPTS = "attempts.jsonl"
LOG = "log.txt"

# verl's validation metrics: val-core/<data_source>/<acc or reward>/mean@<n>.
VAL_CORE = re.compile(r"^val-core/(?P<source>.+)/(?P<var>acc|reward)/mean@(?P<n>\d+)$")
# Std over the batch of the per-rollout advantage A_i, first found per algorithm: POISE logs poise/adv_std;
# training/adv_std is where the trainer would log it for every algorithm (not logged yet for DAPO/GRPO).
ADVANTAGE_STD_KEYS = ["training/adv_std", "poise/adv_std"]
# verl counts DAPO's dropped groups (prompts) per step under these keys, only when there were some.
DROPPED_GROUP_KEYS = (
    "training/filter_groups/evicted_samples",
    "training/filter_groups/discarded_surplus_samples",
)


def _log(message: str) -> None:
    print(f"ablate: {message}", flush=True)


# ------------------------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class AlgoConfig:
    """What the composed config of one algorithm says about the quantities the report needs."""

    rollouts_per_step: int
    n: int
    seed_keys: tuple[str, ...]
    experiment_name: str
    logger: tuple[str, ...]
    val_files: tuple[str, ...]
    val_max_samples: int
    val_samples_per_prompt: int
    shuffle: bool
    test_freq: int
    total_training_steps: int | None


@dataclass(frozen=True)
class Run:
    algo: str
    seed: int
    folder: Path
    overrides: tuple[str, ...]  # everything after `python -m poise_verl.main`, except the Ray temp dir
    config: AlgoConfig
    # What runs after the Python interpreter (tests substitute a stand-in script).
    program: tuple[str, ...] = ("-m", "poise_verl.main")

    @property
    def name(self) -> str:
        return f"{self.algo} seed {self.seed}"

    def command(self, ray_temp_dir: str | None) -> list[str]:
        extra = [f"+ray_kwargs.ray_init._temp_dir={ray_temp_dir}"] if ray_temp_dir else []
        return [sys.executable, *self.program, *self.overrides, *extra]

    def status(self) -> str:
        if (self.folder / DONE_MARKER).exists():
            return "done"
        return "partial" if (self.folder / RUN_INFO).exists() else "pending"


def compose(algo: str, extra_overrides: list[str]):
    """The composed (unresolved) config of ``algo=ALGO`` plus the user's overrides, as the main job sees it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from poise_verl.config import register_resolvers

    register_resolvers()
    overrides = [f"algo={algo}"] + [o for o in extra_overrides if not o.lstrip("+~").startswith("hydra.")]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return hydra_compose(config_name="poise_trainer", overrides=overrides)


def read_algo_config(algo: str, extra_overrides: list[str]) -> AlgoConfig:
    from omegaconf import OmegaConf

    config = compose(algo, extra_overrides)
    missing = object()
    seed_keys = tuple(k for k in SEED_KEYS if OmegaConf.select(config, k, default=missing) is not missing)
    int(config.data.train_batch_size)  # resolves ${poise_div:...}: a budget n does not divide fails here
    val_files = config.data.val_files
    val_files = list(val_files) if OmegaConf.is_list(val_files) else [val_files]
    total_steps = config.trainer.get("total_training_steps")
    return AlgoConfig(
        rollouts_per_step=int(config.budget.rollouts_per_step),
        n=int(config.actor_rollout_ref.rollout.n),
        seed_keys=seed_keys,
        experiment_name=str(config.trainer.experiment_name),
        logger=tuple(config.trainer.logger)
        if OmegaConf.is_list(config.trainer.logger)
        else (str(config.trainer.logger),),
        val_files=tuple(str(f) for f in val_files),
        val_max_samples=int(config.data.get("val_max_samples", -1) or -1),
        val_samples_per_prompt=int(config.actor_rollout_ref.rollout.val_kwargs.n),
        shuffle=bool(config.data.get("shuffle", False)),
        test_freq=int(config.trainer.test_freq),
        total_training_steps=None if total_steps is None else int(total_steps),
    )


def plan(
    algos: list[str], seeds: list[int], output: Path, extra: list[str], configs: dict[str, AlgoConfig]
) -> list[Run]:
    """The runs in launch order (seed-major), each with its full list of overrides."""
    runs = []
    for seed in seeds:
        for algo in algos:
            config = configs[algo]
            folder = output / "runs" / algo / f"seed_{seed}"
            overrides = [f"algo={algo}", *extra]
            overrides += [f"{key}={seed}" for key in config.seed_keys]
            overrides += [
                f"trainer.default_local_dir={folder}",
                f"trainer.experiment_name={config.experiment_name}_seed{seed}",
                f"hydra.run.dir={folder / 'hydra'}",
            ]
            if "file" not in config.logger:  # the report reads verl's `file` logger
                overrides.append(f"trainer.logger=[{','.join([*config.logger, 'file'])}]")
            runs.append(Run(algo, seed, folder, tuple(overrides), config))
    return runs


def check_extra_overrides(extra: list[str]) -> None:
    """Refuse overrides the ablation owns, saying what to do instead."""
    owned = {key: "--seeds" for key in SEED_KEYS}
    owned.update({"trainer.default_local_dir": "--output", "algo": "--algos", "hydra.run.dir": "--output"})
    for override in extra:
        key = override.lstrip("+~").split("=", 1)[0]
        if key in owned:
            raise SystemExit(
                f"ablate: the override {override!r} is set per run by the ablation: drop it (use {owned[key]})"
            )


def check_folder(run: Run) -> None:
    """A folder made by an earlier invocation must have been made with the same overrides."""
    info_path = run.folder / RUN_INFO
    if not info_path.exists():
        return
    earlier = json.loads(info_path.read_text()).get("overrides")
    if earlier != list(run.overrides):
        raise SystemExit(
            f"ablate: {run.folder} holds a run made with other overrides:\n  earlier: {earlier}\n  now:     "
            f"{list(run.overrides)}\nUse another --output, or delete that folder to rerun it."
        )


# ------------------------------------------------------------------------------------------- running
@dataclass
class Attempt:
    started_at: str
    wall_clock_s: float
    returncode: int | None
    command: list[str]


def attempts(folder: Path) -> list[dict]:
    path = folder / ATTEMPTS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def launch(run: Run, use_ray_temp_dir: bool = True) -> Attempt:
    """One launch of the main job for ``run``, output appended to its log. Ctrl-C stops it and is re-raised."""
    run.folder.mkdir(parents=True, exist_ok=True)
    info = {"algo": run.algo, "seed": run.seed, "overrides": list(run.overrides), **run.config.__dict__}
    (run.folder / RUN_INFO).write_text(json.dumps(info, indent=2, default=list) + "\n")
    # Ray's socket paths must stay short: a fresh temp dir under /tmp per launch.
    ray_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp") if use_ray_temp_dir else None
    command = run.command(ray_dir)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("VERL_FILE_LOGGER_PATH", None)  # else every run would write the same metrics file
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    start = time.monotonic()
    returncode: int | None = None
    try:
        with open(run.folder / LOG, "a") as log:
            log.write(f"\n===== ablate launch at {started}: {' '.join(command)}\n")
            log.flush()
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            try:
                returncode = process.wait()
            except BaseException:
                _stop(process)
                raise
    finally:
        attempt = Attempt(started, round(time.monotonic() - start, 3), returncode, command)
        with open(run.folder / ATTEMPTS, "a") as out:
            out.write(json.dumps(attempt.__dict__) + "\n")
        if ray_dir:
            shutil.rmtree(ray_dir, ignore_errors=True)
    if returncode == 0:
        history = attempts(run.folder)
        marker = {
            "command": command,
            "overrides": list(run.overrides),
            "wall_clock_s": round(sum(a["wall_clock_s"] for a in history), 3),
            "launches": len(history),
            "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        (run.folder / DONE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return attempt


def _stop(process: subprocess.Popen) -> None:
    """Stop the main job we started (its whole session: the Ray driver and the local Ray processes)."""
    for sig, wait_s in ((signal.SIGINT, 30), (signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_all(runs: list[Run], use_ray_temp_dir: bool = True) -> list[Run]:
    """Launch every unfinished run, sequentially; returns the runs that failed."""
    failed = []
    for index, run in enumerate(runs, start=1):
        prefix = f"[{index}/{len(runs)}] {run.name}"
        if run.status() == "done":
            _log(f"{prefix}: finished earlier, skipped ({run.folder / DONE_MARKER})")
            continue
        resumed = " (resuming)" if run.status() == "partial" else ""
        _log(f"{prefix}: launching{resumed}; log: {run.folder / LOG}")
        attempt = launch(run, use_ray_temp_dir)
        metrics = load_metrics(run.folder)
        progress = describe_progress(metrics, run.config)
        if attempt.returncode == 0:
            _log(f"{prefix}: done in {attempt.wall_clock_s:.0f} s (process); {progress}")
        else:
            failed.append(run)
            _log(
                f"{prefix}: FAILED with exit code {attempt.returncode} after {attempt.wall_clock_s:.0f} s; "
                f"{progress}; see {run.folder / LOG}"
            )
    return failed


# ------------------------------------------------------------------------------------------- metrics
def load_metrics(folder: Path) -> pd.DataFrame:
    """{step: metrics} of a run as a DataFrame indexed by step, over every launch's metrics JSONL.

    Files are read in launch order (their names start with the launch time). A resumed launch restarts at
    its checkpoint step r: its rows replace the earlier launches' rows after r (work redone after an
    interruption), and its row at r (the validation verl repeats on resume) is merged into the earlier one.
    """
    steps: dict[int, dict[str, float]] = {}
    for path in sorted((folder / "metrics").glob("*.jsonl")):
        rows = []
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a launch killed mid-write leaves a torn last line
                    continue
        if not rows:
            continue
        first = min(int(row["step"]) for row in rows)
        steps = {step: values for step, values in steps.items() if step <= first}
        for row in rows:
            steps.setdefault(int(row["step"]), {}).update(row["data"])
    frame = pd.DataFrame.from_dict(steps, orient="index").sort_index()
    frame.index.name = "step"
    return frame.apply(pd.to_numeric, errors="coerce")


def validation_accuracy(frame: pd.DataFrame, metric: str | None = None) -> pd.Series:
    """Validation accuracy per step (NaN where there was no validation).

    ``metric`` names one column; by default the unweighted mean over data sources of verl's
    ``val-core/<source>/acc/mean@<n>`` (``reward`` where a source has no ``acc``), as the paper averages
    benchmarks.
    """
    if metric is not None:
        return frame[metric] if metric in frame else pd.Series(float("nan"), index=frame.index)
    by_source: dict[str, str] = {}
    for column in frame.columns:
        match = VAL_CORE.match(str(column))
        if match and (match["var"] == "acc" or match["source"] not in by_source):
            by_source[match["source"]] = column
    if not by_source:
        return pd.Series(float("nan"), index=frame.index)
    return frame[sorted(by_source.values())].mean(axis=1, skipna=False)


def add_derived_columns(frame: pd.DataFrame, config: AlgoConfig, metric: str | None = None) -> pd.DataFrame:
    """``val_accuracy``, ``train_wall_clock_s`` and ``generated_tokens`` (both cumulative, 0 at step 0).

    Generated rollouts per step: the budget, plus n for each group DAPO's dynamic sampling dropped (verl
    logs their count); their lengths are not logged, so tokens use the kept rollouts' mean length for them.
    """
    frame = frame.copy()
    frame["val_accuracy"] = validation_accuracy(frame, metric)
    training = frame.index > 0

    def column(name: str) -> pd.Series:
        return frame[name].fillna(0.0) if name in frame else pd.Series(0.0, index=frame.index)

    step_seconds = (column("timing_s/step") + column("timing_s/testing")).where(training, 0.0)
    frame["train_wall_clock_s"] = step_seconds.cumsum()
    dropped_groups = sum((column(key) for key in DROPPED_GROUP_KEYS), pd.Series(0.0, index=frame.index))
    frame["generated_rollouts"] = (config.rollouts_per_step + config.n * dropped_groups).where(training, 0.0)
    tokens = (column("response_length/mean") * frame["generated_rollouts"]).where(training, 0.0)
    frame["generated_tokens"] = tokens.cumsum()
    return frame


def describe_progress(frame: pd.DataFrame, config: AlgoConfig) -> str:
    if frame.empty:
        return "no metrics logged"
    frame = add_derived_columns(frame, config)
    accuracy = frame["val_accuracy"].dropna()
    last_step = int(frame.index.max())
    text = (
        f"{last_step} steps, training wall-clock {frame['train_wall_clock_s'].iloc[-1]:.0f} s (from metrics)"
    )
    if not accuracy.empty:
        text += f", validation accuracy {accuracy.iloc[0]:.3f} -> {accuracy.iloc[-1]:.3f} (step {int(accuracy.index[-1])})"
    return text


# ------------------------------------------------------------------------------------------- report
@dataclass
class RunResult:
    algo: str
    seed: int
    finished: bool
    frame: pd.DataFrame
    config: AlgoConfig
    process_wall_clock_s: float | None
    launches: int
    last_step: int = field(init=False)

    def __post_init__(self):
        self.last_step = int(self.frame.index.max()) if not self.frame.empty else 0

    @property
    def accuracy(self) -> pd.Series:
        return self.frame["val_accuracy"].dropna() if "val_accuracy" in self.frame else pd.Series(dtype=float)

    def start_accuracy(self) -> float | None:
        accuracy = self.accuracy
        return float(accuracy.loc[0]) if 0 in accuracy.index else None

    def final_accuracy(self) -> tuple[float | None, int | None]:
        accuracy = self.accuracy[self.accuracy.index > 0]
        if accuracy.empty:
            return None, None
        return float(accuracy.iloc[-1]), int(accuracy.index[-1])

    def first_reaching(self, target: float) -> dict | None:
        """Step, training wall-clock and tokens at the first validation at or above ``target``."""
        reached = self.accuracy[self.accuracy >= target - 1e-12]
        if reached.empty:
            return None
        step = int(reached.index[0])
        return {
            "step": step,
            "wall_clock_s": float(self.frame.loc[step, "train_wall_clock_s"]),
            "tokens": float(self.frame.loc[step, "generated_tokens"]),
        }


def collect(runs: list[Run], metric: str | None = None) -> list[RunResult]:
    results = []
    for run in runs:
        frame = load_metrics(run.folder) if (run.folder / "metrics").exists() else pd.DataFrame()
        if frame.empty:
            continue
        frame = add_derived_columns(frame, run.config, metric)
        history = attempts(run.folder)
        process = round(sum(a["wall_clock_s"] for a in history), 3) if history else None
        results.append(
            RunResult(run.algo, run.seed, run.status() == "done", frame, run.config, process, len(history))
        )
    return results


def _mean_sd(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "sd": None, "n": 0}
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return {"mean": mean, "sd": sd, "n": len(values)}


def _mean_curve_reaching(results: list[RunResult], target: float) -> dict | None:
    """First step where the seeds' mean validation accuracy reaches ``target`` (steps every seed validated)."""
    from poise_verl.plotting import seed_band

    frames = [r.frame for r in results]
    accuracy = seed_band(frames, "val_accuracy", "train_wall_clock_s")
    tokens = seed_band(frames, "val_accuracy", "generated_tokens")
    hits = accuracy.index[accuracy["y_mean"] >= target - 1e-12]
    if len(hits) == 0:
        return None
    row = hits[0]
    return {
        "step": int(accuracy.loc[row, "step"]),
        "wall_clock_s": float(accuracy.loc[row, "x_mean"]),
        "tokens": float(tokens.loc[row, "x_mean"]),
        "mean_accuracy": float(accuracy.loc[row, "y_mean"]),
    }


def _validation_size(config: AlgoConfig) -> int | None:
    """Validation prompts per evaluation: val_max_samples, else the rows of the validation files."""
    total = _parquet_rows(config.val_files)
    if config.val_max_samples > 0:
        return config.val_max_samples if total is None else min(config.val_max_samples, total)
    return total


def _parquet_rows(paths) -> int | None:
    try:
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(path).metadata.num_rows for path in paths)
    except (OSError, ValueError):  # not readable here (remote, not built yet, not parquet): size unknown
        return None


# verl's per-phase timings worth comparing across algorithms (median over the run's steps, seconds).
PHASES = ("step", "gen", "old_log_prob", "update_actor", "testing")


PROBE_WINDOW = 10  # training steps at the end of a run over which the probe's Pearson is averaged


def late_probe_pearson(frame: pd.DataFrame, window: int = PROBE_WINDOW) -> float | None:
    """Mean ``poise/probe_pearson`` (probe baseline vs realised reward) over the run's last ``window`` steps."""
    column = "poise/probe_pearson"
    if column not in frame:
        return None
    values = frame[column].dropna()
    values = values[values.index > frame.index.max() - window]
    return float(values.mean()) if not values.empty else None


def phase_medians(frame: pd.DataFrame) -> dict[str, float | None]:
    """Median of each ``timing_s/<phase>`` over the training steps (validations for ``testing``).

    The median of ``testing`` also gauges how busy the machine was: every algorithm validates the same prompts.
    """
    medians = {}
    for phase in PHASES:
        column = f"timing_s/{phase}"
        values = frame[column].dropna() if column in frame else pd.Series(dtype=float)
        values = values[values.index > 0]
        medians[phase] = float(values.median()) if not values.empty else None
    return medians


def summarise(results: list[RunResult], algos: list[str], target_accuracy: float | None) -> dict:
    """Everything summary.md and summary.json say, as one JSON-able dict (None where not available)."""
    by_algo = {algo: [r for r in results if r.algo == algo] for algo in algos}
    finals = {a: _mean_sd([r.final_accuracy()[0] for r in rs]) for a, rs in by_algo.items()}
    if target_accuracy is not None:
        target = {"value": target_accuracy, "source": "--target-accuracy"}
    elif finals.get(REFERENCE_ALGO, {}).get("mean") is not None:
        target = {
            "value": finals[REFERENCE_ALGO]["mean"],
            "source": f"mean final accuracy of {REFERENCE_ALGO}",
        }
    else:
        candidates = {a: f["mean"] for a, f in finals.items() if f["mean"] is not None}
        lowest = min(candidates, key=candidates.get) if candidates else None
        target = {
            "value": candidates[lowest] if lowest else None,
            "source": f"lowest mean final accuracy ({lowest}; no {REFERENCE_ALGO} runs)"
            if lowest
            else "none",
        }
    value = target["value"]

    algorithms = {}
    for algo, rs in by_algo.items():
        per_run = []
        for r in sorted(rs, key=lambda r: r.seed):
            final, final_step = r.final_accuracy()
            hit = r.first_reaching(value) if value is not None else None
            per_run.append(
                {
                    "seed": r.seed,
                    "finished": r.finished,
                    "last_step": r.last_step,
                    "launches": r.launches,
                    "start_accuracy": r.start_accuracy(),
                    "final_accuracy": final,
                    "final_step": final_step,
                    "train_wall_clock_s": float(r.frame["train_wall_clock_s"].iloc[-1]),
                    "process_wall_clock_s": r.process_wall_clock_s,
                    "generated_tokens": float(r.frame["generated_tokens"].iloc[-1]),
                    "to_target": hit,
                    "phase_median_s": phase_medians(r.frame),
                    "probe_pearson_last_steps": late_probe_pearson(r.frame),
                }
            )
        mean_hit = _mean_curve_reaching(rs, value) if rs and value is not None else None
        config = rs[0].config if rs else None
        algorithms[algo] = {
            "runs": per_run,
            "rollouts_per_step": config.rollouts_per_step if config else None,
            "n": config.n if config else None,
            "start_accuracy": _mean_sd([p["start_accuracy"] for p in per_run]),
            "final_accuracy": finals[algo],
            "train_wall_clock_s": _mean_sd([p["train_wall_clock_s"] for p in per_run]),
            "process_wall_clock_s": _mean_sd([p["process_wall_clock_s"] for p in per_run]),
            "to_target": mean_hit,
            "seeds_reaching_target": sum(p["to_target"] is not None for p in per_run),
            "phase_median_s": {
                phase: _mean_sd([p["phase_median_s"][phase] for p in per_run]) for phase in PHASES
            },
        }

    ratios = {}
    reference = algorithms.get(REFERENCE_ALGO, {}).get("to_target")
    for algo in algos:
        if algo == REFERENCE_ALGO or REFERENCE_ALGO not in algorithms:
            continue
        mine = algorithms[algo]["to_target"]
        ratio = {
            key: (mine[key] / reference[key] if mine and reference and reference[key] > 0 else None)
            for key in ("wall_clock_s", "tokens")
        }
        notes = [
            f"{a}: {_no_time_reason(algorithms[a])}"
            for a in (algo, REFERENCE_ALGO)
            if _no_time_reason(algorithms[a])
        ]
        ratio["note"] = "; ".join(notes) or None
        ratios[f"{algo}/{REFERENCE_ALGO}"] = ratio
    return {
        "target_accuracy": target,
        "accuracy_metric": "mean over data sources of val-core/<source>/acc/mean@<n> (reward where no acc)",
        "spread": "min-max over seeds (plots); sample sd over seeds (tables)",
        "wall_clock": "train_wall_clock_s: cumulative timing_s/step + timing_s/testing from the metrics (no start-up, "
        "no initial validation); process_wall_clock_s: measured around the subprocesses, all launches",
        "tokens": "cumulative response_length/mean x generated rollouts per step (budget + n x DAPO's dropped groups)",
        "algorithms": algorithms,
        "ratios": ratios,
        "caveats": caveats(results, algos, target),
    }


def _no_time_reason(algorithm: dict) -> str | None:
    """Why an algorithm has no time to target to divide by, or None when it has one."""
    if not algorithm["runs"]:
        return "no runs"
    if algorithm["to_target"] is None:
        return "not reached"
    if algorithm["to_target"]["step"] == 0:
        return "target met before training (step 0)"
    return None


def caveats(results: list[RunResult], algos: list[str], target: dict) -> list[str]:
    notes = []
    seeds = sorted({r.seed for r in results})
    notes.append(
        f"{len(seeds)} seed(s) per algorithm ({', '.join(map(str, seeds))}): the sd and the min-max band "
        "rest on that few samples; differences within them are noise."
    )
    config = results[0].config if results else None
    if config is not None:
        size = _validation_size(config)
        finals = [r.final_accuracy()[0] for r in results if r.final_accuracy()[0] is not None]
        if size:
            p = sum(finals) / len(finals) if finals else 0.5
            se = math.sqrt(max(p * (1 - p), 1e-12) / size)
            notes.append(
                f"Validation: {size} prompts x {config.val_samples_per_prompt} sample(s) each; at accuracy "
                f"{p:.3f} one evaluation's binomial standard error is about {se:.3f} (per prompt)."
            )
        else:
            notes.append(
                "Validation set size unknown here (validation files not readable from this machine)."
            )
        if config.val_max_samples > 0 and config.shuffle:
            notes.append(
                f"data.val_max_samples={config.val_max_samples} with data.shuffle=true: verl draws that "
                "subset with data.seed, so each seed validates on a different subset (algorithms at one "
                "seed share it). Start accuracies differ between seeds for that reason."
            )
        notes.append(
            f"Time to target is read at validations (every {config.test_freq} steps): the first "
            "validation at or above the target; the crossing may lie up to that many steps earlier."
        )
    notes.append(
        f"Target: {target['source']}. "
        + (
            f"{REFERENCE_ALGO} reaches its own mean final accuracy by construction (at its last step at the latest)."
            if target["source"].startswith("mean final")
            else ""
        )
    )
    notes.append(
        "Wall-clock depends on the hardware and sizes of this run: the paper's 0.73x (POISE/DAPO) is on "
        "Qwen3-4B with long generations on 2 x B200, where generation dominates a step."
    )
    if any(r.algo == "dapo" for r in results):
        notes.append(
            "DAPO's token count adds n rollouts per group dynamic sampling dropped, at the kept rollouts' "
            "mean length (verl does not log the dropped lengths)."
        )
    unfinished = [f"{r.algo} seed {r.seed} (step {r.last_step})" for r in results if not r.finished]
    if unfinished:
        notes.append("Unfinished runs included as far as they got: " + ", ".join(unfinished) + ".")
    missing = [a for a in algos if not any(r.algo == a for r in results)]
    if missing:
        notes.append("No metrics for: " + ", ".join(missing) + ".")
    return notes


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fmt_seconds(seconds) -> str:
    if seconds is None:
        return "n/a"
    if seconds < 600:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def _fmt_count(value) -> str:
    if value is None:
        return "n/a"
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def _mean_sd_text(stats: dict) -> str:
    if stats["mean"] is None:
        return "n/a"
    return _fmt(stats["mean"]) + ("" if stats["sd"] is None else f" ± {_fmt(stats['sd'])}")


def render_markdown(summary: dict, plots: list[str]) -> str:
    target = summary["target_accuracy"]
    lines = ["# Ablation: POISE vs DAPO vs GRPO at one generation budget", ""]
    budgets = {a: (s["rollouts_per_step"], s["n"]) for a, s in summary["algorithms"].items() if s["n"]}
    lines.append(
        "Budget: "
        + ", ".join(f"{a} {b} rollouts/step (n={n}, {b // n} prompts)" for a, (b, n) in budgets.items())
    )
    lines += [
        "",
        f"Target accuracy: {_fmt(target['value'])} ({target['source']}).",
        f"Accuracy: {summary['accuracy_metric']}.",
        (
            "Wall-clock: training wall-clock reconstructed from the metrics (cumulative timing_s/step + "
            "timing_s/testing); process wall-clock (start-up included, all launches) in the last column."
        ),
        "",
    ]
    lines += [
        (
            "| algorithm | seeds | start acc | final acc (mean ± sd) | final acc per seed | wall-clock to target "
            "| tokens to target | seeds reaching | training wall-clock | process wall-clock |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for algo, s in summary["algorithms"].items():
        per_seed = (
            ", ".join(
                f"{p['seed']}: {_fmt(p['final_accuracy'])}" + ("" if p["finished"] else "*")
                for p in s["runs"]
            )
            or "n/a"
        )
        hit, missing = s["to_target"], "not reached" if s["runs"] else "no runs"
        to_time = f"{_fmt_seconds(hit['wall_clock_s'])} (step {hit['step']})" if hit else missing
        to_tokens = _fmt_count(hit["tokens"]) if hit else missing
        lines.append(
            f"| {algo} | {len(s['runs'])} | {_mean_sd_text(s['start_accuracy'])} | "
            f"{_mean_sd_text(s['final_accuracy'])} | {per_seed} | {to_time} | {to_tokens} | "
            f"{s['seeds_reaching_target']}/{len(s['runs'])} | {_fmt_seconds(s['train_wall_clock_s']['mean'])} | "
            f"{_fmt_seconds(s['process_wall_clock_s']['mean'])} |"
        )
    lines += ["", "\\* unfinished run. Time and tokens to target: on the mean-over-seeds curve.", ""]
    if summary["ratios"]:
        lines += ["## Ratios to DAPO (time / tokens to reach the target)", ""]
        for name, ratio in summary["ratios"].items():
            wall, tokens = (
                "n/a" if ratio[key] is None else f"{ratio[key]:.2f}x" for key in ("wall_clock_s", "tokens")
            )
            note = f" ({ratio['note']})" if ratio["note"] else ""
            lines.append(f"- {name}: wall-clock {wall}, tokens {tokens}{note}")
        lines += [
            "",
            "The paper reports about 0.73x wall-clock for POISE/DAPO on Qwen3-4B; the issue's target is <= 0.7x.",
            "",
        ]
    lines += [
        "## Per seed: wall-clock and tokens to target",
        "",
        (
            "| algorithm | seed | last step | wall-clock to target | tokens to target | training wall-clock "
            "| process wall-clock | launches |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for algo, s in summary["algorithms"].items():
        for p in s["runs"]:
            hit = p["to_target"]
            lines.append(
                f"| {algo} | {p['seed']} | {p['last_step']}{'' if p['finished'] else '*'} | "
                f"{_fmt_seconds(hit['wall_clock_s']) + ' (step ' + str(hit['step']) + ')' if hit else 'not reached'} | "
                f"{_fmt_count(hit['tokens']) if hit else 'not reached'} | {_fmt_seconds(p['train_wall_clock_s'])} | "
                f"{_fmt_seconds(p['process_wall_clock_s'])} | {p['launches']} |"
            )
    lines += [
        "",
        "## Where a step's time goes",
        "",
        (
            "Median seconds per step of verl's timing_s/<phase> (testing: per validation), mean over seeds; the "
            "testing column per seed gauges how busy the machine was (every algorithm validates the same prompts)."
        ),
        "",
        "| algorithm | " + " | ".join(PHASES) + " | testing per seed |",
        "|---|" + "---|" * (len(PHASES) + 1),
    ]
    for algo, s in summary["algorithms"].items():
        cells = [_fmt(s["phase_median_s"][phase]["mean"], 2) for phase in PHASES]
        gauge = ", ".join(f"{p['seed']}: {_fmt(p['phase_median_s']['testing'], 2)}" for p in s["runs"]) or "n/a"
        lines.append(f"| {algo} | " + " | ".join(cells) + f" | {gauge} |")
    probes = {
        algo: [(p["seed"], p["probe_pearson_last_steps"]) for p in s["runs"] if p["probe_pearson_last_steps"] is not None]
        for algo, s in summary["algorithms"].items()
    }
    probes = {algo: pairs for algo, pairs in probes.items() if pairs}
    if probes:
        lines += [
            "",
            f"Probe baseline vs realised reward, mean poise/probe_pearson over the last {PROBE_WINDOW} steps: "
            + "; ".join(
                f"{algo} " + ", ".join(f"seed {seed} {_fmt(value)}" for seed, value in pairs)
                for algo, pairs in probes.items()
            )
            + ".",
        ]
    lines += ["", "## Plots", "", f"Curves: mean over seeds; band: {summary['spread']}.", ""]
    lines += [f"- ![{name}]({name})" for name in plots]
    lines += ["", "## Caveats", ""] + [f"- {note}" for note in summary["caveats"]]
    return "\n".join(lines) + "\n"


def write_report(
    results: list[RunResult], algos: list[str], report_dir: Path, target_accuracy: float | None
) -> dict:
    from poise_verl import plotting

    report_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(results, algos, target_accuracy)
    target = summary["target_accuracy"]["value"]
    frames = {
        algo: [r.frame for r in sorted(results, key=lambda r: r.seed) if r.algo == algo] for algo in algos
    }
    frames = {algo: runs for algo, runs in frames.items() if runs}
    plots = [
        plotting.accuracy_figure(
            frames,
            "train_wall_clock_s",
            report_dir / "accuracy_vs_wall_clock.png",
            target,
            "training wall-clock (from metrics)",
            time_axis=True,
        ),
        plotting.accuracy_figure(
            frames,
            "generated_tokens",
            report_dir / "accuracy_vs_tokens.png",
            target,
            "generated response tokens",
        ),
        plotting.accuracy_figure(frames, None, report_dir / "accuracy_vs_step.png", target, "training step"),
        plotting.metric_figure(
            frames,
            "actor/grad_norm",
            report_dir / "grad_norm.png",
            "Actor gradient norm",
            "actor/grad_norm (before clipping)",
        ),
        plotting.advantage_figure(frames, ADVANTAGE_STD_KEYS, report_dir / "advantages.png"),
    ]
    if frames.get("poise"):
        plots.append(plotting.probe_figure(frames["poise"], report_dir / "poise_probe.png"))
    summary["plots"] = [p.name for p in plots]
    (report_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (report_dir / "summary.md").write_text(render_markdown(summary, summary["plots"]))
    return summary


# ------------------------------------------------------------------------------------------- command line
def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" in argv:
        split = argv.index("--")
        argv, extra = argv[:split], argv[split + 1 :]
    else:
        extra = []
    parser = argparse.ArgumentParser(
        prog="python -m poise_verl.ablate",
        description="POISE vs DAPO vs GRPO at one rollout budget over several seeds; Hydra overrides after `--`.",
    )
    parser.add_argument(
        "--algos", default=",".join(DEFAULT_ALGOS), help="algo configs to run (hydra_configs/algo)"
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
    known = sorted(p.stem for p in (CONFIG_DIR / "algo").glob("*.yaml"))
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


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    algos, seeds = _algo_list(args.algos), _seed_list(args.seeds)
    check_extra_overrides(extra)
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
    runs = plan(algos, seeds, output, extra, configs)
    for run in runs:
        check_folder(run)
    _log(
        f"{len(runs)} runs ({', '.join(algos)} x seeds {seeds}) at {budgets.pop()} rollouts/step in {output}"
    )
    if args.dry_run:
        for run in runs:
            print(
                f"[{run.status()}] {run.name}: {' '.join(run.command('<ray temp dir>' if not args.no_ray_temp_dir else None))}"
            )
        return 0
    # A Ray temp dir of the user's own wins (Hydra refuses to append a key twice).
    use_ray_temp_dir = not args.no_ray_temp_dir and not any("ray_init._temp_dir" in o for o in extra)
    try:
        failed = [] if args.report_only else run_all(runs, use_ray_temp_dir=use_ray_temp_dir)
    except KeyboardInterrupt:
        _log("interrupted: the run in progress was stopped; rerun the same command to resume it")
        return 130
    results = collect(runs, args.metric)
    if not results:
        _log("no run has logged metrics yet: no report")
        return 1
    summary = write_report(results, algos, output / "report", args.target_accuracy)
    for algo, s in summary["algorithms"].items():
        hit = s["to_target"]
        _log(
            f"{algo}: final accuracy {_mean_sd_text(s['final_accuracy'])}, to target "
            f"{_fmt_seconds(hit['wall_clock_s']) if hit else 'not reached'}"
        )
    for name, ratio in summary["ratios"].items():
        _log(f"{name} wall-clock to target: {_fmt(ratio['wall_clock_s'], 2)}")
    _log(f"report: {output / 'report' / 'summary.md'}")
    if failed:
        _log("failed: " + ", ".join(run.name for run in failed) + " (rerun the same command to resume them)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
