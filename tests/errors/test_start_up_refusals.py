"""Every configuration the start-up checks refuse is refused before Ray, with a message naming the key.

``poise_verl.launch.prepare`` resolves and validates the composed config; a refusal is a ``PreflightError``
("stopped before starting Ray"), the same list the data and model checks print, never a traceback. Each case
below composes the real config tree (no Ray, no subprocess) with one bad setting; the last test runs the real
entry point once, as a user would, and reads the last lines it prints.
"""

from __future__ import annotations

import os

import pytest
import ray
import sklearn  # noqa: F401  (sets KMP_* at import)
import verl  # noqa: F401  (sets RAY_CLIENT_MODE, LAZY_LEGACY_OP, ... at import)
from e2e_runner import compose_config, last_lines, run_main

from poise_verl.launch import prepare
from poise_verl.startup import PreflightError

pytestmark = pytest.mark.timeout(600)

# (overrides, what the message must say: the key, and the value or rule where it matters)
REFUSED = {
    # algorithm.* keys verl honours under GRPO that POISE cannot
    "norm_adv_by_std": (["algorithm.norm_adv_by_std_in_grpo=true"], "algorithm.norm_adv_by_std_in_grpo=false"),
    "filter_groups": (["algorithm.filter_groups.enable=true"], "algorithm.filter_groups.enable=false"),
    "bypass_mode": (["algorithm.rollout_correction.bypass_mode=true"], "algorithm.rollout_correction.bypass_mode"),
    # estimator and trainer mode must agree
    "poise_estimator_other_trainer": (
        ["trainer.v1.trainer_mode=checked_sync"], "set trainer.v1.trainer_mode=poise (got 'checked_sync')"
    ),
    "poise_trainer_other_estimator": (
        ["algo=grpo", "trainer.v1.trainer_mode=poise"], "expects algorithm.adv_estimator=poise, got 'grpo'"
    ),
    "one_rollout": (["actor_rollout_ref.rollout.n=1"], "actor_rollout_ref.rollout.n=1"),
    # the poise section: unknown keys, at every level
    "unknown_poise_key": (["+poise.probe_layers=3"], "poise: unknown key(s) ['probe_layers']"),
    "unknown_probe_key": (["+poise.probe.ridge.beta=1"], "poise.probe.ridge: unknown key(s) ['beta']"),
    "unknown_selection_key": (["+poise.selection.top_k=4"], "poise.selection: unknown key(s) ['top_k']"),
    # every range check of poise_verl/config.py
    "probe_layer": (["poise.probe_layer=-1"], "poise.probe_layer must be >= 0, got -1"),
    "pool_last_k": (["poise.pool_last_k=0"], "poise.pool_last_k must be >= 1, got 0"),
    "bootstrap_steps": (["poise.bootstrap_steps=-1"], "poise.bootstrap_steps must be >= 0, got -1"),
    "min_fit_rows": (["poise.min_fit_rows=1"], "poise.min_fit_rows must be >= 2, got 1"),
    "entropy_features": (["poise.entropy_features=[entropy_median]"], "poise.entropy_features: unknown"),
    "entropy_split": (["poise.entropy_split=tags"], "poise.entropy_split='tags': choose one of ['end_of_thinking', "),
    "empty_end_of_thinking": (["poise.end_of_thinking_token=''"], "poise.end_of_thinking_token is empty"),
    "capacity": (["poise.buffer.capacity.math=0"], "poise.buffer.capacity must map domains to positive"),
    "no_other_domain": (["~poise.buffer.capacity.other"], "poise.buffer.capacity must have a row count for 'other'"),
    "probe_name": (["poise.probe.name=svm"], "poise.probe.name='svm'"),
    "feature_order": (["poise.probe.feature_order=pca_last"], "poise.probe.feature_order='pca_last'"),
    "selection_mode": (["poise.selection.mode=best"], "poise.selection.mode='best'"),
    "candidates": (
        ["poise.selection.mode=probe", "poise.selection.candidates_per_prompt=1"],
        "poise.selection.candidates_per_prompt >= 2",
    ),
    "exploration_share": (["poise.selection.exploration_share=1.5"], "poise.selection.exploration_share"),
    "history": (["poise.selection.history.base_skip=0.95"], "poise.selection.history needs 0 <= base_skip"),
    "selection_async": (
        ["algo=poise_async", "poise.selection.mode=probe"], "poise.selection.mode=probe is not built for the asynch"
    ),
    "selection_fully_async": (
        ["algo=poise_fully_async", "poise.selection.mode=history"],
        "poise.selection.mode=history is not built for the asynch",
    ),
    # what verl's fully asynchronous trainer asserts inside Ray
    "fully_async_sync_step": (
        ["algo=poise_fully_async", "trainer.v1.separate_async.parameter_sync_step=2"],
        "must equal trainer.v1.separate_async.parameter_sync_step=2 x actor_rollout_ref.actor.ppo_mini_batch_size=64",
    ),
    "fully_async_no_rollout_devices": (
        ["algo=grpo_fully_async", "actor_rollout_ref.rollout.nnodes=0"], "actor_rollout_ref.rollout.nnodes=0"
    ),
    "fully_async_naive_sync": (
        ["algo=poise_fully_async", "runtime.weight_sync_backend=naive"], "checkpoint_engine.backend=naive"
    ),
    "fully_async_hybrid": (
        ["algo=poise_fully_async", "actor_rollout_ref.hybrid_engine=true"], "actor_rollout_ref.hybrid_engine=true"
    ),
    "fully_async_devices": (
        ["algo=poise_fully_async", "ray_kwargs.ray_init.num_gpus=1"], "set ray_kwargs.ray_init.num_gpus=2"
    ),
    "async_trainer_other_estimator": (
        ["algo=grpo", "trainer.v1.trainer_mode=poise_colocate_async"], "expects algorithm.adv_estimator=poise"
    ),
    "platform": (["runtime.platform=tpu"], "runtime.platform must be 'cpu' or 'gpu', got 'tpu'"),
    "niceness_not_a_number": (["runtime.ray_worker_niceness=low"], "runtime.ray_worker_niceness must be null"),
    "niceness_out_of_range": (["runtime.ray_worker_niceness=25"], "a whole number from -20 to 19 (a Unix niceness), got 25"),
    # sizes that cannot divide, and parallelism the attention cannot honour
    "budget": (["algo=dapo", "budget.rollouts_per_step=100"], "budget.rollouts_per_step=100 is not a multiple"),
    "micro_batch": (
        ["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=48"], "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=48"
    ),
    "sequence_parallel_sdpa": (
        ["actor_rollout_ref.actor.ulysses_sequence_parallel_size=2"], "actor_rollout_ref.actor.ulysses_sequence_parallel_size=2"
    ),
    "token_budget": (
        ["actor_rollout_ref.actor.use_dynamic_bsz=true", "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=90"],
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=90 tokens is less than the longest row",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_refused_setting_stops_before_ray_naming_the_key(case):
    overrides, expected = REFUSED[case]
    # The libraries prepare() imports set variables of their own when first imported; the module imports them
    # above, so what this compares is what prepare() itself would set up for a run.
    environment = dict(os.environ)
    with pytest.raises(PreflightError) as refused:
        prepare(compose_config(*overrides, resolve=False))
    message = str(refused.value)
    assert message.startswith("poise-verl: stopped before starting Ray, 1 problem(s) to fix:"), message
    assert expected in message, message
    assert "Traceback" not in message and "InterpolationResolutionError" not in message
    # Nothing started and nothing was set up for a run: no Ray, the environment untouched.
    assert not ray.is_initialized()
    assert dict(os.environ) == environment


@pytest.mark.parametrize("algo", ["poise", "dapo", "grpo", "poise_fully_async", "grpo_fully_async"])
def test_the_defaults_pass_the_same_checks(algo, monkeypatch):
    """The checks refuse the cases above, not everything: each algorithm's default config passes them."""
    monkeypatch.setattr(os, "environ", dict(os.environ, VERL_FILE_LOGGER_PATH=os.devnull))  # prepare() sets variables
    config = prepare(compose_config(f"algo={algo}", resolve=False))
    assert config.algo_name == algo


def test_the_entry_point_prints_the_refusal_as_its_last_lines(tmp_path):
    run = run_main(["algo=dapo", "budget.rollouts_per_step=100"], tmp_path, timeout=300)
    assert run.returncode != 0
    tail = last_lines(run.log, 2)
    assert tail.splitlines()[0] == "poise-verl: stopped before starting Ray, 1 problem(s) to fix:", tail
    assert "budget.rollouts_per_step=100 is not a multiple of actor_rollout_ref.rollout.n=16" in tail, tail
    assert "Traceback" not in run.log and "InterpolationResolutionError" not in run.log
    assert "Started a local Ray instance" not in run.log


def test_one_rule_for_the_probe_layer_wherever_it_is_checked():
    """The config, the pre-Ray model check and the actor's engine (a hub model's depth is known only there) all
    apply ``probe_layer_problem``: the same bounds and the same advice."""
    from poise_verl.config import probe_layer_problem

    assert probe_layer_problem(0, 1) is None and probe_layer_problem(19, 36) is None and probe_layer_problem(7) is None
    assert probe_layer_problem(-1) == "poise.probe_layer must be >= 0, got -1"
    assert probe_layer_problem(36, 36, "the actor's model") == (
        "poise.probe_layer=36, but the actor's model has 36 decoder layers: choose a layer in 0..35 (the paper "
        "takes one about halfway, e.g. 18)"
    )
