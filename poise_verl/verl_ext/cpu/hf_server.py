"""The hf rollout server: a Ray actor holding a ``transformers`` causal LM, token-in/token-out like vLLM's.

``generate`` returns the response token ids and, when the request asks for ``logprobs``, the log-probability of
each sampled token. Concurrent requests are collected until none has arrived for a few milliseconds
(:class:`~.batching.QuietBatcher`) and answered by one left-padded ``generate`` call
(:func:`poise_verl.generation.generate_padded`; requests with different sampling settings go in separate calls).
verl's pieces around it (the replica that launches it, the adapter in each actor worker that ships it the
weights) are in :mod:`.hf_rollout`.

Log-probs are those of the temperature-scaled distribution, ``log softmax(logits / T)`` (raw logits when
greedy), which is what verl's actor computes for ``old_log_prob``; top-k/top-p truncation only decides which
token is drawn. A response ends at the first EOS token (inclusive) or at ``max_tokens``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
from typing import Any

import torch
from omegaconf import DictConfig
from transformers import AutoModelForCausalLM
from verl.utils.config import omega_conf_to_dataclass
from verl.utils.fs import copy_to_local
from verl.workers.config import HFModelConfig, RolloutConfig
from verl.workers.rollout.replica import RolloutMode, TokenOutput

from poise_verl.generation import generate_padded
from poise_verl.verl_ext.cpu import HF_ROLLOUT
from poise_verl.verl_ext.cpu.batching import DEFAULT_BATCH_WAIT_S, DEFAULT_MAX_BATCH_DELAY_S, QuietBatcher


def server_actor_name(replica_rank: int, node_rank: int = 0, role: str = "", name_suffix: str = "") -> str:
    """Ray actor name of a replica's server, shared by :class:`~.hf_rollout.HFReplica` and :class:`~.hf_rollout.HFServerAdapter`."""
    role_part = f"{role}_" if role else ""
    return f"{HF_ROLLOUT}_server_{role_part}{replica_rank}_{node_rank}{name_suffix}"


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """The part of a request's sampling parameters that must be equal for requests to share one generate."""

    temperature: float
    top_p: float
    top_k: int
    stop_token_ids: tuple[int, ...]

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclasses.dataclass(frozen=True)
class Request:
    """One generation request as the server runs it."""

    prompt_ids: list[int]
    max_tokens: int
    settings: SamplingSettings


