"""A rollout server backed by transformers ``generate``, registered in verl as rollout ``hf``.

verl 0.9.1's trainer generates only through rollout *servers* (vLLM, SGLang, TensorRT-LLM), none of which
runs on a CPU-only torch build here. This module supplies the three pieces a server backend has in verl,
each registered through verl's own registries (no verl code is copied):

- :class:`~.hf_server.HFRolloutServer` (:mod:`.hf_server`), a Ray actor holding a ``transformers`` causal LM,
  token-in/token-out like vLLM's, that answers concurrent requests with one batched ``generate``.
- :class:`HFReplica`, the :class:`~verl.workers.rollout.replica.RolloutReplica` that launches one server per
  replica (``RolloutReplicaRegistry`` name ``hf``).
- :class:`HFServerAdapter`, the :class:`~verl.workers.rollout.base.BaseRollout` living in each actor worker
  (``get_rollout_class("hf", "async")``). verl's sync trainer calls ``update_weights`` on it after every
  step with the actor's full (un-sharded) tensors; the adapter ships them to its server in buckets over
  Ray's object store, and the server copies them into its model.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import ray
import torch
from verl.workers.config import HFModelConfig, RolloutConfig
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica
from verl.workers.rollout.utils import ensure_async_iterator

from poise_verl.verl_ext.cpu.hf_server import HFRolloutServer, server_actor_name


class HFReplica(RolloutReplica):
    """One :class:`HFRolloutServer` per replica (tensor/pipeline parallel size must be 1)."""

    async def launch_servers(self):
        assert self.world_size == 1, (
            "the hf rollout server runs one model copy per replica: set actor_rollout_ref.rollout."
            "tensor_model_parallel_size=1 (and data/pipeline parallel size 1)"
        )
        if self.is_reward_model:
            role = "reward"
        elif self.is_teacher_model:
            role = "teacher"
        else:
            role = ""
        name = server_actor_name(self.replica_rank, 0, role, self.name_suffix)
        options: dict[str, Any] = {"name": name, "max_concurrency": self.max_concurrency, "num_cpus": 0}
        if self.workers:
            node_id = await self.workers[0].__ray_call__.remote(
                lambda worker: ray.get_runtime_context().get_node_id()
            )
            options["scheduling_strategy"] = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
                node_id=node_id, soft=False
            )
        server = (
            ray.remote(HFRolloutServer)
            .options(**options)
            .remote(
                config=self.config,
                model_config=self.model_config,
                rollout_mode=self.rollout_mode,
                replica_rank=self.replica_rank,
            )
        )
        self.servers = [server]
        self._server_handle = server
        # verl keys its load balancer by address; this server is reached by actor handle only.
        self._server_address = name


class HFServerAdapter(BaseRollout):
    """The actor-side half of the hf rollout: forwards weight updates and sleep/wake to this rank's server.

    verl's sync trainer, after each step, calls ``ActorRolloutRefWorker.update_weights`` on every actor rank,
    which hands this adapter a generator of ``(hf_name, full_tensor)`` pairs from the FSDP engine. Producing
    each full tensor is a collective over the FSDP group, so every rank drains the generator; only the
    replica's first rank sends, in buckets of ``checkpoint_engine.update_weights_bucket_megabytes``.
    """

    def __init__(
        self,
        config: RolloutConfig,
        model_config: HFModelConfig,
        device_mesh: Any,
        replica_rank: int = -1,
    ):
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", "0"))
        rollout_world_size = (
            self.config.tensor_model_parallel_size
            * self.config.data_parallel_size
            * self.config.pipeline_model_parallel_size
        )
        self.replica_rank = rank // rollout_world_size if replica_rank == -1 else replica_rank
        self.rollout_rank = rank % rollout_world_size
        self.is_leader_rank = self.rollout_rank == 0
        self._server: ray.actor.ActorHandle | None = None

    def _server_handle(self) -> ray.actor.ActorHandle | None:
        if not self.is_leader_rank:
            return None
        # Looked up lazily: the server is launched after the actor workers.
        if self._server is None:
            self._server = ray.get_actor(server_actor_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]):
        server = self._server_handle()
        if server is not None:
            await server.wake_up.remote(tags=tags)

    async def release(self):
        server = self._server_handle()
        if server is not None:
            await server.sleep.remote()

    @torch.no_grad()
    async def update_weights(
        self, weights, global_steps: int | None = None, wire_format: str = "named_tensors", **kwargs
    ):
        if wire_format != "named_tensors":
            raise NotImplementedError(
                f"the hf rollout takes full named tensors only, got wire_format={wire_format!r}"
            )
        if kwargs.get("peft_config") is not None:
            raise NotImplementedError("the hf rollout does not load LoRA adapters; set model.lora.merge=True")
        server = self._server_handle()
        bucket_bytes = self.config.checkpoint_engine.update_weights_bucket_megabytes << 20
        bucket: list[tuple[str, torch.Tensor]] = []
        bucket_size = 0
        sends = []
        async for name, tensor in ensure_async_iterator(weights):
            if server is None:
                continue
            tensor = tensor.detach().to("cpu")
            bucket.append((name, tensor))
            bucket_size += tensor.numel() * tensor.element_size()
            if bucket_size >= bucket_bytes:
                sends.append(server.load_weights.remote(bucket))
                bucket, bucket_size = [], 0
        if server is None:
            return
        if bucket:
            sends.append(server.load_weights.remote(bucket))
        await asyncio.gather(*sends)
        await server.finish_weight_update.remote(global_steps)

