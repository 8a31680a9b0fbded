"""The reward guard on one sample, without Ray: verl's own ``load_reward_manager`` (what each reward loop
worker calls) builds the manager from the composed config, and its ``run_single`` scores a real DataProto
shaped as verl's agent loop sends it, decoded with the tiny policy's tokenizer.

The end-to-end test (tests/e2e/test_async_trainer.py, its GRPO launch) shows the same message as a run's last
lines; these pin the three cases apart: the function raised, verl's manager raised around it, the function did not
return.
The trainer's own backstop behind an unguarded manager is the one test here that starts Ray: its advantage stage
reads the rewards from verl's TransferQueue, which lives in Ray actors.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

import numpy as np
import pytest
import torch
from e2e_runner import compose_config
from tensordict import TensorDict

from poise_verl.verl_ext.reward_guard import RewardFunctionError


def _manager(tokenizer_dir, *overrides: str):
    from transformers import AutoTokenizer
    from verl.trainer.ppo.reward import load_reward_manager

    config = compose_config(*overrides)
    return load_reward_manager(config, AutoTokenizer.from_pretrained(str(tokenizer_dir)))


def _sample(tokenizer_dir, reward_model: dict):
    """One rollout as verl's agent loop hands it to the reward worker (AgentLoopWorker._compute_score)."""
    from transformers import AutoTokenizer
    from verl import DataProto

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    prompt = torch.tensor([tokenizer.encode("2+2=")])
    response = torch.tensor([tokenizer.encode("4</think>\\boxed{4}")])
    input_ids = torch.cat([prompt, response], dim=1)
    batch = TensorDict(
        {
            "prompts": prompt,
            "responses": response,
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "position_ids": torch.arange(input_ids.shape[1])[None],
        },
        batch_size=1,
    )
    fields = {
        "data_source": ["tiny_arith"],
        "reward_model": [reward_model],
        "extra_info": [{"index": 7, "split": "train"}],
        "raw_prompt": [[{"role": "user", "content": "2+2="}]],
    }
    return DataProto(batch=batch, non_tensor_batch={k: np.array(v, dtype=object) for k, v in fields.items()})


def _score(manager, data):
    return manager.loop.run_until_complete(manager.run_single(data))  # verl's managers keep their own loop


def _reward_file(tmp_path, body: str):
    path = tmp_path / "my_reward.py"
    path.write_text(body)
    return path


@pytest.mark.parametrize(
    ("algo", "manager"), [("poise", "NaiveRewardManager"), ("dapo", "DAPORewardManager")]
)
def test_verl_loads_its_own_manager_behind_the_guard(tiny_assets, algo, manager):
    loaded = _manager(tiny_assets / "model", f"algo={algo}")
    assert type(loaded).__name__ == f"Guarded{manager}"
    assert type(loaded).__mro__[2].__name__ == manager
    result = _score(loaded, _sample(tiny_assets / "model", {"ground_truth": "4"}))
    assert result["reward_score"] == 1.0
    # A wrong answer: DAPO's -1 (its recipe's math_dapo convention, algo=dapo) reaches verl's reward, POISE keeps 0.
    wrong = _score(loaded, _sample(tiny_assets / "model", {"ground_truth": "5"}))
    assert wrong["reward_score"] == {"dapo": -1.0, "poise": 0.0}[algo]


def test_a_raising_function_is_named_with_the_line_and_the_sample(tiny_assets, tmp_path):
    reward = _reward_file(
        tmp_path,
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):\n"
        "    raise ValueError(f'cannot grade {solution_str!r}')\n",
    )
    manager = _manager(tiny_assets / "model", f"reward.custom_reward_function.path={reward}")
    with pytest.raises(RewardFunctionError) as failed:
        _score(manager, _sample(tiny_assets / "model", {"ground_truth": "4"}))
    assert str(failed.value) == (
        f"the reward function compute_score in {reward} raised ValueError: cannot grade '4</think>\\\\boxed{{4}}' "
        f"(at {reward}:2 in compute_score)\n"
        "  sample: data_source='tiny_arith', row extra_info.index=7 (split 'train'), prompt='2+2=', "
        "ground_truth='4', response='4</think>\\\\boxed{4}'"
    )


def test_an_error_in_verls_manager_is_not_blamed_on_the_function(tiny_assets, tmp_path):
    manager = _manager(tiny_assets / "model")
    with pytest.raises(RewardFunctionError) as failed:
        _score(manager, _sample(tiny_assets / "model", {"style": "rule"}))  # no ground_truth key
    message = str(failed.value)
    assert message.startswith("verl's NaiveRewardManager raised KeyError: 'ground_truth' (at ")
    assert (
        "naive.py" in message
        and "while scoring a sample for the reward function compute_score in " in message
    )


HANGING = {
    # An async function is cancelled at reward.timeout.
    "async, never returns": (
        "import asyncio\n\n\n"
        "async def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):\n"
        "    await asyncio.Event().wait()  # never set\n"
    ),
    # verl runs a synchronous function in an executor thread, which cannot be cancelled: the guard stops waiting
    # at reward.timeout and the run ends anyway (the driver then stops Ray). This one returns only once the test
    # has seen the guard's error and opens the FIFO it reads (whichever comes first, the function cannot return
    # before that), so the test process does not wait on the thread at exit.
    "sync, returns when released": (
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):\n"
        "    with open(RELEASE) as fifo:\n"
        "        fifo.read()\n"
        "    return 1.0\n"
    ),
}


