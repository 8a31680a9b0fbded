"""A generation that fails mid-run costs POISE its rollout, never the run; a disk that fills up while a checkpoint is
written stops the run with a message that says so, and loses nothing (issue 33, items 1 and 6).

verl keeps a prompt group whose other agent-loop sessions failed with the rollouts that did finish: a request the
server could not serve (the session raises; verl marks the group failed and, under the sync trainer, still trains
what finished), or a session with no output (verl's "Empty output"; the group finishes one rollout short). POISE
used to stop the whole run on such a group (``group uid=... has 1 rollout(s)``). Now a rollout left without a
sibling gets advantage 0 and stays out of the replay buffer; ``poise/lone_rollouts`` counts them and the log says
it once. The fault comes from an agent loop plugged in through verl's own agent-loop config
(``flaky_agent_loop.py``): the second rollout of one prompt fails in every training step. One launch, on the sync
trainer, whose steps each lose exactly one rollout; test_async_trainer.py runs the same agent loop under the
colocated asynchronous trainer.

The sync launch also saves every step, and its last checkpoint meets a full disk: the actor's weights file of step 4
is a link to ``/dev/full``, where every write fails with ENOSPC as on a full disk (torch reports it as "unexpected
pos"). The run stops naming the folder, the disk and the checkpoint the same command resumes from, which is whole;
the half-written step folder is gone.
"""

from __future__ import annotations

import os
import re

import pytest
import torch
from e2e_runner import assert_finite, composed_config, last_lines, run_main
from flaky_agent_loop import failures, flaky_env, overrides

from poise_verl.preflight import check_resume
from poise_verl.verl_ext.checkpoint_guard import TRACKER_FILE
from poise_verl.verl_ext.feature_dump import load_step_dumps

pytestmark = [pytest.mark.slow(launches=1), pytest.mark.timeout(1500)]

COMMON = ["trainer.val_before_train=false", "trainer.test_freq=-1"]
ANNOUNCED = "came without a sibling"
KEYS = ["actor/pg_loss", "training/adv_std", "poise/lone_rollouts", "poise/buffer_rows"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_the_sync_trainer_trains_on_when_a_rollout_fails_and_stops_cleanly_when_the_disk_is_full(tmp_path):
    dump, checkpoints = tmp_path / "dump", tmp_path / "ckpt"
    full = checkpoints / "global_step_4" / "actor" / "model_world_size_1_rank_0.pt"
    full.parent.mkdir(parents=True)
    full.symlink_to("/dev/full")
    args = ["algo=poise", "trainer.total_training_steps=4", "trainer.save_freq=1", f"poise.feature_dump_dir={dump}",
            *COMMON, *overrides(tmp_path)]
    run = run_main(args, tmp_path, env=flaky_env())
    assert run.returncode == 1, run.log[-4000:]
    assert last_lines(run.log, 1) == (
        f"poise-verl: the run stopped: writing the checkpoint {checkpoints / 'global_step_4'} (step 4) failed: the "
        "disk is full (or over its quota): a file could not be written whole; "
        + re.search(r"whole; (\S+ \S+) free", run.log).group(1)
        + f" free on its file system. Its half-written folder is removed, so nothing resumes from it. The same "
        f"command resumes from {checkpoints / 'global_step_3'}, the last checkpoint written whole "
        f"({checkpoints / TRACKER_FILE} names it). Free space on that disk before launching it again (a new "
        "trainer.default_local_dir would start the run over)."
    ), last_lines(run.log, 6)
    assert not (checkpoints / "global_step_4").exists()
    assert (checkpoints / TRACKER_FILE).read_text() == "3"
    assert check_resume(composed_config(tmp_path), is_poise=True) == []  # the one a resume takes is whole

    failed = failures(run.log)
    assert {1: "raised", 2: "returned nothing", 3: "raised"}.items() <= failed.items(), failed
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
    for step in (1, 2, 3):
        record = steps[step]
        lone = record["lone"]
        assert int(lone.sum()) == 1, step
        row = int(lone.nonzero()[0, 0])
        assert not bool(record["valid"][row])  # out of the probe's rows and of every group
        assert torch.count_nonzero(record["advantages"][row]) == 0  # no policy gradient
        paired = [i for i in range(len(lone)) if bool(record["valid"][i])]
        assert len(paired) == 14
        # The paired rows get their policy gradient as before: reward minus the baseline from the sibling (its
        # probe prediction, or under RLOO its reward) on every response token; 0 only where the two are equal.
        for i in paired:
            (sibling,) = [j for j in paired if j != i and record["uids"][j] == record["uids"][i]]
            baseline = record["predictions" if bool(record["from_probe"][i]) else "rewards"][sibling]
            expected = float(record["rewards"][i]) - float(baseline)
            advantage = record["advantages"][i]
            assert torch.allclose(advantage, torch.full_like(advantage, expected), atol=1e-6), (step, i, expected)
        assert sum(1 for uid in record["uids"] if uid == record["uids"][row]) == 1  # its sibling never arrived
