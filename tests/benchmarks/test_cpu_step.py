"""The CPU-step benchmark's parts that need no clock: the plain loop's arithmetic, a real plain step on a reduced
tiny build, and how the benchmark reads verl's metrics and turns runs into the summary it prints.

The timings themselves are the benchmark's job (`python -m benchmarks.cpu_step`), never a test's.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks.cpu_step import combine_plain, median_phases, read_metrics, report, selection_share
from benchmarks.plain_loop import (
    CLIP_HIGH,
    CLIP_LOW,
    clipped_token_mean_loss,
    group_advantages,
    run_plain,
    training_batch,
)


def test_group_advantages_are_grpos():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    advantages = group_advantages(rewards)
    std = torch.tensor([1.0, 0.0, 0.0, 1.0]).std()  # unbiased, as verl's GRPO
    torch.testing.assert_close(advantages[0], (rewards[0] - 0.5) / (std + 1e-6))
    assert torch.equal(advantages[1], torch.zeros(4))  # a group whose rewards agree teaches nothing


def test_clipped_loss_is_ppos_asymmetric_clip_averaged_over_tokens():
    old = torch.zeros(2, 3)
    new = torch.log(torch.tensor([[1.5, 1.0, 0.5], [1.5, 1.0, 0.5]]))  # ratios 1.5, 1, 0.5
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    advantages = torch.tensor([1.0, -1.0])
    expected = [
        -min(1.5, 1 + CLIP_HIGH), -1.0, -0.5,  # positive advantage: the ratio is capped above only
        max(1.5, 1 + CLIP_HIGH), 1.0,  # negative advantage: the ratio is floored below only
    ]
    loss = clipped_token_mean_loss(new, old, advantages, mask)
    assert math.isclose(float(loss), sum(expected) / 5, rel_tol=1e-6)
    assert CLIP_LOW == 0.2 and CLIP_HIGH == 0.28


def test_training_batch_masks_exactly_the_response_tokens():
    input_ids, attention_mask, response_mask = training_batch([[5, 6], [7]], [[8, 9, 2], [3]], pad_id=0)
    assert input_ids.tolist() == [[5, 6, 8, 9, 2], [7, 3, 0, 0, 0]]
    assert attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    # Position t predicts token t + 1: the response tokens are predicted from positions 1..3 and 0.
    assert response_mask.tolist() == [[0, 1, 1, 1], [1, 0, 0, 0]]


def test_plain_loop_trains_the_tiny_policy(small_tiny_assets):
    run = run_plain(small_tiny_assets, steps=2)
    assert len(run.steps) == 2
    for step in run.steps:
        assert set(step.phases) == {"generate", "reward", "update"}
        assert 0.0 <= step.reward_mean <= 1.0
        assert math.isfinite(step.loss) and math.isfinite(step.grad_norm)


def test_metrics_are_read_from_every_launch_file_and_summarised(tmp_path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    rows = [{"step": s, "data": {"timing_s/step": 2.0 + s, "timing_s/gen": 1.0, "critic/score/mean": 0.5}}
            for s in (1, 2, 3)]
    (metrics_dir / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n")
    (metrics_dir / "b.jsonl").write_text(json.dumps(rows[2]) + "\n")  # a resumed launch writes its own file
    metrics = read_metrics(metrics_dir)
    assert sorted(metrics) == [1, 2, 3]
    assert median_phases(metrics, [2, 3]) == {"gen": 1.0, "step": 4.5}


def test_the_choosing_share_counts_only_the_steps_that_chose():
    metrics = {
        3: {"timing_s/step": 9.0, "poise/selection/active": 0.0},  # probe not fitted yet: no choosing
        4: {"timing_s/step": 2.0, "timing_s/select": 0.2, "poise/selection/active": 1.0},
        5: {"timing_s/step": 4.0, "timing_s/select": 0.4, "poise/selection/active": 1.0},
        6: {"timing_s/step": 3.0, "timing_s/select": 0.3, "poise/selection/active": 1.0},
    }
    assert selection_share(metrics, [3, 4, 5, 6]) == {"select_share_of_step": pytest.approx(0.1), "selecting_steps": 3}
    assert selection_share({3: {"timing_s/step": 2.0}}, [3]) == {}  # plain POISE: nothing to report


def test_the_faster_thread_count_is_the_yardstick_and_ratios_are_reported():
    def plain(threads, times):
        return {
            "threads": threads,
            "step_s": {i + 1: t for i, t in enumerate(times)},
            "median_step_s": sorted(times[2:])[len(times[2:]) // 2],
            "phases_median_s": {"generate": 0.1, "update": 0.2},
            "startup_s": 0.5,
        }

    runs = [plain(1, [9, 9, 0.4, 0.4, 0.4]), plain(2, [9, 9, 0.6, 0.6, 0.6]), plain(1, [9, 9, 0.5, 0.5, 0.5])]
    combined = combine_plain(runs)
    assert combined["threads"] == 1 and combined["median_step_s"] == pytest.approx(0.45)
    results = {
        "load_before": [1.0, 1.0, 1.0], "load_after": [1.0, 1.0, 1.0], "cores": 2,
        "runs": {
            "plain": combined,
            "grpo": {"median_step_s": 0.9, "startup_s": 30.0, "wall_s": 60.0, "phases_median_s": {"gen": 0.5}},
        },
        "ratios": {"GRPO / plain": 2.0},
    }
    text = report(results)
    assert "GRPO / plain: **2.00x**" in text and "| grpo | 0.90 s | - | 30.0 s | 60.0 s |" in text


def test_a_written_report_names_no_machine_folder():
    from benchmarks.cpu_step import portable

    run = {"command": "python -m poise_verl.main trainer.default_local_dir=/tmp/cpu_step-abc/ckpt-poise",
           "steps": [1, 2], "log": ["/tmp/cpu_step-abc/poise.log"]}
    assert portable(run, {"/tmp/cpu_step-abc": "<workdir>"}) == {
        "command": "python -m poise_verl.main trainer.default_local_dir=<workdir>/ckpt-poise",
        "steps": [1, 2], "log": ["<workdir>/poise.log"],
    }
