import pytest

from poise_verl.tiny.reward import compute_score, last_boxed


def test_scores():
    assert compute_score("tiny_arith", "64</think>\\boxed{46}", "46") == 1.0
    assert compute_score("tiny_arith", "64</think>\\boxed{47}", "46") == 0.0
    assert compute_score("tiny_arith", "64</think>46", "46") == 0.0  # no box
    assert compute_score("tiny_arith", "\\boxed{46", "46") == 0.0  # unclosed box
    assert compute_score("tiny_arith", "\\boxed{1}\\boxed{46}", "46") == 1.0  # the last box counts
    assert compute_score("tiny_arith", "\\boxed{46}", 46, extra_info={"index": 3}) == 1.0
    assert last_boxed("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"


@pytest.mark.parametrize("ground_truth", [None, ""])
def test_missing_ground_truth_names_the_row(ground_truth):
    with pytest.raises(ValueError, match=r"tiny_arith.*index=17"):
        compute_score("tiny_arith", "\\boxed{1}", ground_truth, extra_info={"index": 17})


def test_callable_the_way_verl_calls_it():
    """verl's reward managers pass keyword arguments and may add extra ones (e.g. reward_router_address)."""
    score = compute_score(
        data_source="tiny_arith",
        solution_str="\\boxed{3}",
        ground_truth="3",
        extra_info={"index": 0, "num_turns": 2, "rollout_reward_scores": {}},
        reward_router_address=None,
    )
    assert score == 1.0
