"""The launch helpers themselves: a launch that lost a port verl had picked is launched once more, by both runners.

verl picks a free port for a worker group's rendezvous and binds it seconds later; the launch running beside it in
the suite can take it meanwhile, and the launch fails at start-up with EADDRINUSE, before any step (a race in
verl, not in the run). The commands here stand in for a launch (no Ray): the first attempt fails as that race
fails, the second trains a step.
"""

from __future__ import annotations

import sys
import uuid

from e2e_runner import Launch, _launched_twice_if_a_port_was_lost, _popen, _run, launch_env, step_line

# First attempt: verl's error when the port is gone. Later attempts: a step. FLAG tells them apart.
ATTEMPT = """
import os, sys
flag = sys.argv[1]
if os.path.exists(flag):
    print("(TaskRunner pid=1) step:1 - actor/pg_loss:0.1")
else:
    open(flag, "w").close()
    print("torch.distributed.DistNetworkError: ... code: -98, name: EADDRINUSE, message: address already in use")
    sys.exit(1)
"""
# Every attempt fails for a reason of its own: no second launch.
BROKEN = "import sys; print('ValueError: a real failure'); sys.exit(1)"


def _start(code: str, tmp_path, *args: str) -> Launch:
    command = [sys.executable, "-c", code, *args]
    env = launch_env(str(tmp_path), POISE_VERL_TEST_LAUNCH=uuid.uuid4().hex)
    process, log_path = _popen(command, tmp_path, env)
    return Launch(process, log_path, tmp_path / "ckpt", env["POISE_VERL_TEST_LAUNCH"], str(tmp_path), command, env)


def test_a_started_launch_that_lost_its_port_is_launched_again(tmp_path):
    launch = _start(ATTEMPT, tmp_path, str(tmp_path / "flag"))
    assert launch.wait_for(step_line(1), 60)
    assert launch.launched_again and launch.process.wait(timeout=60) == 0
    assert sorted(p.name for p in tmp_path.glob("log-*.txt")) == ["log-0.txt", "log-1.txt"]
    assert "EADDRINUSE" not in launch.log()  # the log the test reads is the second attempt's


def test_a_started_launch_that_failed_otherwise_is_not_launched_again(tmp_path):
    launch = _start(BROKEN, tmp_path)
    assert not launch.wait_for(step_line(1), 60)
    assert not launch.launched_again and "a real failure" in launch.log()


def test_a_run_that_lost_its_port_is_launched_again(tmp_path):
    command = [sys.executable, "-c", ATTEMPT, str(tmp_path / "flag")]
    run = _launched_twice_if_a_port_was_lost(
        lambda: _run(command, tmp_path, launch_env(str(tmp_path)), 60, str(tmp_path / "ray")), tmp_path
    )
    assert run.returncode == 0 and "step:1 - " in run.log
