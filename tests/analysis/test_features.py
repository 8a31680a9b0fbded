"""Probe features from one packed forward equal per-rollout references pooled in the padded layout
(tests/pooling_reference.py)."""

from __future__ import annotations

import pytest
import torch
from pooling_reference import pool_padded, response_cut_at_last_marker

from poise_verl.analysis.features import check_packed_forward, extract_features
from poise_verl.analysis.policy import load_policy
from poise_verl.core.capture import decoder_layers
from poise_verl.core.entropy import entropy_feature_matrix, entropy_statistics
from poise_verl.reasoning_split import end_of_thinking_ids

RESPONSES = [
    "54</think>\\boxed{45}<|im_end|>",  # the task's format
    "1</think>2</think>\\boxed{21}",  # two end-of-thinking tokens, truncated (no EOS)
    "\\boxed{7}<|im_end|>",  # no end-of-thinking token
    "3<|im_end|>",  # shorter than the 10 pooled tokens
    "",  # empty response
]


@pytest.fixture(scope="module")
def policy(small_tiny_assets):
    torch.set_num_threads(2)
    model, tokenizer, _ = load_policy(small_tiny_assets / "model")
    return model, tokenizer


def _rollouts(tokenizer):
    prompts = [
        tokenizer(f"<|im_start|>{a}+{b}=", add_special_tokens=False)["input_ids"]
        for a, b in ((12, 34), (5, 6), (123, 45), (7, 8), (99, 1))
    ]
    responses = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in RESPONSES]
    return prompts, responses


def _reference(model, prompt, response, layers, think_id, temperature):
    """One rollout alone: capture every layer's output with a plain hook, pool in the padded layout."""
    outputs = {}
    stack = decoder_layers(model)
    handles = [
        stack[layer].register_forward_hook(
            lambda m, a, o, layer=layer: outputs.__setitem__(layer, o[0] if isinstance(o, tuple) else o)
        )
        for layer in layers
    ]
    input_ids = torch.tensor([prompt + response])
    try:
        with torch.no_grad():
            logits = model(input_ids=input_ids).logits[0]
    finally:
        for handle in handles:
            handle.remove()
    # A padded response block is never 0 wide (response_cut_at_last_marker needs T >= 1): an empty
    # response is one masked-out slot.
    response_ids = torch.tensor([response or [0]], dtype=torch.long)
    response_mask = torch.tensor([[1] * len(response) or [0]])
    cut = response_cut_at_last_marker(response_ids, response_mask, think_id)
    pooled = {
        layer: pool_padded(
            outputs[layer].reshape(1, input_ids.shape[1], -1),
            torch.ones_like(input_ids),
            len(prompt),
            10,
            cut,
        )
        for layer in layers
    }
    if response:
        log_probs = torch.log_softmax(logits[len(prompt) - 1 : -1] / temperature, -1)
        entropy = -(log_probs.exp() * log_probs).sum(-1).unsqueeze(0)
    else:
        entropy = torch.zeros(1, 1)
    stats = entropy_statistics(entropy, response_mask, response_ids, think_id)
    return pooled, entropy_feature_matrix(stats)


@pytest.mark.parametrize("token_budget", [1, 40, 10_000])  # one rollout per forward, a few, all at once
def test_packed_features_match_per_rollout_reference(policy, token_budget):
    model, tokenizer = policy
    prompts, responses = _rollouts(tokenizer)
    think_id = end_of_thinking_ids(tokenizer, "</think>")
    layers = list(range(len(decoder_layers(model))))
    features = extract_features(
        model,
        prompts,
        responses,
        layers,
        end_of_thinking_token_id=think_id,
        temperature=0.7,
        token_budget=token_budget,
    )
    assert features.empty_responses == 1
    for i, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        pooled, scalars = _reference(model, prompt, response, layers, think_id, 0.7)
        for layer in layers:
            torch.testing.assert_close(
                features.prompt[layer][i], pooled[layer].prompt[0], atol=1e-5, rtol=1e-5
            )
            torch.testing.assert_close(
                features.response[layer][i], pooled[layer].response[0], atol=1e-5, rtol=1e-5
            )
        torch.testing.assert_close(features.scalars[i], scalars[0], atol=1e-5, rtol=1e-5)
    assert torch.count_nonzero(features.response[0][4]) == 0  # the empty response pools to zeros


def test_response_pool_stops_at_the_last_end_of_thinking_token(policy):
    model, tokenizer = policy
    prompts, responses = _rollouts(tokenizer)
    think_id = end_of_thinking_ids(tokenizer, "</think>")
    cut = extract_features(model, prompts[:2], responses[:2], [1], end_of_thinking_token_id=think_id)
    whole = extract_features(
        model,
        prompts[:2],
        responses[:2],
        [1],
        end_of_thinking_token_id=think_id,
        cut_response_at_end_of_thinking=False,
    )
    assert not torch.allclose(cut.response[1], whole.response[1])
    torch.testing.assert_close(cut.prompt[1], whole.prompt[1])


def test_packed_forward_check_and_token_lookup(policy):
    model, tokenizer = policy
    prompts, responses = _rollouts(tokenizer)
    check_packed_forward(model, prompts, responses)
    assert end_of_thinking_ids(tokenizer, "</think>") == (tokenizer.convert_tokens_to_ids("</think>"),)
    assert end_of_thinking_ids(tokenizer, None) == ()
    with pytest.raises(ValueError, match="outside the model's 4 decoder layers"):
        extract_features(model, prompts, responses, [4])