@pytest.mark.parametrize("kind", list(HANGING))
@pytest.mark.timeout(300)  # a bound on a hang, not a measurement
def test_a_function_that_hangs_is_stopped_at_reward_timeout(tiny_assets, tmp_path, kind):
    release = tmp_path / "release"
    os.mkfifo(release)
    reward = _reward_file(tmp_path, f"RELEASE = {str(release)!r}\n\n\n" + HANGING[kind])
    manager = _manager(
        tiny_assets / "model", f"reward.custom_reward_function.path={reward}", "reward.timeout=0.5"
    )
    try:
        with pytest.raises(RewardFunctionError) as failed:
            _score(manager, _sample(tiny_assets / "model", {"ground_truth": "4"}))
    finally:
        if kind.startswith("sync"):
            with open(release, "w"):  # waits for the function to open its end, then lets it return
                pass
    assert str(failed.value) == (
        f"the reward function compute_score in {reward} did not return within reward.timeout=0.5 s on one sample "
        "(raise reward.timeout if it is just slow)\n"
        "  sample: data_source='tiny_arith', row extra_info.index=7 (split 'train'), prompt='2+2=', "
        "ground_truth='4', response='4</think>\\\\boxed{4}'"
    )


@pytest.mark.parametrize("score", ["float('nan')", "float('inf')", "None"])
def test_a_non_finite_score_is_named_with_the_sample(tiny_assets, tmp_path, score):
    """In training a NaN would poison every advantage of its group; in validation, the reported accuracy."""
    reward = _reward_file(
        tmp_path,
        "def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):\n"
        f"    return {score}\n",
    )
    manager = _manager(tiny_assets / "model", f"reward.custom_reward_function.path={reward}")
    with pytest.raises(RewardFunctionError) as failed:
        _score(manager, _sample(tiny_assets / "model", {"ground_truth": "4"}))
    assert str(failed.value).startswith(
        f"the reward function compute_score in {reward} returned {eval(score)!r}, not a finite number, on one sample\n"
        "  sample: data_source='tiny_arith', row extra_info.index=7"
    )


@pytest.fixture
def transfer_queue(tiny_assets):
    """A local Ray cluster with verl's TransferQueue in it, as the main job starts them, and the composed config of
    a GRPO run on the tiny task (2 rollouts per prompt)."""
    import ray
    import transfer_queue as tq

    config = compose_config("algo=grpo", "actor_rollout_ref.rollout.n=2")
    ray_dir = tempfile.mkdtemp(prefix="ray")  # under TMPDIR, short: Ray's socket paths
    # TransferQueue's controller and its one storage unit (transfer_queue.backend.SimpleStorage) take a CPU each.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=ray_dir)
    try:
        tq.init(config.transfer_queue)
        yield config
    finally:
        with contextlib.suppress(Exception):
            tq.close()
        ray.shutdown()
        shutil.rmtree(ray_dir, ignore_errors=True)


def _rollouts_in_transfer_queue(partition: str, rewards: list[float]):
    """Rollouts of two prompts ("a", "b") put into TransferQueue as verl's agent loop puts them: keys
    ``uid_session_index``, each reward on the last response token of ``rm_scores``."""
    import transfer_queue as tq
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    keys, fields = [], []
    for i, reward in enumerate(rewards):
        uid = "ab"[i // 2]
        scores = torch.zeros(3)
        scores[-1] = reward
        keys.append(f"{uid}_{i % 2}_0")
        fields.append({"uid": uid, "response_mask": torch.ones(3, dtype=torch.int64), "rm_scores": scores})
    return tq.kv_batch_put(keys=keys, partition_id=partition, fields=list_of_dict_to_tensordict(fields))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_trainers_backstop_names_the_rollout_and_the_function(transfer_queue):
    """Behind a reward manager without the guard (reward.reward_manager.source=register), the trainer itself
    refuses a non-finite reward before it reaches an advantage: verl's advantage stage of the real trainer, built
    from the composed config by its own constructor, on rewards read from a real TransferQueue. (Its workers and
    rollout servers are not started: this stage does not use them.)"""
    import transfer_queue as tq

    from poise_verl.verl_ext.trainer.checked_sync import CheckedSyncTrainer

    trainer = CheckedSyncTrainer(transfer_queue)
    function = transfer_queue.reward.custom_reward_function
    metrics = {}
    batch = trainer._compute_advantage(_rollouts_in_transfer_queue("finite", [1.0, 0.0, 0.0, 1.0]), metrics)
    advantages = tq.kv_batch_get(keys=batch.keys, partition_id="finite", select_fields=["advantages"])
    per_rollout = advantages.to_padded_tensor()["advantages"][:, -1]
    assert per_rollout.tolist() == pytest.approx([0.7071, -0.7071, -0.7071, 0.7071], abs=1e-3)  # GRPO, n=2
    assert metrics["training/adv_std"] == pytest.approx(0.8165, abs=1e-3)

    with pytest.raises(ValueError) as failed:
        trainer._compute_advantage(_rollouts_in_transfer_queue("nan", [1.0, 0.0, float("nan"), 1.0]), {})
    assert str(failed.value) == (
        f"reward of rollout 2 (uid='b') is nan: the reward function {function.name} in {function.path} must "
        "return a finite number"
    )
