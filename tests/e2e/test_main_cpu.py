"""The main job trains for real on this CPU machine through verl's own trainer, with POISE or DAPO.

Each test launches `python -m poise_verl.main` (nothing mocked): Ray on loopback, verl's FSDP2 actor worker
group, the transformers rollout server, the feature-capture engine, the probe worker and the replay-buffer
actor. The assertions are what a user would check: metrics exist and are finite, the probe was refit, the
policy's weights moved, a resumed run continues at the next step with its buffer.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from e2e_runner import assert_finite, composed_config, last_lines, run_main, wandb_history
from safetensors.torch import load_file

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

POISE_KEYS = [
    "poise/probe_mae",
    "poise/probe_pearson",
    "poise/buffer_rows",
    "training/adv_std",
    "poise/probe_refit",
    "timing_s/gen",
    "timing_s/old_log_prob",
    "timing_s/adv",
    "timing_s/update_actor",
    "timing_s/probe_predict",
    "timing_s/probe_refit_wait",
    "actor/pg_loss",
    "actor/grad_norm",
]


def _weights(path):
    state = torch.load(path, weights_only=False)
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in state.items()}


# The run also selects its prompts with the history filter (issue 13's baseline): every step draws twice the
# prompts, keeps its usual 8, and the filter's per-prompt history must survive the resume.
HISTORY = ["poise.selection.mode=history"]


def _history(checkpoint) -> dict:
    return torch.load(checkpoint / "poise_state.pt", weights_only=False)["selection"]["history"]["streaks"]


def test_poise_trains_saves_and_resumes(tiny_assets, tmp_path):
    first = run_main(
        ["trainer.total_training_steps=3", "trainer.save_freq=3", "trainer.logger=[console,file,wandb]", *HISTORY],
        tmp_path,
        env={"WANDB_DIR": str(tmp_path)},
    )
    assert first.returncode == 0, first.log[-4000:]
    metrics = first.metrics()
    # wandb (offline, as the README says it works) holds the same POISE metrics as the metrics file.
    (wandb_run,) = (tmp_path / "wandb").glob("offline-run-*")
    logged = wandb_history(wandb_run)
    for step in (2, 3):
        for key in ("poise/probe_pearson", "poise/buffer_rows", "poise/phase_probe"):
            assert logged[step][key] == pytest.approx(metrics[step][key]), (step, key)
    (first_metrics_file,) = (first.checkpoint_dir / "metrics").glob("*.jsonl")
    first_metrics_text = first_metrics_file.read_text()
    assert any(k.startswith("val-core/") for k in metrics[0]), "no validation before training"
    # Step 1 is a bootstrap step (RLOO); from step 2 the probe, fitted on step 1's rows, gives the baselines.
    assert metrics[1]["poise/phase_probe"] == 0.0 and metrics[2]["poise/phase_probe"] == 1.0
    for step in (2, 3):
        assert_finite(metrics[step], POISE_KEYS)
    assert metrics[3]["poise/probe_num_fits"] == 3.0
    assert metrics[3]["poise/buffer_rows"] == 3 * 16  # 8 prompts x 2 per step: the budget, whatever was drawn
    for step in (1, 2, 3):
        assert metrics[step]["poise/selection/active"] == 1.0
        assert (metrics[step]["poise/selection/candidates"], metrics[step]["poise/selection/kept"]) == (
            16.0,
            8.0,
        )
        assert 0.0 <= metrics[step]["poise/zero_variance_share"] <= 1.0
    history = _history(first.checkpoint_dir / "global_step_3")
    assert len(history) == 3 * 8 and set(history.values()) <= {0, 1}  # each kept prompt visited once

    # The actor's weights moved away from the tiny policy it started from.
    initial = load_file(tiny_assets / "model" / "model.safetensors")
    trained = _weights(first.checkpoint_dir / "global_step_3" / "actor" / "model_world_size_1_rank_0.pt")
    moved = max((trained[k].float() - initial[k].float()).abs().max().item() for k in initial if k in trained)
    assert moved > 0.0

    # Resume: same folder, more steps. verl restores the actor; POISE restores probe and buffer.
    second = run_main(["trainer.total_training_steps=4", "trainer.save_freq=4", *HISTORY], tmp_path)
    assert second.returncode == 0, second.log[-4000:]
    assert "Resuming from" in second.log and "global_step_3" in second.log
    assert re.search(r"Restored POISE state from .*global_step_3.* \(48 buffer rows\)", second.log)
    resumed = second.metrics()
    assert 4 in resumed and resumed[4]["poise/buffer_rows"] == 4 * 16
    assert resumed[4]["poise/probe_num_fits"] == 4.0
    assert_finite(resumed[4], POISE_KEYS)
    after = _history(second.checkpoint_dir / "global_step_4")
    assert set(history) < set(after)  # the restored history, plus step 4's prompts
    # The first launch's metrics survive the resume: its file is untouched, the second launch wrote its own.
    assert first_metrics_file.read_text() == first_metrics_text
    assert len(list((first.checkpoint_dir / "metrics").glob("*.jsonl"))) == 2

    # The evaluation command reads the checkpoint the trainer wrote: the actor's trained weights.
    from poise_verl.analysis.policy import load_policy
    from poise_verl.eval import main as evaluate

    step_dir = second.checkpoint_dir / "global_step_4"
    model, _, layout = load_policy(step_dir)
    assert layout.kind == "verl"
    saved = _weights(step_dir / "actor" / "model_world_size_1_rank_0.pt")
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], saved[key].to(loaded[key].dtype)) for key in saved if key in loaded)
    evaluate([
        str(step_dir), "--data", str(tiny_assets / "data" / "val.parquet"), "--limit", "16", "--k", "2",
        "--max-new-tokens", "24", "--no-progress", "--output", str(tmp_path / "eval"),
    ])
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["settings"]["checkpoint_kind"] == "verl"
    assert summary["results"]

    # A checkpoint cut short (the actor's weights) stops the next launch before Ray, naming the file and the
    # command that resumes from the previous checkpoint, instead of torch's zip-archive traceback.
    actor_file = step_dir / "actor" / "model_world_size_1_rank_0.pt"
    actor_file.write_bytes(actor_file.read_bytes()[: actor_file.stat().st_size // 2])
    third = run_main(["trainer.total_training_steps=5", *HISTORY], tmp_path, timeout=300)
    assert third.returncode != 0
    tail = last_lines(third.log, 2)
    assert f"the checkpoint {step_dir} is unreadable: actor/model_world_size_1_rank_0.pt is not a whole torch" in tail
    assert (
        "Resume from the previous checkpoint with the same command plus trainer.resume_mode=resume_path "
        f"trainer.resume_from_path={second.checkpoint_dir / 'global_step_3'}" in tail
    ), tail
    assert "PytorchStreamReader" not in third.log and "Started a local Ray instance" not in third.log


def test_dapo_trains_at_the_same_rollout_budget(tiny_assets, tmp_path):
    run = run_main(["algo=dapo", "trainer.total_training_steps=2", "trainer.save_freq=-1"], tmp_path)
    assert run.returncode == 0, run.log[-4000:]
    metrics = run.metrics()
    for step in (1, 2):
        assert_finite(
            metrics[step], ["actor/pg_loss", "actor/grad_norm", "critic/score/mean", "timing_s/gen"]
        )
        assert not any(k.startswith("poise/") for k in metrics[step])
    # 16 rollouts per step, as for POISE: one prompt with n=16, in the config the run composed.
    config = composed_config(tmp_path)
    assert (config.actor_rollout_ref.rollout.n, config.data.train_batch_size) == (16, 1)
    assert config.reward.custom_reward_function.reward_kwargs.incorrect_score == -1.0


def test_dapo_stops_with_an_error_when_dynamic_sampling_cannot_fill_a_batch(tiny_assets, tmp_path):
    always_zero = tmp_path / "zero_reward.py"
    always_zero.write_text(
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):\n    return 0.0\n"
    )
    run = run_main(
        [
            "algo=dapo",
            "trainer.total_training_steps=2",
            "trainer.save_freq=-1",
            "trainer.val_before_train=false",
            "algorithm.filter_groups.max_num_gen_batches=2",
            "reward.reward_kwargs.overlong_buffer_cfg.enable=false",
            f"reward.custom_reward_function.path={always_zero}",
        ],
        tmp_path,
        timeout=300,
    )
    assert run.returncode != 0
    assert "DAPO dynamic sampling could not fill step 1" in run.log
