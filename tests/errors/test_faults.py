"""Faults beyond bad input (issue 11, item 5) and the budget users change (item 4), in two launches.

1. A run at ``budget.rollouts_per_step=32`` with the default micro-batch sizes (they follow the budget; fixed
   at 64 they refused it) saves a checkpoint at step 2 and is SIGKILLed in the middle of writing the one at
   step 4. The kill point is made certain, with no clock: ``global_step_4/data.pt`` is a FIFO, so the trainer
   blocks opening it after it wrote POISE's state and the actor, before verl's tracker file
   (``latest_checkpointed_iteration.txt``, written last) moves past step 2.
2. The same command again resumes from step 2 (actor, probe, replay buffer), overwrites the torn step-4
   folder and saves it whole; then Ctrl-C (SIGINT to its process group, as a terminal sends it) stops the run
   and every process it started, and the last line says where the same command resumes.
"""

from __future__ import annotations

import os
import re
import signal

import psutil
import pytest
from e2e_runner import SMALL_DEFAULT_MICRO_BATCHES, last_lines, start_main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

RUN = [
    "budget.rollouts_per_step=32",
    "trainer.save_freq=2",
    "trainer.test_freq=-1",
    "trainer.val_before_train=false",
]
# Generous for a loaded 2-core machine: a bound on behaviour, not a benchmark.
STOP_BOUND_S = 90
STEP_BOUND_S = 900


def _step(n: int) -> str:
    """verl's console line of training step N ("step:N - ..."; not "global_step:N")."""
    return rf"(?<![\w/])step:{n} - "


def _tracker(checkpoint_dir) -> str | None:
    path = checkpoint_dir / "latest_checkpointed_iteration.txt"
    return path.read_text().strip() if path.exists() else None


def test_kill_mid_checkpoint_resumes_from_the_previous_one_and_ctrl_c_stops_everything(tiny_assets, tmp_path):
    checkpoint_dir = tmp_path / "ckpt"
    torn = checkpoint_dir / "global_step_4"
    torn.mkdir(parents=True)
    os.mkfifo(torn / "data.pt")  # the trainer blocks here, mid-way through writing checkpoint 4

    first = start_main([*RUN, "trainer.total_training_steps=4"], tmp_path, small=SMALL_DEFAULT_MICRO_BATCHES)
    try:
        written = first.wait_for(_step(2), STEP_BOUND_S) and first.wait_for(
            r"Saving checkpoint to .*global_step_4", STEP_BOUND_S
        )
        assert written, last_lines(first.log(), 40)
        # The actor's files of step 4 are written (the same names as step 2's) before data.pt is opened.
        actor_files = {p.name for p in (checkpoint_dir / "global_step_2" / "actor").iterdir()}
        actor_written = first.wait_until(
            lambda: actor_files <= {p.name for p in (torn / "actor").glob("*")}, STEP_BOUND_S
        )
        assert actor_written, last_lines(first.log(), 40)
        assert (torn / "poise_state.pt").exists()
        assert _tracker(checkpoint_dir) == "2", "the kill must land before the tracker moves to step 4"
        os.killpg(first.process.pid, signal.SIGKILL)
        first.finish(STOP_BOUND_S)  # SIGKILLs any process of the launch outside the group too
    finally:
        first.kill_all()
    assert first.process.returncode == -signal.SIGKILL
    assert _tracker(checkpoint_dir) == "2"
    (torn / "data.pt").unlink()
    (torn / "data.pt").write_bytes(b"torn")  # what a kill mid-write leaves

    # Launched as a script's background job is (SIGINT ignored): Ctrl-C / kill -INT must still stop it.
    second = start_main(
        [*RUN, "trainer.total_training_steps=100"], tmp_path, small=SMALL_DEFAULT_MICRO_BATCHES, sigint_ignored=True
    )
    try:
        resumed = second.wait_for(_step(4), STEP_BOUND_S)
        log = second.log()
        assert resumed, last_lines(log, 40)
        assert re.search(r"Resuming from .*global_step_2\b", log), last_lines(log, 40)
        assert re.search(
            r"Restored POISE state from .*global_step_2/poise_state\.pt \(\d+ buffer rows\)", log
        )
        assert not re.search(_step(1), log), "the resumed run started over"
        rewritten = second.wait_until(lambda: _tracker(checkpoint_dir) == "4", STEP_BOUND_S)
        assert rewritten, "the torn step-4 checkpoint was not rewritten"
        launched = second.processes()
        assert len(launched) > 3, "expected the driver, its Ray cluster and the Ray workers"
        os.killpg(second.process.pid, signal.SIGINT)
        returncode = second.process.wait(timeout=STOP_BOUND_S)
        _, alive = psutil.wait_procs(launched, timeout=STOP_BOUND_S)
        left = {f"{p.pid} {p.name()}" for p in alive} | {f"{p.pid} {p.name()}" for p in second.processes()}
        log = second.log()
    finally:
        second.kill_all()
    assert returncode == 130, last_lines(log, 20)
    assert not left, f"processes of the interrupted run still alive: {sorted(left)}"
    # The signal lands between steps: the run may have saved a later checkpoint than step 4 by then (steps take
    # well under a second here). The hint names the one verl's tracker points at, which is where it resumes.
    latest = _tracker(checkpoint_dir)
    assert int(latest) >= 4
    assert last_lines(log, 1) == (
        "poise-verl: interrupted (Ctrl-C); the run and its Ray processes are stopped; the same command resumes "
        f"from {checkpoint_dir / f'global_step_{latest}'}."
    ), last_lines(log, 10)
