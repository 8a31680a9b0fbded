"""The ablation driver end to end, as a user runs it: `python -m poise_verl.ablate` launches the real main job
(Ray, verl's trainer, POISE) for one tiny run, writes the report, and on a second invocation skips the
finished run and only rewrites the report.

The run is POISE with prompt selection by its prompt-only probe (``poise_select``): everything plain POISE
logs, plus the selection's metrics, so the report's selection table is checked on what the trainer really
logs, at no extra launch. Plain POISE's main job runs in tests/e2e."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

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


def test_driver_runs_skips_a_finished_run_and_reports(tiny_task_overrides, tmp_path):
    output = tmp_path / "ablation"
    args = ["--algos", "poise_select", "--seeds", "0", "--output", str(output), "--", *SMALL, *tiny_task_overrides]

    first = _ablate(args, tmp_path, timeout=420)
    run = output / "runs" / "poise_select" / "seed_0"
    log = (run / "log.txt").read_text() if (run / "log.txt").exists() else ""
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:] + log[-4000:]
    assert "[1/1] poise_select seed 0: done in" in first.stdout
    marker = json.loads((run / "ABLATE_DONE.json").read_text())
    assert marker["launches"] == 1 and marker["wall_clock_s"] > 0
    assert "data.seed=0" in marker["command"] and "poise.probe.seed=0" in marker["command"]
    assert "poise.selection.mode=probe" in marker["command"]
    assert "trainer.experiment_name=tiny_poise_select_seed0" in marker["command"]
    assert list((run / "metrics").glob("*.jsonl")), "the main job wrote no metrics file into the run folder"

    summary = json.loads((output / "report" / "summary.json").read_text())
    (seed_0,) = summary["algorithms"]["poise_select"]["runs"]
    assert seed_0["finished"] and seed_0["last_step"] == 2 and seed_0["final_step"] == 2
    for key in ("start_accuracy", "final_accuracy", "train_wall_clock_s", "generated_tokens"):
        assert math.isfinite(seed_0[key]), key
    # Training wall-clock from the metrics excludes Ray's start-up; the process wall-clock includes it.
    assert 0 < seed_0["train_wall_clock_s"] < seed_0["process_wall_clock_s"]
    assert seed_0["generated_tokens"] > 0
    # Target: the only algorithm's own final accuracy, which it reaches.
    assert summary["target_accuracy"]["value"] == pytest.approx(seed_0["final_accuracy"])
    assert summary["algorithms"]["poise_select"]["to_target"] is not None
    for name in summary["plots"]:
        assert (output / "report" / name).stat().st_size > 5000, name
    assert {"poise_select_probe.png", "zero_variance_share.png"} <= set(summary["plots"])
    # The selection table from the trainer's own metrics: step 1 trains on the dataloader's prompts (no prompt
    # probe yet), step 2 selects with the probe fitted on step 1's 8 prompt groups.
    (selected,) = summary["selection"]["poise_select"]["runs"]
    assert selected["selection_steps"] == 1
    for key in ("zero_variance_share", "predicted_zero_variance_share", "candidates_predicted_zero_variance_share"):
        assert 0.0 <= selected[key] <= 1.0, key
    assert 0.0 < selected["select_share_of_step"] < 1.0
    assert selected["feature_diff_max"] < 1e-3  # the prompt-only forward reads the state old-log-prob captures

    second = _ablate(args, tmp_path, timeout=120)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "[1/1] poise_select seed 0: finished earlier, skipped" in second.stdout
    assert len((run / "attempts.jsonl").read_text().splitlines()) == 1
    assert json.loads((output / "report" / "summary.json").read_text())["algorithms"] == summary["algorithms"]
