"""The budget is the knob users turn, and every budget the tiny default accepts starts (issue 11, item 4).

``budget.rollouts_per_step=32`` stopped with "log_prob_micro_batch_size_per_gpu=64 does not divide the 32
rollouts per rank": the micro-batch sizes were fixed at 64. They now follow the budget
(``${poise_micro_batch:...}`` in hydra_configs/poise_trainer.yaml); a size set by hand is still checked. These
tests run the start-up checks `python -m poise_verl.main` runs before Ray (poise-verl's ``validate`` and verl's
``validate_config``) on the composed config; tests/e2e/test_main_cpu.py trains at 32 end to end.
"""

from __future__ import annotations

import pytest
from e2e_runner import compose_config

from poise_verl.startup.rules import validate

MAX_BUDGET = 1024


def _start_up_checks(config) -> None:
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    validate(config)
    validate_config(
        config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config)
    )


@pytest.mark.parametrize("algo", ["poise", "dapo", "grpo"])
def test_every_multiple_of_n_passes_the_start_up_checks(algo):
    # Unresolved: every read follows the interpolations from budget.rollouts_per_step, as a launch resolves them.
    config = compose_config(f"algo={algo}", resolve=False)
    n = int(config.actor_rollout_ref.rollout.n)
    for budget in range(n, MAX_BUDGET + 1, n):
        config.budget.rollouts_per_step = budget
        _start_up_checks(config)
        sizes = {
            "actor": config.actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu,
            "ref": config.actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu,
            "rollout": config.actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu,
        }
        assert all(budget % size == 0 and size <= 64 for size in sizes.values()), (budget, sizes)
        if budget % 64 == 0:
            assert set(sizes.values()) == {64}, (budget, sizes)  # the tiny default's 128 keeps its 64


def test_a_budget_that_is_not_a_multiple_of_n_says_so():
    with pytest.raises(
        Exception, match=r"budget.rollouts_per_step=33 is not a multiple of actor_rollout_ref.rollout.n=2"
    ):
        compose_config("budget.rollouts_per_step=33")


def test_a_hand_set_micro_batch_that_does_not_divide_names_the_key_and_divisors():
    config = compose_config(
        "budget.rollouts_per_step=48", "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=32"
    )
    with pytest.raises(ValueError) as refused:
        validate(config)
    assert str(refused.value).startswith(
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=32 does not divide the 48 rollouts per rank "
        "(budget.rollouts_per_step=48, n=2, 1 rank(s)): set it to a divisor such as 48, 24, 16, 12, or drop the "
        "override (the default follows the budget)"
    )


def test_micro_batches_follow_the_ranks():
    config = compose_config("budget.rollouts_per_step=96", "trainer.n_gpus_per_node=2", resolve=True)
    assert config.actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu == 48
    with pytest.raises(Exception, match=r"do not split evenly over 4 rank\(s\)"):
        compose_config("budget.rollouts_per_step=98", "trainer.n_gpus_per_node=4")


@pytest.mark.parametrize(
    "switch, key",
    [
        ("actor_rollout_ref.actor.use_dynamic_bsz", "actor_rollout_ref.actor.ppo_max_token_len_per_gpu"),
        ("actor_rollout_ref.rollout.log_prob_use_dynamic_bsz",
         "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu"),
        ("actor_rollout_ref.ref.log_prob_use_dynamic_bsz", "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu"),
    ],
)
def test_a_token_budget_shorter_than_a_row_is_refused_before_the_run(switch, key):
    """verl asserts mid-run when a row outgrows the micro-batch token budget: at the first long response, or the
    first 128-token row it adds to pad a batch (a failed generation is enough). Refused at start instead."""
    longest = ["data.max_prompt_length=64", "data.max_response_length=200"]
    with pytest.raises(ValueError) as refused:
        validate(compose_config(f"{switch}=true", f"{key}=263", *longest))
    assert str(refused.value) == (
        f"{key}=263 tokens is less than the longest row verl may put in one micro-batch (264: "
        "data.max_prompt_length + data.max_response_length = 264, and verl's padding rows are 128 tokens) with "
        f"{switch}=true: set it to at least 264"
    )
    validate(compose_config(f"{switch}=true", f"{key}=264", *longest))
    # The tiny default's rows are 40 tokens at most; verl's padding rows still need 128.
    with pytest.raises(ValueError, match=r"=127 tokens is less than .* \(128: .* = 40, .*set it to at least 128$"):
        validate(compose_config(f"{switch}=true", f"{key}=127"))
    validate(compose_config(f"{switch}=false", f"{key}=127"))  # no dynamic batch sizes: the budget is unused
