"""Prompt selection keeps the right prompts, through the POISE trainer's own ``_next_train_batch``.

The trainer draws ``candidates_per_prompt`` times the step's prompts from the base trainer, its ``PromptSelector``
scores them with the prompt-only probes, and only the kept ones go to generation. Here the candidates are a batch
built the way verl's ``_fetch_one_gen_batch`` builds one (``tu.get_tensordict`` of the dataloader's dict plus uids),
and the selector runs unchanged on a real Ray actor. Two parts stand in for what needs the whole trainer: the
prompt-only forward of the actor worker group (the selector's feature reader) returns a feature that is just the
candidate's number,
and the probe actor predicts a pass rate chosen per candidate, so the prompts that must be kept are known:
the ``keep - round(share * keep)`` with the largest p(1 - p), plus ``round(share * keep)`` of the others.
"""

from __future__ import annotations

import numpy as np
import pytest
import ray
import torch
from hydra import compose, initialize_config_dir
from verl.utils import tensordict_utils as tu

from poise_verl.config import CONFIG_DIR, PoiseSettings, register_resolvers
from poise_verl.verl_ext.trainer.poise import PoiseSteps
from poise_verl.verl_ext.trainer.selection import PromptSelector

KEEP, CANDIDATES = 8, 16
# Predicted pass rates per candidate: the most informative (p near 1/2) sit at the END of the draw, so keeping
# the first KEEP candidates (an index replaced by arange) or the most confident ones both fail.
PASS_RATES = [0.0, 1.0, 0.02, 0.98, 0.05, 0.95, 0.1, 0.9, 0.3, 0.36, 0.42, 0.47, 0.5, 0.56, 0.61, 0.66]


@ray.remote(num_cpus=0)
class KnownPassRates:
    """Stands in for ``ProbeWorker``'s prompt probes: the pass rate of candidate i is PASS_RATES[i]."""

    def prompt_fitted_domains(self):
        return ["math"]

    def predict_prompts(self, features, domains):
        index = features[:, 0].round().long()
        return torch.tensor(PASS_RATES, dtype=torch.float32)[index], torch.ones(len(domains), dtype=torch.bool)


class CandidateFeatures:
    """Stands in for the actor's prompt-only forward (needs the worker group): candidate i's feature is i."""

    def read(self, raw_prompts, layer, k):
        return torch.tensor([[float(messages[0]["content"].split("#")[1]), 0.0] for messages in raw_prompts])


class Dataloader:
    """What verl's sync trainer gives ``_next_train_batch``: the next prompts as a TensorDict with uids."""

    def _next_train_batch(self, num_prompts=None):
        assert num_prompts == CANDIDATES
        batch = {
            "raw_prompt": np.array(
                [[{"role": "user", "content": f"prompt #{i}"}] for i in range(CANDIDATES)], dtype=object
            ),
            "ability": np.array(["math"] * CANDIDATES, dtype=object),
            "uid": np.array([f"uid-{i}" for i in range(CANDIDATES)], dtype=object),
        }
        return tu.get_tensordict(batch)


class Trainer(PoiseSteps, Dataloader):
    """The POISE trainer's step hooks over the stand-in dataloader (set up by hand: no workers, no Ray actors)."""


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize("share", [0.25, 0.0])
def test_kept_prompts_are_the_most_informative_plus_the_exploration_share(ray_cluster, share):
    register_resolvers()
    overrides = ["poise.selection.mode=probe", f"poise.selection.exploration_share={share}", "data.seed=3"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        config = compose("poise_trainer", overrides=overrides)
    poise = PoiseSettings.from_config(config.poise)
    trainer = Trainer.__new__(Trainer)
    trainer.config, trainer.global_steps, trainer.timing_raw = config, 5, {}
    trainer.selector = PromptSelector(
        poise.selection, probe_worker=KnownPassRates.remote(), feature_reader=CandidateFeatures,
        domain_key=poise.buffer.domain_key, n=2, probe_layer=poise.probe_layer, pool_last_k=poise.pool_last_k,
        seed=int(config.data.seed),
    )
    kept = trainer._next_train_batch(KEEP)
    assert "select" in trainer.timing_raw  # the trainer times the choice

    chosen = [int(uid.split("-")[1]) for uid in kept["uid"]]
    assert len(chosen) == len(set(chosen)) == KEEP
    # The batch carries the chosen candidates' own prompts, not some other rows.
    assert [m[0]["content"] for m in kept["raw_prompt"]] == [f"prompt #{i}" for i in chosen]
    information = {i: p * (1 - p) for i, p in enumerate(PASS_RATES)}
    explore = round(share * KEEP)
    best = sorted(information, key=information.get, reverse=True)[: KEEP - explore]
    assert set(best) <= set(chosen), (chosen, best)
    assert chosen[: KEEP - explore] == best  # the best come first, in order of p(1 - p)
    others = set(chosen) - set(best)
    assert len(others) == explore  # and exactly the exploration share comes from the rest
    assert trainer.selector._kept[f"uid-{chosen[0]}"]["predicted"] == pytest.approx(PASS_RATES[chosen[0]])
