"""The GPU recipe's batch layout through verl's trainer: every row gets its own features, across two ranks.

A GPU run (`+recipe=qwen3_4b`) packs each micro-batch into one row (`use_remove_padding=true`) and sizes
micro-batches by tokens (`use_dynamic_bsz=true`), which reorders the rows into micro-batches of different row
counts and back; with several ranks the batch is also split across them. The CPU default switches all of this
off, so this launch switches it on, with two data-parallel ranks (FSDP on gloo), on the tiny default with
prompts padded by a random number of leading spaces (prompt lengths vary as much as response lengths), a token
budget of a few rows per micro-batch on each rank, and `poise.feature_dump_dir`, which writes each step's rows as
`PoiseTrainer._read_rollouts` read them. (A single rank runs the same code on one share: a launch of its own
added nothing the two-rank one does not check, at a third of this module's time.)

For every row of the first step (the shipped weights, before any update) the pooled prompt and response
states and the entropy statistics equal a plain transformers forward of that row's own tokens
(`capture_reference.py`, no verl, no packing); every uid has its two rows with the same prompt, and the
advantages verl's stage wrote pair each row with its sibling. The launch also carries the check that a step's
baselines come from probes fitted on earlier steps only (the advantages are fixed before the probes see the batch),
and logs to wandb in offline mode next to the metrics file.

Ulysses sequence parallelism is not among them: verl 0.9.1 makes its attention sequence-parallel by patching
flash-attention only, which does not run on a CPU; under sdpa each rank attends within its own slice, which the
start-up checks refuse (docs/FIDELITY.md, "Different on purpose").
"""

from __future__ import annotations

import random

import pandas as pd
import pytest
import torch
from capture_reference import reference_features
from e2e_runner import composed_config, run_main, wandb_history
from step_dumps import assert_rows_pair_with_their_siblings, replay_probe_predictions

from poise_verl.verl_ext.feature_dump import load_step_dumps

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

# Tokens per micro-batch, per rank: a tiny row is 15-40 tokens (about 26 on average), so a rank's 8 or 16 rows
# fill 3 or 5-6 micro-batches, a count that does not divide the rows: the micro-batches differ in row count.
TOKENS = 90
LAYOUT = [
    "actor_rollout_ref.model.use_remove_padding=true",
    "actor_rollout_ref.actor.use_dynamic_bsz=true",
    f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu={TOKENS}",
    "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true",
    f"actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu={TOKENS}",
    "actor_rollout_ref.ref.log_prob_use_dynamic_bsz=true",
    f"actor_rollout_ref.ref.log_prob_max_token_len_per_gpu={TOKENS}",
    "trainer.val_before_train=false",
    "trainer.test_freq=-1",
    "trainer.save_freq=-1",
]
RANKS = ["trainer.n_gpus_per_node=2", "ray_kwargs.ray_init.num_gpus=2"]
STEPS = 3
FEATURE_TOLERANCE = 1e-5  # float32 on both sides; the pooled states are O(1) (mean |x| about 2)


@pytest.fixture(scope="module")
def spaced_data(tiny_assets, tmp_path_factory):
    """The tiny training prompts, every other one behind 1-8 leading spaces (a token each): prompts of 6 to 15
    tokens. The policy never saw spaces and gets almost every spaced prompt wrong; the unspaced half keeps the
    rewards varied, so the probe has something to fit."""
    frame = pd.read_parquet(tiny_assets / "data" / "train.parquet").head(4096).copy()
    rng = random.Random(0)
    frame["prompt"] = [
        [{**message, "content": " " * (rng.randint(1, 8) if row % 2 else 0) + message["content"]}
         for message in messages]
        for row, messages in enumerate(frame["prompt"])
    ]
    path = tmp_path_factory.mktemp("layout_data") / "spaced.parquet"
    frame.to_parquet(path)
    return path


@pytest.fixture(scope="module")
def launch(spaced_data, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two_ranks")
    dump = workdir / "dump"
    run = run_main(
        [
            *LAYOUT,
            *RANKS,
            f"trainer.total_training_steps={STEPS}",
            f"data.train_files={spaced_data}",
            f"poise.feature_dump_dir={dump}",
            "trainer.logger=[console,file,wandb]",
        ],
        workdir,
        timeout=900,
        env={"WANDB_DIR": str(workdir)},
    )
    assert run.returncode == 0, run.log[-4000:]
    return composed_config(workdir), load_step_dumps(dump), run


@pytest.fixture(scope="module")
def policy(tiny_assets):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_assets / "model", dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_assets / "model")


