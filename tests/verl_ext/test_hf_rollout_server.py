"""The hf rollout server: batched generation equals one-by-one generation, log-probs equal a forward pass.

The server class is exercised directly (no Ray): it is a plain class whose methods Ray would call. It needs
no verl platform, so this process keeps whatever platform verl detects.
"""

from __future__ import annotations

import asyncio
import selectors
import threading

import pytest
import torch
from verl.workers.rollout.replica import RolloutMode

import poise_verl.verl_ext.cpu  # noqa: F401  (registers platform and rollout)
from poise_verl.verl_ext.cpu.hf_server import HFRolloutServer


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


class _JumpingSelector(selectors.DefaultSelector):
    """Waits for real only on file descriptors (a worker thread finishing); a wait for a timer instead moves the
    loop's virtual clock to that timer."""

    def __init__(self, loop: VirtualClockLoop):
        super().__init__()
        self.loop = loop

    def select(self, timeout=None):
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # nothing scheduled: a thread (asyncio.to_thread) will wake the loop
            return super().select(None)
        self.loop.virtual_now += timeout
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop on a virtual clock: ``asyncio.sleep`` takes no wall time and sleepers wake in the exact order
    of their deadlines, however busy the machine is. The server's batcher also reads ``time.monotonic`` (its
    longest wait, ``max_batch_delay_s``); the tests below set that far beyond anything they wait."""

    def __init__(self):
        self.virtual_now = 0.0
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self.virtual_now


def _run_on_virtual_clock(coroutine):
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        return runner.run(coroutine)


# Gaps and quiet periods in binary fractions of a second, so no two virtual deadlines tie or round.
GAP_S = 2**-6  # 15.6 ms between requests


def _staggered_batches(tiny_task, arrivals: list[float], quiet_s: float) -> tuple[list[int], list]:
    """Batch sizes of the server's generate calls for greedy requests arriving at the given (virtual) times."""
    server = make_server(tiny_task)
    server.batch_wait_s = quiet_s
    server.max_batch_delay_s = 3600.0  # the cap on one batch's wait is not what these tests are about
    batch_sizes = []
    generate_batch = server.generate_batch

    def counting_generate_batch(prompts, *args):
        batch_sizes.append(len(prompts))
        return generate_batch(prompts, *args)

    server.generate_batch = counting_generate_batch
    greedy = {"temperature": 0.0, "max_tokens": 4}
    prompts = (PROMPTS * 4)[: len(arrivals)]

    async def arriving(i, at, prompt):
        await asyncio.sleep(at)
        return await server.generate(prompt, dict(greedy), request_id=str(i))

    async def run():
        return await asyncio.gather(*(arriving(i, at, p) for i, (at, p) in enumerate(zip(arrivals, prompts))))

    outputs = _run_on_virtual_clock(run())
    assert all(1 <= len(output.token_ids) <= 4 for output in outputs)
    return batch_sizes, outputs


def test_requests_that_keep_arriving_join_one_batch(tiny_task):
    """verl's agent loop sends a step's requests one after another: they share a generate call as long as the
    next one arrives within the server's quiet period, however long they keep coming. 15 requests a gap apart
    span 14 gaps, more than five quiet periods of 2.5 gaps (timings as a benchmark:
    ``python -m benchmarks.hf_batching``)."""
    arrivals = [i * GAP_S for i in range(15)]
    batch_sizes, _ = _staggered_batches(tiny_task, arrivals, quiet_s=2.5 * GAP_S)
    assert batch_sizes == [15]


def test_a_pause_longer_than_the_quiet_period_starts_a_new_batch(tiny_task):
    """The other side of the same rule: requests a gap apart, then a pause of 4 quiet periods, then more."""
    quiet = 2.5 * GAP_S
    arrivals = [i * GAP_S for i in range(5)] + [4 * GAP_S + 4 * quiet + i * GAP_S for i in range(7)]
    batch_sizes, _ = _staggered_batches(tiny_task, arrivals, quiet_s=quiet)
    assert batch_sizes == [5, 7]


class _SetAfter(threading.Event):
    """An abort that lands after ``calls`` checks: the server's generate checks its abort once per token, so the
    responses stop a known number of tokens in, with no race against a thread."""

    def __init__(self, calls: int):
        super().__init__()
        self.remaining = calls

    def is_set(self) -> bool:
        self.remaining -= 1
        return self.remaining < 0 or super().is_set()


