"""The hf rollout server: batched generation equals one-by-one generation, log-probs equal a forward pass.

The server class is exercised directly (no Ray): it is a plain class whose methods Ray would call. It needs
no verl platform, so this process keeps whatever platform verl detects.
"""

from __future__ import annotations

import asyncio

import pytest
import torch
from verl.workers.rollout.replica import RolloutMode

import poise_verl.verl_ext.cpu  # noqa: F401  (registers platform and rollout)
from poise_verl.verl_ext.cpu.hf_rollout import HFRolloutServer


def make_server(tiny_task, **rollout) -> HFRolloutServer:
    from verl.workers.config import HFModelConfig, RolloutConfig

    config = RolloutConfig(
        name="hf",
        prompt_length=16,
        response_length=12,
        tensor_model_parallel_size=1,
        dtype="float32",
        **rollout,
    )
    model_config = HFModelConfig(path=str(tiny_task.model_dir))
    return HFRolloutServer(config, model_config, RolloutMode.HYBRID, replica_rank=0, batch_wait_s=0.02)


PROMPTS = [[5, 10, 6, 24], [7, 14, 13, 24], [4, 4, 20], [9, 8, 7, 6, 5, 24], [12]]


async def generate_all(server, prompts, sampling_params, concurrent: bool):
    calls = [
        lambda p=prompt, i=i: server.generate(p, dict(sampling_params), request_id=str(i))
        for i, prompt in enumerate(prompts)
    ]
    if concurrent:
        return await asyncio.gather(*(call() for call in calls))
    return [await call() for call in calls]


def forward_log_probs(
    model, prompt: list[int], response: list[int], temperature: float = 1.0
) -> torch.Tensor:
    """log p(response_t | prompt, response_<t) from one unpadded forward pass, (len(response),)."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


def test_concurrent_requests_are_batched_and_match_one_by_one_greedy(tiny_task):
    server = make_server(tiny_task)
    batch_sizes = []
    generate_batch = server.generate_batch

    def counting_generate_batch(prompts, *args):
        batch_sizes.append(len(prompts))
        return generate_batch(prompts, *args)

    server.generate_batch = counting_generate_batch
    greedy = {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "logprobs": True}

    async def run():
        together = await generate_all(server, PROMPTS, greedy, concurrent=True)
        alone = await generate_all(server, PROMPTS, greedy, concurrent=False)
        return together, alone

    together, alone = asyncio.run(run())

    assert batch_sizes[0] == len(PROMPTS), f"concurrent requests were not batched: {batch_sizes}"
    assert batch_sizes[1:] == [1] * len(PROMPTS)
    for batched, single, prompt in zip(together, alone, PROMPTS, strict=True):
        assert batched.token_ids == single.token_ids
        assert 1 <= len(batched.token_ids) <= 12
        assert len(batched.log_probs) == len(batched.token_ids)
        expected = forward_log_probs(server.model, prompt, batched.token_ids)
        torch.testing.assert_close(torch.tensor(batched.log_probs), expected, atol=1e-4, rtol=0)


def test_sampled_log_probs_match_forward_pass_and_stop_at_eos(tiny_task):
    server = make_server(tiny_task)
    eos = server.eos_token_ids[0]
    # A random model spreads probability about evenly over ~30 tokens, so among 20 responses of up to 10
    # tokens some stop at EOS.
    torch.manual_seed(0)
    sampling = {"temperature": 0.7, "top_p": 1.0, "top_k": 0, "logprobs": True, "max_tokens": 10}
    outputs = asyncio.run(generate_all(server, PROMPTS * 4, sampling, concurrent=True))

    for output, prompt in zip(outputs, PROMPTS * 4, strict=True):
        assert 1 <= len(output.token_ids) <= 10
        assert eos not in output.token_ids[:-1], "response must end at the first EOS"
        expected = forward_log_probs(server.model, prompt, output.token_ids, temperature=0.7)
        torch.testing.assert_close(torch.tensor(output.log_probs), expected, atol=1e-4, rtol=0)
    assert any(output.token_ids[-1] == eos for output in outputs), "no response stopped at EOS"


def test_log_probs_only_when_requested_and_weights_load(tiny_task):
    server = make_server(tiny_task)

    async def run():
        plain = await server.generate([5, 10, 6, 24], {"temperature": 1.0, "max_tokens": 4}, request_id="a")
        zeros = [(name, torch.zeros_like(tensor)) for name, tensor in server.model.state_dict().items()]
        await server.load_weights(zeros)
        await server.finish_weight_update(global_steps=3)
        after = await server.generate([5, 10, 6, 24], {"temperature": 0.0, "max_tokens": 4}, request_id="b")
        return plain, after

    plain, after = asyncio.run(run())
    assert plain.log_probs is None
    assert after.extra_fields["global_steps"] == 3
    assert all(float(tensor.abs().sum()) == 0.0 for tensor in server.model.state_dict().values())

    with pytest.raises(KeyError):
        asyncio.run(server.load_weights([("no.such.weight", torch.zeros(1))]))


def test_requests_that_keep_arriving_join_one_batch(tiny_task):
    """verl's agent loop sends a step's requests one after another: they share a generate call as long as the
    next one arrives within the server's quiet period, however long they keep coming."""
    server = make_server(tiny_task)
    server.batch_wait_s = 0.05  # quiet period: five times the gap between requests, a third of their spread
    batch_sizes = []
    generate_batch = server.generate_batch

    def counting_generate_batch(prompts, *args):
        batch_sizes.append(len(prompts))
        return generate_batch(prompts, *args)

    server.generate_batch = counting_generate_batch
    greedy = {"temperature": 0.0, "max_tokens": 4}

    async def staggered(i, prompt):
        await asyncio.sleep(0.01 * i)
        return await server.generate(prompt, dict(greedy), request_id=str(i))

    async def run():
        return await asyncio.gather(*(staggered(i, prompt) for i, prompt in enumerate(PROMPTS * 3)))

    outputs = asyncio.run(run())
    assert batch_sizes == [len(PROMPTS) * 3]
    assert all(1 <= len(output.token_ids) <= 4 for output in outputs)
