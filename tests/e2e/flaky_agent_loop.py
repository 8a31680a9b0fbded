"""A generation that fails, for the tests: verl's single-turn agent loop, whose second rollout of one prompt per
training step fails, on odd steps with an error (a request the server could not serve: verl marks the prompt's
group failed and, under the sync trainer, keeps the rollout that finished), on even steps with no output (verl's
"Empty output": the group finishes with one rollout). Plugged in the way a user plugs an agent loop into verl:
``actor_rollout_ref.rollout.agent.agent_loop_config_path`` names a file listing it, ``default_agent_loop`` picks it.

A stand-in for the fault, not a mock of anything the run does: the rest of the rollout is verl's and the
project's. Each failure is printed, so that a test can count them from the run's log.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop

FAILED_LINE = "flaky agent loop: step {step} {how} uid={uid}"
AGENT_LOOP_FILE = """- name: flaky_single_turn
  _target_: flaky_agent_loop.FlakyAgentLoop
"""
_failed_steps: set[int] = set()  # in each agent-loop worker process


class FlakyAgentLoop(SingleTurnAgentLoop):
    async def run(self, sampling_params, priority: int = 0, **kwargs):
        step = int(kwargs.get("global_steps", 0))
        if int(kwargs.get("session_id", 0)) == 1 and step > 0 and step not in _failed_steps:
            _failed_steps.add(step)
            how = "raised" if step % 2 else "returned nothing"
            print(FAILED_LINE.format(step=step, how=how, uid=kwargs.get("uid")), flush=True)
            if step % 2:
                raise RuntimeError(f"injected generation failure (step {step})")
            return []
        return await super().run(sampling_params, priority=priority, **kwargs)


def overrides(folder) -> list[str]:
    """The Hydra overrides that make a launch use this agent loop (the listing file goes into ``folder``)."""
    listing = folder / "flaky_agent_loop.yaml"
    listing.write_text(AGENT_LOOP_FILE)
    return [
        f"actor_rollout_ref.rollout.agent.agent_loop_config_path={listing}",
        "actor_rollout_ref.rollout.agent.default_agent_loop=flaky_single_turn",
    ]


def flaky_env() -> dict[str, str]:
    """Ray's workers import the agent loop from this folder (a local Ray cluster inherits the driver's env)."""
    here = str(Path(__file__).resolve().parent)
    return {"PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)}


def failures(log: str) -> dict[int, str]:
    """``{step: "raised" | "returned nothing"}``: the failures a launch's log reports."""
    return {int(step): how for step, how in re.findall(r"flaky agent loop: step (\d+) (raised|returned nothing)", log)}
