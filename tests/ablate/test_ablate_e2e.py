"""The ablation driver end to end, as a user runs it: `python -m poise_verl.ablate` launches the real main job
(Ray, verl's trainer, POISE) for one tiny run, writes the report, and on later invocations skips the finished
runs and only rewrites the report.

The run is POISE with prompt selection by its prompt-only probe (``poise_select``): everything plain POISE
logs, plus the selection's metrics, so the report's selection table is checked on what the trainer really
logs, at no extra launch. Plain POISE's main job runs in tests/e2e.

Time to target: the report times every algorithm to DAPO's mean final accuracy. DAPO's run here is a finished
run folder written as the driver and verl's ``file`` logger leave one (``ablate_helpers``), with a final accuracy
the test chooses: a real DAPO launch would cost another ~2.5 min on the 2-core machine and, at 2 steps with
greedy validation on 16 prompts, ended at the very accuracy POISE started and ended at (0.1875, measured), which
makes "POISE reaches DAPO's final accuracy" hold whatever the report computes. With a chosen DAPO final, the
POISE run's time to target is a question with a known answer, counted here from its raw metrics.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from ablate_helpers import launch_config, mark_done, raw_metrics, write_launch
from omegaconf import OmegaConf

from poise_verl.ablate.metrics import load_metrics, validation_accuracy
from poise_verl.ablate.plan import SEED_KEYS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# The small setting of tests/e2e/e2e_runner.py: 16 rollouts per step, micro-batches that divide it.
SMALL = [
    "budget.rollouts_per_step=16",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=16",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16",
    "data.val_max_samples=16",
    "poise.bootstrap_steps=1",
    "poise.min_fit_rows=8",
    "trainer.test_freq=2",
    "trainer.total_training_steps=2",
]
ROLLOUTS_PER_STEP = 16
VALIDATION_PROMPTS = 16


def _ablate(args: list[str], cwd, timeout: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline")
    return subprocess.run(
        [sys.executable, "-m", "poise_verl.ablate", *args],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _accuracy_key(metrics: dict[int, dict[str, float]]) -> str:
    (key,) = {k for row in metrics.values() for k in row if k.startswith("val-core/") and "/acc/mean@" in k}
    return key


def _expected_hit(metrics: dict[int, dict[str, float]], target: float) -> dict | None:
    """The first validation at or above ``target`` and the training wall-clock and tokens up to it, counted from
    the raw metrics: steps 1..s, each timing_s/step (+ timing_s/testing where it validated) and
    response_length/mean x the rollouts of a step."""
    key = _accuracy_key(metrics)
    for step in sorted(s for s, row in metrics.items() if key in row):
        if metrics[step][key] >= target - 1e-12:
            trained = [metrics[s] for s in sorted(metrics) if 0 < s <= step]
            return {
                "step": step,
                "wall_clock_s": sum(r["timing_s/step"] + r.get("timing_s/testing", 0.0) for r in trained),
                "steps_wall_clock_s": sum(r["timing_s/step"] for r in trained),
                "tokens": sum(r["response_length/mean"] * ROLLOUTS_PER_STEP for r in trained),
            }
    return None


def _write_dapo_run(output, extra: list[str], key: str, start: float, final: float) -> None:
    """A finished DAPO seed-0 run with validations at steps 0 and 2 (``start``, ``final``), in the folder and
    with the overrides the driver plans for it."""
    from poise_verl.ablate.plan import plan_runs, read_algo_config

    algos = ["poise_select", "dapo"]
    runs = plan_runs(algos, [0], output, extra, {a: read_algo_config(a, extra) for a in algos})
    dapo = next(r for r in runs if r.algo == "dapo")
    for old in (dapo.folder / "metrics").glob("*.jsonl"):
        old.unlink()
    step = {"timing_s/step": 3.0, "response_length/mean": 20.0}
    write_launch(
        dapo.folder, "dapo", {0: {key: start}, 1: step, 2: {**step, "timing_s/testing": 1.0, key: final}}
    )
    mark_done(dapo, wall_clock_s=60.0)


def test_driver_runs_skips_finished_runs_and_times_poise_to_dapos_accuracy(tiny_task_overrides, tmp_path):
    output = tmp_path / "ablation"
    extra = [*SMALL, *tiny_task_overrides]
    args = ["--algos", "poise_select", "--seeds", "0", "--output", str(output), "--", *extra]

    first = _ablate(args, tmp_path, timeout=420)
    run = output / "runs" / "poise_select" / "seed_0"
    log = (run / "log.txt").read_text() if (run / "log.txt").exists() else ""
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:] + log[-4000:]
    assert "[1/1] poise_select seed 0: done in" in first.stdout
    marker = json.loads((run / "ABLATE_DONE.json").read_text())
    assert marker["launches"] == 1 and marker["wall_clock_s"] > 0
    assert list((run / "metrics").glob("*.jsonl")), "the main job wrote no metrics file into the run folder"

    # What the main job ran with, from the config Hydra saved for it (not from the command line's text).
    config = launch_config(run)
    for name in SEED_KEYS:  # every key the driver sets per seed
        assert OmegaConf.select(config, name) == 0, name
    assert config.poise.selection.mode == "probe" and config.algorithm.adv_estimator == "poise"
    assert config.trainer.experiment_name == "tiny_poise_select_seed0"
    assert config.trainer.default_local_dir == str(run)
    assert config.budget.rollouts_per_step == ROLLOUTS_PER_STEP and config.actor_rollout_ref.rollout.n == 2
    assert config.data.train_batch_size == 8 and config.data.val_max_samples == VALIDATION_PROMPTS
    assert config.trainer.total_training_steps == 2 and "file" in config.trainer.logger

    metrics = raw_metrics(run)
    key = _accuracy_key(metrics)
    accuracies = {step: row[key] for step, row in metrics.items() if key in row}
    assert sorted(accuracies) == [0, 2]
    assert 0 < accuracies[0] < 1, "the trained tiny policy gets some validation prompts right, not all"
    # The main job's last lines: what it learned (the mean over data sources), where its files are, what next.
    accuracy = validation_accuracy(load_metrics(run)).dropna()
    tail = "\n".join(line for line in log.splitlines() if line.strip())
    best = int(accuracy.idxmax())
    assert (
        f"poise-verl: the run finished.\n  validation accuracy (mean over data sources): {accuracy[0]:.3f} at step 0, "
        f"best {accuracy[best]:.3f} at step {best}, last {accuracy[2]:.3f} at step 2\n  wall-clock: "
    ) in tail, tail[-3000:]
    assert f"  checkpoint: {run / 'global_step_2'}\n  evaluate: python -m poise_verl.eval {run / 'global_step_2'}" in tail
    assert tail.splitlines()[-1].startswith("  resume: ") and "trainer.total_training_steps=<more steps>" in tail

    summary = json.loads((output / "report" / "summary.json").read_text())
    (seed_0,) = summary["algorithms"]["poise_select"]["runs"]
    assert seed_0["finished"] and seed_0["last_step"] == 2 and seed_0["final_step"] == 2
    for name in ("start_accuracy", "final_accuracy", "train_wall_clock_s", "generated_tokens"):
        assert math.isfinite(seed_0[name]), name
    assert seed_0["start_accuracy"] == accuracies[0] and seed_0["final_accuracy"] == accuracies[2]
    # The run's totals, counted from its raw metrics: steps 1 and 2, and the validation after step 2.
    trained = [metrics[1], metrics[2]]
    assert seed_0["generated_tokens"] == pytest.approx(
        sum(r["response_length/mean"] * ROLLOUTS_PER_STEP for r in trained)
    )
    assert seed_0["train_wall_clock_s"] == pytest.approx(
        sum(r["timing_s/step"] for r in trained) + metrics[2]["timing_s/testing"]
    )
    # Training wall-clock from the metrics excludes Ray's start-up; the process wall-clock includes it.
    assert 0 < seed_0["train_wall_clock_s"] < seed_0["process_wall_clock_s"]
    assert seed_0["generated_tokens"] > 0
    # Without a DAPO run the target falls back to the lowest mean final accuracy: here the run's own.
    assert summary["target_accuracy"] == {
        "value": pytest.approx(seed_0["final_accuracy"]),
        "source": "lowest mean final accuracy (poise_select; no dapo runs)",
    }
    for name in summary["plots"]:
        assert (output / "report" / name).stat().st_size > 5000, name
    assert {"poise_select_probe.png", "zero_variance_share.png"} <= set(summary["plots"])
    # The selection table from the trainer's own metrics: step 1 trains on the dataloader's prompts (no prompt
    # probe yet), step 2 selects with the probe fitted on step 1's 8 prompt groups.
    (selected,) = summary["selection"]["poise_select"]["runs"]
    assert selected["selection_steps"] == 1
    for name in (
        "zero_variance_share",
        "predicted_zero_variance_share",
        "candidates_predicted_zero_variance_share",
    ):
        assert 0.0 <= selected[name] <= 1.0, name
    assert 0.0 < selected["select_share_of_step"] < 1.0
    assert (
        selected["feature_diff_max"] < 1e-3
    )  # the prompt-only forward reads the state old-log-prob captures

    # DAPO (same validation prompts, so the same start) ends one validation prompt above anything POISE scored:
    # the target is DAPO's final accuracy, which POISE never reaches. Both finished runs are skipped.
    best = max(accuracies.values())
    dapo_final = best + 1 / VALIDATION_PROMPTS
    _write_dapo_run(output, extra, key, start=accuracies[0], final=dapo_final)
    both = ["--algos", "poise_select,dapo", "--seeds", "0", "--output", str(output), "--", *extra]
    second = _ablate(both, tmp_path, timeout=180)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "[1/2] poise_select seed 0: finished earlier, skipped" in second.stdout
    assert "[2/2] dapo seed 0: finished earlier, skipped" in second.stdout
    assert len((run / "attempts.jsonl").read_text().splitlines()) == 1
    above = json.loads((output / "report" / "summary.json").read_text())
    assert above["target_accuracy"] == {
        "value": pytest.approx(dapo_final),
        "source": "mean final accuracy of dapo",
    }
    poise = above["algorithms"]["poise_select"]
    assert _expected_hit(metrics, dapo_final) is None
    assert poise["to_target"] is None and poise["seeds_reaching_target"] == 0
    (again,) = poise["runs"]
    assert again["to_target"] is None
    assert {k: v for k, v in again.items() if k != "to_target"} == {
        k: v for k, v in seed_0.items() if k != "to_target"
    }
    assert above["algorithms"]["dapo"]["to_target"]["step"] == 2
    ratio = above["ratios"]["poise_select/dapo"]
    assert ratio["wall_clock_s"] is None and ratio["note"] == "poise_select: not reached"

    # DAPO ends at the best accuracy POISE scored: POISE's time to it (step 0 if it started there), counted from
    # its raw metrics.
    _write_dapo_run(output, extra, key, start=accuracies[0], final=best)
    third = _ablate(["--report-only", *both], tmp_path, timeout=180)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    reached = json.loads((output / "report" / "summary.json").read_text())
    assert reached["target_accuracy"] == {
        "value": pytest.approx(best),
        "source": "mean final accuracy of dapo",
    }
    expected = _expected_hit(metrics, best)
    assert expected is not None and accuracies[expected["step"]] == best
    poise = reached["algorithms"]["poise_select"]
    assert poise["seeds_reaching_target"] == 1
    hit = poise["to_target"]
    assert {k: hit[k] for k in expected} == pytest.approx(expected)
    assert hit["mean_accuracy"] == best
    assert poise["runs"][0]["to_target"] == pytest.approx(expected)
    ratio = reached["ratios"]["poise_select/dapo"]
    if expected["step"] == 0:
        assert (
            ratio["wall_clock_s"] is None
            and "poise_select: target met before training (step 0)" in ratio["note"]
        )
    else:  # DAPO reaches it at its final validation: 2 steps of 3 s, one validation of 1 s, 2 x 16 x 20 tokens
        assert reached["algorithms"]["dapo"]["to_target"]["step"] == 2
        assert ratio["wall_clock_s"] == pytest.approx(expected["wall_clock_s"] / 7.0)
        assert ratio["tokens"] == pytest.approx(expected["tokens"] / 640.0)
