"""verl's agent loop talking to the hf rollout servers in batches: fewer Ray calls per rollout on a small machine.

verl's agent loop sends every rollout to the rollout servers on its own: a Ray call to the global load balancer
to pick a server, the ``generate`` call itself, and a call to release the server; on a 2-core machine those
three calls per rollout cost more than generating a tiny model's response. Two pieces, plugged in through verl's
own extension points, send a step's requests together instead:

- :class:`HFServerClient`, an ``LLMServerClient`` (verl's client class; the agent loop calls its ``generate``
  per rollout) that collects the requests arriving together (:class:`~.batching.QuietBatcher`) and sends them
  to one hf server in one ``generate_many`` call, taking the servers in turn. An hf server keeps no prefix cache,
  so the load balancer's sticky sessions buy nothing here;
- :class:`HFFullyAsyncServerClient`, the same transport under verl's asynchronous trainers: verl's
  ``FullyAsyncLLMServerClient`` (its loop that sends an aborted request again with the tokens it has so far,
  and counts the weights' versions a response used), whose every attempt goes through :class:`HFServerClient`;
- :class:`HFAgentLoopManager`, verl's v1 agent-loop manager with the client that matches the one verl's trainer
  chose, selected with ``actor_rollout_ref.rollout.agent.agent_loop_manager_class``
  (``hydra_configs/platform/cpu.yaml``).

Everything else (the agent loop itself, rewards, what goes into TransferQueue) is verl's.
"""

from __future__ import annotations

import itertools
from typing import Any

import ray
from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopManagerTQ
from verl.workers.rollout.llm_server import FullyAsyncLLMServerClient, LLMServerClient
from verl.workers.rollout.replica import TokenOutput

from poise_verl.verl_ext.cpu.batching import DEFAULT_BATCH_WAIT_S, DEFAULT_MAX_BATCH_DELAY_S, QuietBatcher


class HFServerClient(LLMServerClient):
    """verl's LLM server client for hf servers: one ``generate_many`` call per batch of concurrent requests."""

    def __init__(self, config, load_balancer_handle=None, **kwargs):
        super().__init__(config, load_balancer_handle=load_balancer_handle, **kwargs)
        rollout = config.actor_rollout_ref.rollout
        self._max_items = int(rollout.get("max_num_seqs") or 1024)
        # Made in the agent-loop worker's event loop on first use (the client is built elsewhere and shipped).
        self._batcher: QuietBatcher | None = None
        self._servers: itertools.cycle | None = None

    async def generate(
        self,
        request_id,
        *,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        image_data: list[Any] | None = None,
        video_data: list[Any] | None = None,
        audio_data: list[Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> TokenOutput:
        if image_data is not None or video_data is not None or audio_data is not None:
            raise NotImplementedError("the hf rollout server is text-only")
        if self._batcher is None:
            self._batcher = QuietBatcher(self._send, DEFAULT_BATCH_WAIT_S, DEFAULT_MAX_BATCH_DELAY_S, self._max_items)
        output: TokenOutput = await self._batcher.submit((list(prompt_ids), dict(sampling_params)))
        # As verl's client does: the weights' version at the start and end of this request.
        global_steps = output.extra_fields.get("global_steps")
        output.extra_fields.setdefault("min_global_steps", global_steps)
        output.extra_fields.setdefault("max_global_steps", global_steps)
        return output

    async def _send(self, prompts: list[tuple[list[int], dict[str, Any]]]) -> list[TokenOutput]:
        if self._servers is None:
            # verl registers each hf server with the load balancer under its actor name (HFReplica).
            names = sorted(await self._load_balancer.get_all_servers.remote())
            if not names:
                raise RuntimeError("no hf rollout server is registered with verl's load balancer")
            self._servers = itertools.cycle([ray.get_actor(name) for name in names])
        return await next(self._servers).generate_many.remote(prompts)


class HFFullyAsyncServerClient(FullyAsyncLLMServerClient, HFServerClient):
    """verl's partial-rollout client (``FullyAsyncLLMServerClient``) over :class:`HFServerClient`'s batches.

    verl's class keeps its resume loop; each attempt in it (``super().generate``) is :class:`HFServerClient`'s
    batched call instead of a load-balancer acquire, a ``generate`` and a release per rollout.
    """


# verl's client classes and the hf-server client that does the same over batches. A client of any other class
# was chosen on purpose and is kept.
_HF_CLIENTS: dict[type[LLMServerClient], type[LLMServerClient]] = {
    LLMServerClient: HFServerClient,
    FullyAsyncLLMServerClient: HFFullyAsyncServerClient,
}


class HFAgentLoopManager(AgentLoopManagerTQ):
    """verl's v1 agent-loop manager whose workers reach the hf servers in batches (:data:`_HF_CLIENTS`)."""

    def __init__(self, config, llm_client: LLMServerClient, *args, **kwargs):
        hf_client = _HF_CLIENTS.get(type(llm_client))
        if hf_client is not None:
            # (FullyAsyncLLMServerClient's ``only_hybrid`` is not carried over: it only changes how that class
            # acquires a server from the load balancer, which the batched transport never does.)
            llm_client = hf_client(config, load_balancer_handle=llm_client._load_balancer)
        print(f"HFAgentLoopManager: the agent loop reaches the rollout servers through {type(llm_client).__name__}")
        super().__init__(config, llm_client, *args, **kwargs)
