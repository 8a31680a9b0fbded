"""A weight-sync backend for verl's checkpoint-engine registry over gloo: ``checkpoint_engine.backend=gloo``.

verl's ``separate_async`` trainer keeps the rollout servers on devices of their own and sends them the actor's
weights after every step through a checkpoint engine (``verl.checkpoint_engine``); it refuses the in-process
``naive`` engine, and its engines (NCCL, NIXL, Mooncake, HCCL) all need an accelerator. This one broadcasts the
same bucketed stream over a gloo process group, so the fully asynchronous trainer runs on CPU-only machines, on one
node or several.

Per sync (verl's ``CheckpointEngineManager.update_weights``): ``prepare`` on actor rank 0 opens a TCP store,
``build_topology`` puts actor rank 0 (the sender) at rank 0 and every rollout worker after it (other actor ranks
only drain the generator, which is collective over the FSDP group), ``init_process_group`` joins a gloo group
over that store, ``send_weights``/``receive_weights`` move the weights in buckets of
``checkpoint_engine.update_weights_bucket_megabytes`` (verl's own ``split_weight_chunks``/``merge_weight_chunks``;
each bucket's layout goes through the store, its bytes through one gloo broadcast), and ``finalize`` drops the
group and the store. Each received tensor is a copy of its own, not a view into the bucket.

On GPUs use verl's ``nccl`` backend instead (``recipes/README.md``).
"""

from __future__ import annotations

import asyncio
import datetime
import pickle
from collections.abc import AsyncGenerator, Generator
from dataclasses import dataclass

import ray
import torch
import torch.distributed as dist
from verl.checkpoint_engine.base import (
    CheckpointEngine,
    CheckpointEngineRegistry,
    TensorMeta,
    merge_weight_chunks,
    split_weight_chunks,
)

#: ``actor_rollout_ref.rollout.checkpoint_engine.backend`` of this engine.
GLOO_BACKEND = "gloo"


@dataclass(frozen=True)
class StoreAddress:
    """Where actor rank 0's TCP store listens, and which sync it serves (keys never collide across syncs)."""

    host: str
    port: int
    sync_id: int


@CheckpointEngineRegistry.register(GLOO_BACKEND)
class GlooCheckpointEngine(CheckpointEngine):
    """Actor rank 0 broadcasts its weights to every rollout worker over gloo, bucket by bucket.

    Args:
        bucket_size: largest bucket in bytes (verl passes ``update_weights_bucket_megabytes << 20``).
        is_master: actor rank 0, the sender (verl sets it on the actor side; rollout workers are not).
        timeout_s: how long a rank waits for the others before the sync fails.
    """

    def __init__(self, bucket_size: int, is_master: bool = False, timeout_s: float = 600.0) -> None:
        self.bucket_size = int(bucket_size)
        self.is_master = is_master
        self.timeout = datetime.timedelta(seconds=timeout_s)
        self.rank: int | None = None
        self._store: dist.Store | None = None
        self._group: dist.ProcessGroup | None = None
        self._sync_id = 0

    # ---------------------------------------------------------------- topology
    def prepare(self) -> StoreAddress | None:
        if not self.is_master:
            return None
        self._sync_id += 1
        host = ray.util.get_node_ip_address().strip("[]")
        # Port 0: the store binds a free port itself (no window for another process to take it).
        self._store = dist.TCPStore(host, 0, is_master=True, wait_for_workers=False, timeout=self.timeout)
        return StoreAddress(host, self._store.port, self._sync_id)

    @classmethod
    def build_topology(cls, actor_wg_world_size: int, rollout_world_size: int, metadata: list):
        address = metadata[0]
        if not isinstance(address, StoreAddress):
            raise TypeError("gloo checkpoint engine: actor rank 0 did not open the store (is_master unset)")
        world_size = 1 + rollout_world_size
        actor_kwargs = {
            "rank": [0] + [-1] * (actor_wg_world_size - 1),
            "world_size": [world_size] * actor_wg_world_size,
            "address": [address] * actor_wg_world_size,
        }
        rollout_kwargs = {
            "rank": list(range(1, world_size)),
            "world_size": [world_size] * rollout_world_size,
            "address": [address] * rollout_world_size,
        }
        return actor_kwargs, rollout_kwargs

    def init_process_group(self, rank: int, world_size: int, address: StoreAddress) -> None:
        self.rank = rank
        if rank < 0:
            return
        store = self._store or dist.TCPStore(
            address.host, address.port, is_master=False, wait_for_workers=False, timeout=self.timeout
        )
        self._store = dist.PrefixStore(f"sync{address.sync_id}/", store)
        self._group = dist.ProcessGroupGloo(self._store, rank, world_size, self.timeout)

    def finalize(self) -> None:
        self._group = None
        self._store = None
        self.rank = None

    # ---------------------------------------------------------------- transfer
    def _broadcast(self, buffer: torch.Tensor) -> None:
        options = dist.BroadcastOptions()
        options.rootRank = 0
        self._group.broadcast([buffer], options).wait()

    @torch.no_grad()
    async def send_weights(self, weights: Generator[tuple[str, torch.Tensor], None, None], global_steps=None):
        if self.rank != 0:  # actor ranks outside the group still drain the (collective) generator
            for _ in weights:
                pass
            return {}
        bucket, layout, offset, index = torch.empty(self.bucket_size, dtype=torch.uint8), {}, 0, 0
        async for meta, chunk in split_weight_chunks(weights, self.bucket_size):
            if offset + meta.chunk_size > self.bucket_size:
                await self._send_bucket(index, bucket[:offset], layout, is_last=False)
                bucket, layout, offset, index = torch.empty(self.bucket_size, dtype=torch.uint8), {}, 0, index + 1
            meta.offset = offset
            layout[meta.name] = meta
            bucket[offset : offset + meta.chunk_size] = chunk.to("cpu")
            offset += meta.chunk_size
        await self._send_bucket(index, bucket[:offset], layout, is_last=True)
        return {}

    async def _send_bucket(self, index: int, data: torch.Tensor, layout: dict, is_last: bool) -> None:
        self._store.set(f"bucket{index}", pickle.dumps({"layout": layout, "bytes": data.numel(), "last": is_last}))
        await asyncio.to_thread(self._broadcast, data.contiguous())

    async def receive_weights(self, global_steps=None) -> AsyncGenerator[tuple[str, torch.Tensor], None]:
        async for name, weight in merge_weight_chunks(self._receive_chunks(), self.bucket_size):
            yield name, weight

    async def _receive_chunks(self) -> AsyncGenerator[tuple[TensorMeta, torch.Tensor], None]:
        index, last = 0, False
        while not last:
            header = pickle.loads(await asyncio.to_thread(self._store.get, f"bucket{index}"))
            data = torch.empty(header["bytes"], dtype=torch.uint8)
            await asyncio.to_thread(self._broadcast, data)
            for meta in header["layout"].values():
                # A copy of its own per tensor: a view would carry the whole bucket's storage wherever the rollout
                # adapter sends it (the hf adapter pickles each tensor to its server: 50 views of a 4 MB bucket
                # made a 0.4 s sync of the tiny model), and would change under a consumer kept past this bucket.
                yield meta, data[meta.offset : meta.offset + meta.chunk_size].clone()
            index, last = index + 1, header["last"]
