"""A POISE run stopped at step k and resumed from its checkpoint computes what the run that never stopped computes,
step for step: the probes' predictions, which rows the probe baselines, the advantages, the buffer and its fits.

The state machine of a POISE step on the probe side (predict with the probes fitted on earlier steps, fix the
advantages, push the batch into the replay buffer, refit), with POISE's part of a checkpoint (the probes' and the
buffer's ``state_dict``, through ``torch.save`` as the trainer writes it), resumed at every step of a run that
crosses the bootstrap boundary. The rollouts are given (synthetic features and rewards, the same in both runs):
what a resume changes in them on a real run is the rollout server's sampling (tests/e2e/test_main_cpu.py), not
POISE's state. The official verl-recipe port checks the same at steps 8, 15, 16 and 17.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from poise_verl.core.buffer import ProbeReplayBuffer
from poise_verl.core.cross_rollout import cross_rollout_advantages, sibling_targets
from poise_verl.core.domain_probes import DomainProbes
from poise_verl.core.probe import PCARidgeProbe

STEPS, BOOTSTRAP, PROMPTS, HIDDEN = 8, 3, 12, 24
CAPACITY = {"math": 60, "other": 40}  # small: the buffer evicts groups from step 6 on


def _batches() -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(HIDDEN, generator=generator)
    batches = []
    for step in range(1, STEPS + 1):
        prompt = torch.randn(PROMPTS, HIDDEN, generator=generator)
        value = torch.sigmoid(prompt @ direction / 4)
        rows = prompt.repeat_interleave(2, 0)
        rewards = torch.bernoulli(value.repeat_interleave(2), generator=generator)
        batches.append({
            "prompt": rows,
            "response": rows + 0.1 * torch.randn(rows.shape, generator=generator),
            "scalar": torch.rand(2 * PROMPTS, 3, generator=generator),
            "rewards": rewards,
            "uids": np.array([f"s{step}p{i // 2}" for i in range(2 * PROMPTS)], dtype=object),
            "domains": ["math" if (i // 2) % 3 else "other" for i in range(2 * PROMPTS)],
        })
    return batches


def _probe():
    return PCARidgeProbe(prompt_components=4, response_components=4, seed=0, feature_order="official", alpha=1.0)


def _fresh():
    probes = DomainProbes(list(CAPACITY), _probe, min_fit_rows=8)
    return probes, ProbeReplayBuffer(capacity_by_domain=CAPACITY)


def _through_a_checkpoint(probes, buffer):
    """POISE's part of a checkpoint, written and read back as the trainer does, into a newly started run."""
    saved = io.BytesIO()
    torch.save({"probe": probes.state_dict(), "buffer": buffer.state_dict()}, saved)
    saved.seek(0)
    state = torch.load(saved, weights_only=False)
    probes, buffer = _fresh()
    probes.load_state_dict(state["probe"])
    buffer.load_state_dict(state["buffer"])
    return probes, buffer


def _run(stop_after: int | None = None, restore: bool = True) -> list[dict]:
    probes, buffer = _fresh()
    record = []
    for step, batch in enumerate(_batches(), start=1):
        if step - 1 == stop_after:
            probes, buffer = _through_a_checkpoint(probes, buffer) if restore else _fresh()
        predictions, fitted = probes.predict(batch["prompt"], batch["response"], batch["scalar"], batch["domains"])
        from_probe = fitted & (step > BOOTSTRAP)
        inputs = torch.where(from_probe, predictions, batch["rewards"])
        advantages = cross_rollout_advantages(batch["rewards"], inputs, batch["uids"], torch.ones(2 * PROMPTS, 1))
        buffer.add_groups(batch["prompt"], batch["response"], batch["scalar"],
                          sibling_targets(batch["rewards"], batch["uids"]), batch["uids"], batch["domains"])
        probes.refit(buffer.dataset())
        record.append({
            "predictions": predictions, "from_probe": from_probe, "advantages": advantages[:, 0],
            "rows": dict(buffer.num_rows_by_domain), "fit_rows": dict(probes.fit_rows),
            "num_fits": dict(probes.num_fits),
        })
    return record


@pytest.fixture(scope="module")
def uninterrupted():
    return _run()


@pytest.mark.parametrize("stop_after", [1, BOOTSTRAP - 1, BOOTSTRAP, BOOTSTRAP + 1, 6, STEPS - 1])
def test_a_resumed_run_equals_the_uninterrupted_one_step_for_step(uninterrupted, stop_after):
    assert any(bool(step["from_probe"].any()) for step in uninterrupted)  # the probe takes over after the bootstrap
    resumed = _run(stop_after)
    for step, (got, expected) in enumerate(zip(resumed, uninterrupted, strict=True), start=1):
        for key in ("predictions", "from_probe", "advantages"):
            assert torch.equal(got[key], expected[key]), (step, key)
        for key in ("rows", "fit_rows", "num_fits"):
            assert got[key] == expected[key], (step, key)


def test_a_resume_that_loses_the_probe_state_is_caught(uninterrupted):
    resumed = _run(stop_after=BOOTSTRAP + 1, restore=False)
    assert not torch.equal(resumed[BOOTSTRAP + 1]["advantages"], uninterrupted[BOOTSTRAP + 1]["advantages"])