class HFRolloutServer:
    """Token-in/token-out generation server on a ``transformers`` model, batching concurrent requests.

    Exposes the methods verl calls on a rollout server (``generate``, ``wake_up``, ``sleep``,
    ``clear_kv_cache``, ...) plus ``load_weights``/``finish_weight_update`` used by :class:`~.hf_rollout.HFServerAdapter`.
    Sleeping does not free anything: on CPU the weights and KV cache live in host memory either way.
    """

    def __init__(
        self,
        config: RolloutConfig | DictConfig,
        model_config: HFModelConfig | DictConfig,
        rollout_mode: RolloutMode,
        replica_rank: int,
        batch_wait_s: float = DEFAULT_BATCH_WAIT_S,
        max_batch_delay_s: float = DEFAULT_MAX_BATCH_DELAY_S,
    ):
        self.config: RolloutConfig = omega_conf_to_dataclass(config, dataclass_type=RolloutConfig)
        if isinstance(model_config, HFModelConfig):
            self.model_config = model_config
        else:
            self.model_config = omega_conf_to_dataclass(model_config, dataclass_type=HFModelConfig)
        self.rollout_mode = rollout_mode
        self.replica_rank = replica_rank
        self.batch_wait_s = batch_wait_s
        self.max_batch_delay_s = max_batch_delay_s
        self.global_steps: int | None = None

        num_threads = os.environ.get("POISE_HF_ROLLOUT_NUM_THREADS")
        if num_threads:
            torch.set_num_threads(int(num_threads))

        attn_implementation = self.model_config.override_config.get("attn_implementation", "sdpa")
        local_path = self.model_config.local_path or copy_to_local(self.model_config.path)
        self.model = AutoModelForCausalLM.from_pretrained(
            local_path,
            dtype=getattr(torch, self.config.dtype)
            if isinstance(self.config.dtype, str)
            else self.config.dtype,
            attn_implementation=attn_implementation,
            trust_remote_code=self.model_config.trust_remote_code,
        )
        self.model.eval()
        # Seeded like verl's vLLM server (rollout.seed + replica rank), so runs with different seeds sample
        # differently. CPU runs stay inexact: which requests share a generate call depends on timing.
        torch.manual_seed(int(self.config.seed) + int(self.replica_rank))
        # state_dict(keep_vars=True) names tied weights under every key (lm_head.weight and
        # model.embed_tokens.weight), matching what the actor sends.
        self._named_tensors = self.model.state_dict(keep_vars=True)

        generation_config = self.model.generation_config
        eos = generation_config.eos_token_id
        self.eos_token_ids: tuple[int, ...] = tuple(
            eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []
        )
        pad = generation_config.pad_token_id
        self.pad_token_id: int = (
            pad if pad is not None else (self.eos_token_ids[0] if self.eos_token_ids else 0)
        )

        self._batcher: QuietBatcher | None = None  # made in the actor's event loop, on the first request
        # Held by a batch while it generates and by a weight update while it writes, so weights never change
        # under a running generate.
        self._model_lock: asyncio.Lock | None = None
        # Partial rollout (verl's asynchronous trainers): abort_all_requests sets _abort, which ends a running
        # generate after its current token (the unfinished responses return as "aborted", as far as they got),
        # and closes the gate, where new requests wait for resume_generation (or are refused, reject_request).
        self._abort = threading.Event()
        self._gate: asyncio.Event | None = None  # open (set) unless aborted; made in the actor's event loop
        self._rejecting = False

    # ------------------------------------------------------------------
    # Generation
    # ------------------------------------------------------------------

    def _max_tokens(self, sampling_params: dict[str, Any], prompt_len: int) -> int:
        # Same budget rule as verl's vLLM server (vllm_async_server.py generate).
        if "max_tokens" in sampling_params:
            max_tokens = sampling_params["max_tokens"]
        elif "max_new_tokens" in sampling_params:
            max_tokens = sampling_params["max_new_tokens"]
        else:
            max_tokens = min(
                self.config.response_length,
                self.config.prompt_length + self.config.response_length - prompt_len,
            )
        max_model_len = self.config.max_model_len or (self.config.prompt_length + self.config.response_length)
        return max(1, min(int(max_tokens), max_model_len - prompt_len))

    def _settings(self, sampling_params: dict[str, Any]) -> SamplingSettings:
        top_k = sampling_params.get("top_k", -1)
        return SamplingSettings(
            temperature=float(sampling_params.get("temperature", 1.0)),
            top_p=float(sampling_params.get("top_p", 1.0)),
            # verl (vLLM convention) uses -1 for "no top-k"; transformers uses 0.
            top_k=int(top_k) if top_k is not None and top_k > 0 else 0,
            stop_token_ids=tuple(sampling_params.get("stop_token_ids") or ()),
        )

    def request(self, prompt_ids: list[int], sampling_params: dict[str, Any]) -> Request:
        prompt_ids = [int(token) for token in prompt_ids]
        max_tokens = self._max_tokens(sampling_params, len(prompt_ids))
        return Request(prompt_ids, max_tokens, self._settings(sampling_params))

    def token_output(
        self, result: tuple[list[int], list[float], bool], sampling_params: dict[str, Any]
    ) -> TokenOutput:
        token_ids, log_probs, aborted = result
        return TokenOutput(
            token_ids=token_ids,
            log_probs=log_probs if sampling_params.get("logprobs", False) else None,
            # verl's asynchronous client sends an aborted request again, with its tokens so far, after the resume.
            stop_reason="aborted" if aborted else "completed",
            extra_fields={"global_steps": self.global_steps},
        )

    def _open_gate(self) -> asyncio.Event:
        if self._gate is None:
            self._gate = asyncio.Event()
            self._gate.set()
        return self._gate

    async def _admitted(self) -> bool:
        """Wait while generation is paused (abort_all_requests until resume_generation); False: refused."""
        gate = self._open_gate()
        if not gate.is_set() and self._rejecting:
            return False
        await gate.wait()
        return True

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        request_id: str,
        image_data: list[Any] | None = None,
        video_data: list[Any] | None = None,
        **kwargs,
    ) -> TokenOutput:
        """Generate one response for ``prompt_ids``, batched with the requests that arrive with it."""
        if image_data is not None or video_data is not None:
            raise NotImplementedError("the hf rollout server is text-only")
        if not await self._admitted():
            return self.token_output(([], [], True), sampling_params)
        if self._batcher is None:
            self._batcher = QuietBatcher(
                self.run_requests, self.batch_wait_s, self.max_batch_delay_s, self.config.max_num_seqs
            )
        result = await self._batcher.submit(self.request(prompt_ids, sampling_params))
        return self.token_output(result, sampling_params)

    async def generate_many(self, prompts: list[tuple[list[int], dict[str, Any]]]) -> list[TokenOutput]:
        """Generate one response per ``(prompt_ids, sampling_params)`` at once: a client that batched its requests
        itself (:class:`~poise_verl.verl_ext.cpu.agent_loop.HFServerClient`) sends them in one call."""
        if not await self._admitted():
            return [self.token_output(([], [], True), params) for _, params in prompts]
        results = await self.run_requests([self.request(ids, params) for ids, params in prompts])
        return [self.token_output(result, params) for result, (_, params) in zip(results, prompts, strict=True)]

    async def run_requests(self, requests: list[Request]) -> list[tuple[list[int], list[float], bool]]:
        """(token ids, log-probs, aborted) per request: one ``generate`` per sampling setting and ``max_num_seqs``
        chunk. A chunk that reaches the model after an abort returns at once, every request aborted and empty."""
        groups: dict[SamplingSettings, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(request.settings, []).append(index)
        results: list[Any] = [None] * len(requests)
        max_batch = max(1, self.config.max_num_seqs)
        for settings, indices in groups.items():
            for start in range(0, len(indices), max_batch):
                chunk = indices[start : start + max_batch]
                async with self._lock():
                    if self._abort.is_set():
                        outputs = [([], [], True) for _ in chunk]  # fresh lists: no two outputs share one
                    else:
                        outputs = await asyncio.to_thread(
                            self.generate_batch,
                            [requests[i].prompt_ids for i in chunk],
                            [requests[i].max_tokens for i in chunk],
                            settings,
                        )
                for i, output in zip(chunk, outputs, strict=True):
                    results[i] = output
        return results

    def generate_batch(
        self, prompts: list[list[int]], max_tokens: list[int], settings: SamplingSettings
    ) -> list[tuple[list[int], list[float], bool]]:
        """One left-padded ``generate`` for all ``prompts``; returns (token ids, log-probs, aborted) per prompt.

        Each response is cut at its first stop token (inclusive) and at its own ``max_tokens``; an abort ends the
        call after the current token, the unfinished responses returned as far as they got.
        """
        stop_ids = set(settings.stop_token_ids)
        if not self.config.ignore_eos:
            stop_ids.update(self.eos_token_ids)
        responses = generate_padded(
            self.model,
            prompts,
            max_tokens,
            sorted(stop_ids),
            self.pad_token_id,
            temperature=max(settings.temperature, 0.0),
            top_p=settings.top_p,
            top_k=settings.top_k,
            log_probs=True,
            stop=self._abort,
        )
        return [(response.token_ids, response.log_probs, response.aborted) for response in responses]

    # ------------------------------------------------------------------
    # Weight sync (called by HFServerAdapter in the actor worker)
    # ------------------------------------------------------------------

    async def load_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> int:
        """Copy one bucket of full tensors, HF-named, into the model; returns how many were copied."""
        unknown = [name for name, _ in named_tensors if name not in self._named_tensors]
        if unknown:
            raise KeyError(f"hf rollout server: actor sent weights the model does not have: {unknown[:5]}")
        async with self._lock():
            with torch.no_grad():
                for name, tensor in named_tensors:
                    self._named_tensors[name].copy_(tensor)
        return len(named_tensors)

    async def finish_weight_update(self, global_steps: int | None = None) -> None:
        if global_steps is not None:
            self.global_steps = global_steps

    def _lock(self) -> asyncio.Lock:
        self._model_lock = self._model_lock or asyncio.Lock()
        return self._model_lock

    # ------------------------------------------------------------------
    # Methods verl's replica/trainer call on every rollout server
    # ------------------------------------------------------------------

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    async def wake_up(self, tags: list[str] | None = None) -> None:
        return None

    async def sleep(self) -> None:
        return None

    async def clear_kv_cache(self) -> None:
        return None

    async def release_kv_cache(self) -> None:
        return None

    async def resume_kv_cache(self) -> None:
        return None

    async def wait_for_requests_to_drain(self) -> None:
        while self._batcher is not None and self._batcher.pending:
            await asyncio.sleep(self.batch_wait_s)
        async with self._lock():
            return

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False) -> dict:
        """Pause generation (verl's asynchronous trainers, before a weight update): the running ``generate`` ends
        after its current token and its unfinished responses return "aborted" with their tokens so far; requests
        already queued return "aborted" and empty; new ones wait for :meth:`resume_generation` (``reject_request``:
        return "aborted" at once). Returns when no generate is running, so the weights can change."""
        self._open_gate().clear()
        self._rejecting = reject_request
        self._abort.set()
        async with self._lock():  # the running generate has stopped and handed its responses back
            pass
        return {"aborted_count": 0, "request_ids": []}  # the hf server keeps no request ids

    async def resume_generation(self) -> None:
        self._abort.clear()
        self._rejecting = False
        self._open_gate().set()

    async def start_profile(self, **kwargs) -> None:
        return None

    async def stop_profile(self) -> None:
        return None
