"""A generation that fails mid-run costs POISE its rollout, never the run (issue 33, item 1).

verl keeps a prompt group whose other agent-loop sessions failed with the rollouts that did finish: a request the
server could not serve (the session raises; verl marks the group failed and, under the sync trainer, still trains
what finished), or a session with no output (verl's "Empty output"; the group finishes one rollout short). POISE
used to stop the whole run on such a group (``group uid=... has 1 rollout(s)``). Now a rollout left without a
sibling gets advantage 0 and stays out of the replay buffer; ``poise/lone_rollouts`` counts them and the log says
it once. The fault comes from an agent loop plugged in through verl's own agent-loop config
(``flaky_agent_loop.py``): the second rollout of one prompt fails in every training step. Two launches: the sync
trainer, whose steps each lose exactly one rollout, and the colocated asynchronous trainer.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from e2e_runner import assert_finite, run_main
from flaky_agent_loop import overrides

from poise_verl.verl_ext.feature_dump import load_step_dumps

pytestmark = [pytest.mark.slow(launches=2), pytest.mark.timeout(1500)]

COMMON = ["trainer.val_before_train=false", "trainer.test_freq=-1", "trainer.save_freq=-1"]
ANNOUNCED = "came without a sibling"
KEYS = ["actor/pg_loss", "training/adv_std", "poise/lone_rollouts", "poise/buffer_rows"]


def _env() -> dict[str, str]:
    """Ray's workers import the agent loop from this folder (a local Ray cluster inherits the driver's env)."""
    here = str(Path(__file__).resolve().parent)
    return {"PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}


def _failures(log: str) -> dict[int, str]:
    return {int(step): how for step, how in re.findall(r"flaky agent loop: step (\d+) (raised|returned nothing)", log)}


def test_the_sync_trainer_trains_on_when_a_rollout_of_a_prompt_fails(tmp_path):
    dump = tmp_path / "dump"
    run = run_main(["algo=poise", "trainer.total_training_steps=3", f"poise.feature_dump_dir={dump}", *COMMON,
                    *overrides(tmp_path)], tmp_path, env=_env())
    assert run.returncode == 0, run.log[-4000:]
    failures = _failures(run.log)
    assert failures == {1: "raised", 2: "returned nothing", 3: "raised"}, failures
    assert "injected generation failure (step 1)" in run.log  # verl logged the session's error and carried on
    assert run.log.count(ANNOUNCED) == 1
    metrics = run.metrics()
    for step in (1, 2, 3):
        assert_finite(metrics[step], KEYS)
        assert metrics[step]["poise/lone_rollouts"] == 1.0, (step, metrics[step]["poise/lone_rollouts"])
        # 16 rollouts a step, less the one that failed (verl pads the batch back to 16 with a padding row) and the
        # lone one it left: 14 paired rows reach the buffer each step.
        assert metrics[step]["poise/buffer_rows"] == step * 14
    assert metrics[3]["poise/phase_probe"] > 0.0  # past the bootstrap, the probe baselines the paired rows

    steps = load_step_dumps(dump)
    for step, record in steps.items():
        lone = record["lone"]
        assert int(lone.sum()) == 1, step
        row = int(lone.nonzero()[0, 0])
        assert not bool(record["valid"][row])  # out of the probe's rows and of every group
        assert torch.count_nonzero(record["advantages"][row]) == 0  # no policy gradient
        others = [record["advantages"][i] for i in range(len(lone)) if bool(record["valid"][i])]
        assert len(others) == 14 and any(torch.count_nonzero(a) > 0 for a in others)
        assert sum(1 for uid in record["uids"] if uid == record["uids"][row]) == 1  # its sibling never arrived


def test_the_asynchronous_trainer_trains_on_when_a_rollout_of_a_prompt_fails(tmp_path):
    run = run_main(["algo=poise_async", "trainer.total_training_steps=3", *COMMON, *overrides(tmp_path)],
                   tmp_path, env=_env())
    assert run.returncode == 0, run.log[-4000:]
    failures = _failures(run.log)
    assert {1: "raised", 2: "returned nothing"}.items() <= failures.items(), failures
    metrics = run.metrics()
    for step in (1, 2, 3):
        assert_finite(metrics[step], KEYS)
    # verl's asynchronous buffer drops a failed group whole (step 1's); a group one rollout short trains its lone
    # rollout with advantage 0 in whichever batch it lands (step 2's empty output, generated ahead or not).
    lone = [metrics[step]["poise/lone_rollouts"] for step in (1, 2, 3)]
    assert sum(lone) >= 1 and run.log.count(ANNOUNCED) == 1, lone
