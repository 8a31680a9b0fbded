"""verl 0.9.1's own trainer (``python -m verl.trainer.main_ppo``, v1, sync mode) runs GRPO on CPU.

Nothing is mocked: a local Ray cluster on loopback, verl's FSDP2 actor and the ``hf`` rollout server from
``poise_verl.verl_ext.cpu``. The CPU settings come from the project's one place for them, composed into verl's
own config tree: ``--config-dir hydra_configs +platform=cpu`` (``hydra_configs/platform/cpu.yaml``); the plugin
modules load through the package's entry points, as in any verl process.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

CONFIG_DIR = Path(__file__).resolve().parents[2] / "hydra_configs"
STEPS = 3
METRIC = re.compile(r"step:(\d+) - (.*)")


def parse_step_metrics(log: str) -> dict[int, dict[str, float]]:
    """{step: {metric: value}} from verl's console logger lines ``step:N - key:value - ...``."""
    steps = {}
    for match in METRIC.finditer(log):
        metrics = {}
        for item in match.group(2).split(" - "):
            key, _, value = item.rpartition(":")
            value = re.sub(r"^np\.\w+\((.*)\)$", r"\1", value.strip())
            try:
                metrics[key] = float(value)
            except ValueError:
                continue
        steps[int(match.group(1))] = metrics
    return steps


@pytest.mark.slow
@pytest.mark.timeout(1000)
def test_verl_main_ppo_grpo_runs_on_cpu(tiny_task, tmp_path):
    # Ray's socket paths must stay under ~107 characters, which pytest's tmp_path can exceed.
    ray_dir = tempfile.mkdtemp(prefix="ray")  # under TMPDIR (make test: a short folder)
    command = [
        sys.executable,
        "-m",
        "verl.trainer.main_ppo",
        f"--config-dir={CONFIG_DIR}",
        "+platform=cpu",
        "algorithm.adv_estimator=grpo",
        f"data.train_files={tiny_task.train_parquet}",
        f"data.val_files={tiny_task.val_parquet}",
        "data.train_batch_size=4",
        "data.max_prompt_length=16",
        "data.max_response_length=12",
        f"actor_rollout_ref.model.path={tiny_task.model_dir}",
        "actor_rollout_ref.actor.ppo_mini_batch_size=4",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.actor.use_kl_loss=False",
        # A large step so that a rollout left on stale weights would show in rollout-vs-actor log-probs.
        "actor_rollout_ref.actor.optim.lr=0.01",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.rollout.n=2",
        "actor_rollout_ref.rollout.calculate_log_probs=True",
        f"reward.custom_reward_function.path={tiny_task.reward_file}",
        "trainer.logger=[console]",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        f"trainer.total_training_steps={STEPS}",
        "trainer.project_name=verl_ext_cpu",
        "trainer.experiment_name=grpo",
        f"trainer.default_local_dir={tmp_path / 'checkpoints'}",
        f"+ray_kwargs.ray_init._temp_dir={ray_dir}",
    ]
    # Nothing of POISE in the environment: the platform file carries VERL_PLATFORM to every Ray process.
    env = {key: value for key, value in os.environ.items() if not key.startswith("VERL_")}
    # verl's entry point starts Ray itself: its workers at the niceness of other work (as the CPU platform's
    # launcher sets them), or they starve on a busy machine.
    env.setdefault("RAY_worker_niceness", "0")
    try:
        result = subprocess.run(
            command, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
    finally:
        # Ray's processes may still write session logs for a moment after the driver exits.
        for _ in range(3):
            time.sleep(2)
            shutil.rmtree(ray_dir, ignore_errors=True)
    log = result.stdout + result.stderr
    (tmp_path / "main_ppo.log").write_text(log)
    assert result.returncode == 0, log[-6000:]

    # The platform file's agent-loop manager batched the requests to the hf server.
    assert "HFAgentLoopManager: the agent loop reaches the rollout servers through HFServerClient" in log
    steps = parse_step_metrics(log)
    assert sorted(steps) == list(range(1, STEPS + 1)), log[-6000:]
    for step, metrics in steps.items():
        for key in (
            "timing_s/gen",
            "timing_s/old_log_prob",
            "timing_s/update_actor",
            "timing_s/update_weights",
        ):
            assert key in metrics, f"step {step} lacks {key}"
        assert metrics["response_length/mean"] >= 1
        # The server's log-probs are those the actor recomputes, so its weights were synced after each update.
        assert metrics["training/rollout_probs_diff_max"] < 1e-4, (
            step,
            metrics["training/rollout_probs_diff_max"],
        )
    assert any(metrics["actor/grad_norm"] > 0 for metrics in steps.values()), "the actor never got a gradient"