def test_every_row_gets_the_features_of_its_own_tokens(launch, policy):
    config, steps, _ = launch
    model, tokenizer = policy
    think = tokenizer.convert_tokens_to_ids(config.poise.end_of_thinking_token)
    record = steps[1]  # the old-log-prob pass of step 1 runs the shipped weights
    assert list(record["entropy_feature_names"]) == [
        "entropy_mean", "entropy_reasoning_mean", "entropy_answer_mean"
    ]
    prompt_lengths = {len(ids) for ids in record["prompt_ids"]}
    response_lengths = {len(ids) for ids in record["response_ids"]}
    assert len(prompt_lengths) >= 4 and len(response_lengths) >= 3, (prompt_lengths, response_lengths)
    assert any(think in ids.tolist() for ids in record["response_ids"])  # the </think> cut is exercised
    worst = dict.fromkeys(("prompt", "response", "entropy"), 0.0)
    for row, (prompt_ids, response_ids) in enumerate(zip(record["prompt_ids"], record["response_ids"], strict=True)):
        expected = reference_features(
            model, prompt_ids, response_ids, int(config.poise.probe_layer), int(config.poise.pool_last_k), think,
            float(config.actor_rollout_ref.rollout.temperature),
        )
        for part, got in (
            ("prompt", record["prompt_features"][row]),
            ("response", record["response_features"][row]),
            ("entropy", record["entropy_features"][row]),
        ):
            worst[part] = max(worst[part], float((getattr(expected, part) - got).abs().max()))
    assert max(worst.values()) < FEATURE_TOLERANCE, worst


def test_the_layout_spans_micro_batches_of_different_row_counts(launch):
    """verl's own split of each rank's rows at this token budget: several micro-batches, rows reordered."""
    from tensordict import TensorDict
    from verl.utils.seqlen_balancing import rearrange_micro_batches

    config, steps, _ = launch
    ranks = int(config.trainer.n_gpus_per_node)
    assert ranks == 2
    record = steps[1]
    lengths = [len(p) + len(r) for p, r in zip(record["prompt_ids"], record["response_ids"], strict=True)]
    per_rank = len(lengths) // ranks  # verl's dispatch gives each rank a contiguous share of the batch
    for rank in range(ranks):
        ids = [torch.zeros(n, dtype=torch.long) for n in lengths[rank * per_rank : (rank + 1) * per_rank]]
        rows = TensorDict({"input_ids": torch.nested.as_nested_tensor(ids, layout=torch.jagged)}, batch_size=len(ids))
        _, order = rearrange_micro_batches(rows, max_token_len=TOKENS)
        sizes = [len(indices) for indices in order]
        assert len(sizes) >= 3 and len(set(sizes)) >= 2, (rank, sizes)
        assert [i for indices in order for i in indices] != list(range(len(ids))), (rank, order)


def test_rows_are_matched_to_their_uid_and_sibling(launch):
    config, steps, _ = launch
    assert_rows_pair_with_their_siblings(config, steps)
    # After the bootstrap step the probe baselines every row.
    assert all(bool(record["from_probe"][record["valid"]].all()) for step, record in steps.items() if step > 1)


def test_each_steps_predictions_come_from_probes_fitted_on_earlier_steps_only(launch):
    """Step t's predictions equal a probe refit, offline, on the replay buffer as it stood after step t - 1:
    the probes had not seen step t's rewards when its advantages were fixed. A probe that had (the refit moved
    ahead of the prediction) predicts measurably differently, which the second comparison shows."""
    config, steps, _ = launch
    compared, largest_peeking_difference = replay_probe_predictions(config, steps)
    assert compared == STEPS - 1  # every step after the first had a fitted probe
    # The comparison can tell the two orders apart: a probe that had seen the step predicts measurably otherwise.
    assert largest_peeking_difference > 1e-3, largest_peeking_difference


def test_wandb_holds_the_metrics_the_metrics_file_holds(launch):
    """`trainer.logger=[console,file,wandb]` with `WANDB_MODE=offline` (as the README says it works without a
    network) writes an offline run with the same POISE metrics as the metrics file."""
    _, _, run = launch
    (wandb_run,) = (run.checkpoint_dir.parent / "wandb").glob("offline-run-*")
    logged, metrics = wandb_history(wandb_run), run.metrics()
    for step in range(2, STEPS + 1):
        for key in ("poise/probe_pearson", "poise/buffer_rows", "poise/phase_probe"):
            assert logged[step][key] == pytest.approx(metrics[step][key]), (step, key)
