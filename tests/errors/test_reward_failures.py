"""A reward function that raises ends the run with one message naming it and the sample (issue 11).

Item 1: verl 0.9.1 alone logs the exception once per rollout among thousands of lines and ends about 100 s
later with "Sync replay buffer selected terminal groups with no materializable trajectories". Item 5: a
reward function that never returns leaves its prompt group "running" and verl's trainer waits forever
(measured: "pending: 0, running: 1, finished: 7, failure: 0" logged once a minute, for as long as it was
left). With poise_verl.verl_ext.reward_guard the last lines name the function's file and name, the exception
and its message (or the timeout), and the sample: data source, row index, prompt, ground truth, response.

One launch of the real entry point on the tiny task; it fails in validation before training. A function that
hangs or returns a non-finite score takes the same path from the guard to the driver's last lines (the failure
log, Ray stopped first, the message printed last), so test_reward_guard.py pins those messages on one sample
through verl's own reward manager, without another launch.
"""

from __future__ import annotations

import re

import pytest
from e2e_runner import last_lines, run_main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# Raises on every odd row of the data (validation samples 16 rows, so some are odd).
PICKY_REWARD = """
def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    if extra_info["index"] % 2 == 1:
        raise ValueError(f"cannot grade {solution_str!r}")
    return 0.0
"""


def test_a_reward_function_that_raises_is_named_with_the_sample(tiny_assets, tmp_path):
    reward = tmp_path / "picky_reward.py"
    reward.write_text(PICKY_REWARD)
    run = run_main(
        [
            "trainer.total_training_steps=1",
            "trainer.save_freq=-1",
            f"reward.custom_reward_function.path={reward}",
        ],
        tmp_path,
        timeout=600,
        # As a script's background job starts it: the guard's interrupt of the driver must not depend on an
        # inherited SIGINT handler (with SIGINT ignored it used to do nothing, and the run exited 0).
        sigint_ignored=True,
    )
    assert run.returncode != 0
    tail = last_lines(run.log, 4)
    assert re.search(
        rf"^poise-verl: the run stopped: the reward function compute_score in {re.escape(str(reward))} raised "
        r"ValueError: cannot grade '.*' \(at .*picky_reward\.py:4 in compute_score\)$",
        tail,
        re.MULTILINE,
    ), tail
    sample = re.search(
        r"^  sample: data_source='tiny_arith', row extra_info\.index=(\d+) \(split 'val'\), ",
        tail,
        re.MULTILINE,
    )
    assert sample, tail
    assert int(sample.group(1)) % 2 == 1, "the sample named is not one the function raises on"
    assert re.search(r"prompt='[^']+', ground_truth='\d+', response='", tail), tail
    assert "Fix the function or the data and launch again." in tail
