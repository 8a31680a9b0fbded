"""The policy-sized critic: starts at the constant baseline, learns a prompt-dependent V(x), counts its cost."""

from __future__ import annotations

import pytest
import torch

from poise_verl.analysis.critic import PromptCritic, predict, select_and_train_critic, train_critic
from poise_verl.analysis.policy import load_policy
from poise_verl.analysis.prompts import encode_prompt, read_prompts


@pytest.fixture(scope="module")
def policy_and_prompts(small_tiny_assets):
    torch.set_num_threads(2)
    model, tokenizer, _ = load_policy(small_tiny_assets / "model")
    rows = read_prompts([small_tiny_assets / "data" / "train.parquet"], limit=24)
    prompts = [encode_prompt(tokenizer, row.messages) for row in rows]
    # A learnable, prompt-dependent value: additions are "easy", everything else "hard".
    targets = [0.9 if "+" in row.messages[0]["content"] else 0.1 for row in rows]
    return model, tokenizer, prompts, targets


def test_untrained_critic_is_the_constant_baseline(policy_and_prompts):
    model, tokenizer, prompts, _ = policy_and_prompts
    critic = PromptCritic(model, initial_value=0.3)
    values = predict(critic, prompts, tokenizer.pad_token_id, batch_size=5)  # several left-padded batches
    torch.testing.assert_close(values, torch.full((len(prompts),), 0.3))
    assert critic.parameter_count() == sum(p.numel() for p in model.base_model.parameters()) + 128 + 1


def test_training_fits_targets_and_counts_compute(policy_and_prompts):
    model, tokenizer, prompts, targets = policy_and_prompts
    before = [p.detach().clone() for p in model.parameters()]
    run = train_critic(model, prompts, targets, tokenizer.pad_token_id, epochs=6, lr=1e-3, batch_size=8)
    assert run.history[-1]["train_mse"] < 0.5 * run.history[0]["train_mse"]
    assert run.tokens == 6 * sum(len(p) for p in prompts)  # real prompt tokens, every epoch
    assert run.flops == 6.0 * run.parameters * run.tokens
    values = predict(run.critic, prompts, tokenizer.pad_token_id)
    easy = [v for v, t in zip(values.tolist(), targets, strict=True) if t > 0.5]
    hard = [v for v, t in zip(values.tolist(), targets, strict=True) if t < 0.5]
    assert sum(easy) / len(easy) > sum(hard) / len(hard) + 0.2
    # The critic is a copy: the policy is untouched.
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_selection_picks_from_the_grid_and_retrains(policy_and_prompts):
    model, tokenizer, prompts, targets = policy_and_prompts
    run, record = select_and_train_critic(
        model, prompts, targets, tokenizer.pad_token_id, epochs=2, learning_rates=[1e-4, 1e-3], batch_size=8
    )
    assert record["lr"] in (1e-4, 1e-3) and 1 <= record["epochs"] <= 2
    assert len(record["grid"]) == 4 and record["validation_prompts"] == 5
    assert run.lr == record["lr"] and run.epochs == record["epochs"]
    assert run.tokens == record["epochs"] * sum(len(p) for p in prompts)  # the final fit uses every prompt
    single, single_record = select_and_train_critic(
        model,
        prompts,
        targets,
        tokenizer.pad_token_id,
        epochs=1,
        learning_rates=[1e-4],
        validation_fraction=0,
    )
    assert single_record["grid"] == [] and single.epochs == 1
