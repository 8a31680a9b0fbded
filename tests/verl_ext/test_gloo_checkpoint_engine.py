"""The gloo checkpoint engine (``checkpoint_engine.backend=gloo``): the weights a rollout worker receives are the
actor's, tensor for tensor, over real gloo collectives on loopback.

verl's ``CheckpointEngineManager`` drives an engine per sync: ``prepare`` on every worker, ``build_topology`` in
the trainer, ``init_process_group`` on every worker, then ``send_weights`` on the actor side and ``receive_weights``
on the rollout side at once, then ``finalize``. The test plays that sequence with three engines (actor rank 0, an
actor rank outside the group, a rollout worker), each side on a thread of its own as the workers are processes of
their own; the end-to-end run through verl's trainer is ``tests/e2e/test_fully_async_trainer.py``.
"""

from __future__ import annotations

import asyncio
import threading

import torch
import verl.checkpoint_engine  # noqa: F401  (registers poise-verl's gloo engine through the entry point)
from verl.checkpoint_engine import CheckpointEngineRegistry

from poise_verl.verl_ext.cpu.gloo_checkpoint_engine import GLOO_BACKEND, GlooCheckpointEngine

BUCKET = 1 << 10  # bytes: smaller than the largest tensor below, so buckets and chunked tensors both occur


def _weights(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "model.embed_tokens.weight": torch.randn(32, 16, generator=generator),  # 2 KiB: chunked over buckets
        "model.layers.0.mlp.up_proj.weight": torch.randn(8, 4, generator=generator).to(torch.bfloat16),
        "model.layers.0.input_layernorm.weight": torch.randn(16, generator=generator),
        "model.norm.weight": torch.randn(16, generator=generator),
        "lm_head.weight": torch.randn(3, 16, generator=generator),
    }


def _run(coroutine_factory):
    """Run an engine's coroutine on a thread with its own event loop, as a worker process would."""
    result: dict = {}

    def target():
        try:
            result["value"] = asyncio.run(coroutine_factory())
        except BaseException as error:  # noqa: BLE001  (re-raised in the test's thread)
            result["error"] = error

    thread = threading.Thread(target=target)
    thread.start()
    return thread, result


def _sync(actor: GlooCheckpointEngine, idle_actor: GlooCheckpointEngine, rollout: GlooCheckpointEngine, weights):
    """One weight update, the way verl's CheckpointEngineManager.update_weights sequences it."""
    metadata = [actor.prepare(), idle_actor.prepare(), rollout.prepare()]
    actor_kwargs, rollout_kwargs = GlooCheckpointEngine.build_topology(2, 1, metadata)
    init = [
        threading.Thread(target=engine.init_process_group, kwargs={k: v[i] for k, v in kwargs.items()})
        for engine, kwargs, i in ((actor, actor_kwargs, 0), (idle_actor, actor_kwargs, 1), (rollout, rollout_kwargs, 0))
    ]
    for thread in init:
        thread.start()
    for thread in init:
        thread.join(timeout=60)

    async def receive():
        return [(name, tensor) async for name, tensor in rollout.receive_weights()]

    drained = []

    def idle_generator():  # producing a weight is collective over the actor group: every rank drains its stream
        for item in weights.items():
            drained.append(item[0])
            yield item

    sender, sent = _run(lambda: actor.send_weights(iter(weights.items())))
    idle, _ = _run(lambda: idle_actor.send_weights(idle_generator()))
    receiver, received = _run(receive)
    for thread in (sender, idle, receiver):
        thread.join(timeout=60)
    for outcome in (sent, received):
        if "error" in outcome:
            raise outcome["error"]
    for engine in (actor, idle_actor, rollout):
        engine.finalize()
    assert drained == list(weights)
    return received["value"]


def test_the_rollout_receives_the_actors_weights_each_in_storage_of_its_own():
    assert CheckpointEngineRegistry.get(GLOO_BACKEND) is GlooCheckpointEngine
    actor = GlooCheckpointEngine(BUCKET, is_master=True)
    idle_actor = GlooCheckpointEngine(BUCKET, is_master=False)
    rollout = GlooCheckpointEngine(BUCKET)
    for seed in (0, 1):  # two syncs on the same engines: each gets a store and a group of its own
        weights = _weights(seed)
        received = dict(_sync(actor, idle_actor, rollout, weights))
        assert list(received) == list(weights)
        for name, tensor in weights.items():
            got = received[name]
            assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
            assert torch.equal(got, tensor), name
            # A copy of its own, not a view into the bucket: the rollout adapter pickles each tensor to its server,
            # and a view would carry (and pickle) the whole bucket with it.
            assert got.untyped_storage().nbytes() == tensor.numel() * tensor.element_size(), name