def test_abort_returns_partial_responses_and_resume_continues_them(tiny_task):
    """Partial rollout, as verl's asynchronous trainers drive it: an abort ends the running generate with each
    unfinished response as far as it got ("aborted"); new requests wait until resume_generation (or are refused
    under reject_request); resumed from prompt + partial tokens, greedy decoding gives the uninterrupted response."""
    greedy = {"temperature": 0.0, "max_tokens": 10, "logprobs": True}
    prompt = [5, 10, 6, 24]
    server = make_server(tiny_task, ignore_eos=True)  # every response runs to its budget: none ends on its own

    async def run():
        whole = await server.generate(prompt, dict(greedy), request_id="whole")
        server._abort = _SetAfter(3)  # the abort arrives during the 4th token
        cut = await server.generate(prompt, dict(greedy), request_id="cut")
        server._abort = threading.Event()
        await server.abort_all_requests()
        waiting = asyncio.ensure_future(
            server.generate(prompt + cut.token_ids, {**greedy, "max_tokens": 10 - len(cut.token_ids)}, request_id="r")
        )
        await asyncio.sleep(0.05)
        await server.finish_weight_update(global_steps=7)  # the update the pause was for
        await server.resume_generation()
        rest = await waiting
        await server.abort_all_requests(reject_request=True)
        refused = await server.generate(prompt, dict(greedy), request_id="refused")
        await server.resume_generation()
        return whole, cut, rest, refused

    whole, cut, rest, refused = asyncio.run(run())
    assert whole.stop_reason == "completed" and len(whole.token_ids) == 10
    assert cut.stop_reason == "aborted" and 1 <= len(cut.token_ids) < 10
    assert cut.token_ids == whole.token_ids[: len(cut.token_ids)]
    # Sent while generation was paused, it ran after the weight update, with the new version.
    assert (cut.extra_fields["global_steps"], rest.extra_fields["global_steps"]) == (None, 7)
    assert rest.stop_reason == "completed"
    assert cut.token_ids + rest.token_ids == whole.token_ids
    torch.testing.assert_close(torch.tensor(cut.log_probs + rest.log_probs), torch.tensor(whole.log_probs))
    assert (refused.stop_reason, refused.token_ids) == ("aborted", [])


def test_async_client_resumes_aborted_rollouts_in_batches(tiny_task):
    """Under verl's asynchronous trainers the agent loop talks through verl's ``FullyAsyncLLMServerClient`` (its
    loop resends an aborted request with the tokens so far). ``HFFullyAsyncServerClient`` keeps that loop and
    sends each attempt in one batch per server: every attempt here carries all the prompts at once, and the
    responses cut by an abort, resumed after the weight update, equal the uninterrupted greedy ones.

    Only Ray's hop is replaced: ``_send`` calls the server's ``generate_many`` in this process instead of through
    a Ray actor handle (the client, its batcher, verl's resume loop and the server are the real ones)."""
    from omegaconf import OmegaConf

    from poise_verl.verl_ext.cpu.agent_loop import HFFullyAsyncServerClient

    server = make_server(tiny_task, ignore_eos=True)  # every response runs to its budget: none ends on its own
    attempts: list[list[str]] = []  # stop reasons of each generate_many call

    class InProcessClient(HFFullyAsyncServerClient):
        async def _send(self, prompts):
            outputs = await server.generate_many(prompts)
            attempts.append([output.stop_reason for output in outputs])
            if len(attempts) == 2:  # the cut attempt is back: pause as verl does before a weight update
                server._abort = threading.Event()
                await server.abort_all_requests()
            return outputs

    config = OmegaConf.create({"actor_rollout_ref": {"rollout": {"max_num_seqs": 64, "response_length": 10}}})
    client = InProcessClient(config)
    greedy = {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "logprobs": True}

    def generate_all_through_client():
        return asyncio.gather(
            *(client.generate(str(i), prompt_ids=prompt, sampling_params=dict(greedy)) for i, prompt in enumerate(PROMPTS))
        )

    async def run():
        await server.set_global_steps(6)  # the weights' version the cut rollouts start on
        whole = await generate_all_through_client()
        server._abort = _SetAfter(4)  # the abort arrives during the second attempt's 4th token
        cut = asyncio.ensure_future(generate_all_through_client())
        while len(attempts) < 2:
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.5)  # verl's client waits 1 s, then resends; the paused server holds it
        held = len(attempts)
        await server.finish_weight_update(global_steps=7)
        await server.resume_generation()
        return whole, await cut, held

    whole, cut, held = asyncio.run(run())

    n = len(PROMPTS)
    assert attempts[:2] == [["completed"] * n, ["aborted"] * n], attempts
    assert held == 2, "the resend reached the model while generation was paused"
    assert attempts[2:] == [["completed"] * n], f"the resumed rollouts were not sent in one batch: {attempts}"
    for before, after in zip(whole, cut, strict=True):
        assert len(before.token_ids) == 10 and before.stop_reason == "length"
        assert after.token_ids == before.token_ids and after.stop_reason == "length"
        torch.testing.assert_close(torch.tensor(after.log_probs), torch.tensor(before.log_probs))
        # verl's staleness: the oldest and newest weights a rollout was generated with.
        assert (after.extra_fields["min_global_steps"], after.extra_fields["max_global_steps"]) == (6, 7)
