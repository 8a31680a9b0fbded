"""Pooled prompt states of candidate prompts, before generation, from the actor's own forward pass.

``poise.selection.mode=probe`` scores prompts by a prompt-only value probe, which needs each candidate's pooled
prompt state at the probe layer: the same feature the old-log-prob pass captures after generation. The actor
worker group computes it here with the same call, engine and hook (``compute_log_prob`` with POISE's capture
flag on ``PoiseFSDPEngine``): each candidate becomes a sequence of its prompt tokens (built by verl's own
Continuous Token builder, as the agent loop builds them) and one placeholder response token with a zero
response mask. Attention is causal, so the prompt positions' states do not depend on the response: the
pooled prompt state equals the one the old-log-prob pass will capture for the same prompt under the same
weights (the trainer logs the largest difference, ``poise/selection/feature_diff_max``).

Cost: one forward of the prompts through the whole actor (the hook pools at the probe layer; the log-prob of
the one placeholder token is discarded). ``benchmarks/`` reports it as a share of a step.
"""

from __future__ import annotations

import uuid

import torch
import transfer_queue as tq
from transfer_queue import KVBatchMeta
from verl.utils.tensordict_utils import list_of_dict_to_tensordict
from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

from poise_verl.verl_ext.capture_engine import (
    CAPTURE_LAYER_KEY,
    POOL_K_KEY,
    PROMPT_FEATURES,
    RESPONSE_CUT_MARKER_KEY,
)

PARTITION = "poise_select"


class PromptFeatureReader:
    """Reads pooled prompt states of raw prompts through the actor worker group.

    Args:
        config: the run's full config (model type, chat-template kwargs, prompt length, temperature).
        tokenizer: the run's tokenizer.
        actor_worker_group: verl's actor (rollout/ref) worker group, whose ``compute_log_prob`` runs the engine.
        dp_size: the actor's data-parallel size (the batch is padded to a multiple of it).
    """

    def __init__(self, config, tokenizer, actor_worker_group, dp_size: int):
        from transformers import AutoConfig

        model_type = getattr(
            AutoConfig.from_pretrained(config.actor_rollout_ref.model.path), "model_type", None
        )
        self.builder = create_continuous_token_builder(
            tokenizer,
            hf_model_type=model_type,
            chat_template_kwargs=dict(config.data.get("apply_chat_template_kwargs", {}) or {}),
        )
        self.prompt_length = int(config.actor_rollout_ref.rollout.prompt_length)
        self.temperature = float(config.actor_rollout_ref.rollout.temperature)
        self.placeholder = int(tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0)
        self.worker_group = actor_worker_group
        self.dp_size = max(1, dp_size)

    def prompt_ids(self, messages) -> list[int]:
        """The agent loop's prompt tokens: the Continuous Token builder, left-capped at rollout.prompt_length."""
        ids = list(self.builder.build_initial_tokens(list(messages)))
        return ids[-self.prompt_length :]

    def _sample(self, prompt: list[int]) -> dict[str, torch.Tensor]:
        prompts = torch.tensor(prompt, dtype=torch.int64)
        responses = torch.tensor([self.placeholder], dtype=torch.int64)
        input_ids = torch.cat([prompts, responses])
        response_mask = torch.zeros(1, dtype=torch.int64)
        return {
            "prompts": prompts,
            "responses": responses,
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "position_ids": torch.arange(input_ids.shape[0], dtype=torch.int64),
            "response_mask": response_mask,
            "loss_mask": response_mask,
        }

    def read(self, raw_prompts, layer: int, pool_last_k: int) -> torch.Tensor:
        """``(C, H)`` pooled last-k prompt states at decoder layer ``layer``, one row per raw prompt."""
        prompts = [self.prompt_ids(messages) for messages in raw_prompts]
        count = len(prompts)
        padded = prompts + [prompts[-1]] * (-count % self.dp_size)  # the dispatch splits evenly across ranks
        keys = [f"select_{uuid.uuid4().hex}" for _ in padded]
        tags = [{"prompt_len": len(p), "response_len": 1, "seq_len": len(p) + 1} for p in padded]
        tq.kv_batch_put(
            keys=keys,
            partition_id=PARTITION,
            fields=list_of_dict_to_tensordict([self._sample(p) for p in padded]),
            tags=tags,
        )
        try:
            meta = KVBatchMeta(keys=keys, tags=tags, partition_id=PARTITION)
            meta.extra_info.update(
                {
                    "calculate_entropy": False,
                    "compute_loss": False,
                    "temperature": self.temperature,
                    CAPTURE_LAYER_KEY: layer,
                    POOL_K_KEY: pool_last_k,
                    RESPONSE_CUT_MARKER_KEY: (),
                }
            )
            self.worker_group.compute_log_prob(meta)
            data = tq.kv_batch_get(keys=keys, partition_id=PARTITION, select_fields=[PROMPT_FEATURES])
            features = data.to_padded_tensor()[PROMPT_FEATURES].to(torch.float32)
        finally:
            tq.kv_clear(keys=keys, partition_id=PARTITION)
        return features[:count]
