"""The sizes of a check: ``Settings.full`` (Qwen3-4B's shape on a GPU), ``Settings.quick`` (the tiny CPU policy)."""

from __future__ import annotations

import dataclasses

import torch

# Qwen3-4B's config.json (hidden 2560, 36 layers, 32 query / 8 key-value heads of 128, MLP 9728, vocab
# 151936, tied embeddings, rope theta 1e6).
QWEN3_4B = {
    "vocab_size": 151936,
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
}
QWEN3_END_OF_THINKING_ID = 151668  # "</think>" in Qwen3's tokenizer


@dataclasses.dataclass
class Settings:
    """Every size the check uses; ``full()`` is the GPU run, ``quick()`` the CPU smoke path."""

    model: dict
    device: str
    dtype: torch.dtype
    num_sequences: int  # rollouts in the measured batch
    prompt_range: tuple[int, int]  # prompt tokens, uniform in [lo, hi]
    total_range: tuple[int, int]  # prompt + response tokens, uniform in [lo, hi]
    micro_batch_sequences: int  # sequences per packed micro-batch
    logprob_chunk: int  # tokens per chunk of the log-softmax over the vocabulary
    capture_layer: int
    pool_tokens: int
    warmup_pairs: int
    timing_pairs: int
    forward_budget_s: float  # stop adding timing pairs past this (after min_timing_pairs)
    min_timing_pairs: int
    hook_reps: int
    check_lengths: tuple[tuple[int, int], tuple[int, int]]  # (prompt, response) of the 2 check sequences
    probe_rows: int  # replay-buffer capacity (official math domain: 4096 rows)
    step_rollouts: int  # rollouts per POISE step (256 prompts x n = 2)
    entropy_width: int  # padded response width for the entropy statistics (official max response 8192)
    end_of_thinking_id: int
    probe_fit_reps: int
    probe_budget_s: float  # per timed probe quantity
    optional_deadline_s: (
        float  # past this total run time, optional extras (alternative PCA, GPU entropy) are skipped
    )
    step_gpus: int  # GPUs sharing the actor's work in the step estimate (official Qwen3-4B: 2)
    train_forward_factor: float  # training forward + backward, in units of one forward
    seed: int = 0

    @staticmethod
    def full(device: str) -> Settings:
        return Settings(
            model=QWEN3_4B,
            device=device,
            dtype=torch.bfloat16,
            num_sequences=32,
            prompt_range=(256, 1024),
            total_range=(3584, 4608),
            micro_batch_sequences=8,
            logprob_chunk=4096,  # 4096 x 151936 fp32 logits = 2.5 GB, ~4 such buffers live at once
            capture_layer=19,
            pool_tokens=10,
            warmup_pairs=2,
            timing_pairs=8,
            forward_budget_s=120.0,
            min_timing_pairs=4,
            hook_reps=30,
            check_lengths=((700, 900), (500, 700)),
            probe_rows=4096,
            step_rollouts=512,
            entropy_width=8192,
            end_of_thinking_id=QWEN3_END_OF_THINKING_ID,
            probe_fit_reps=3,
            probe_budget_s=30.0,
            optional_deadline_s=330.0,
            step_gpus=2,
            train_forward_factor=3.0,
        )

    @staticmethod
    def quick(device: str) -> Settings:
        model, end_of_thinking_id = tiny_policy_shape()
        return Settings(
            model=model,
            device=device,
            dtype=torch.float32,  # exact comparisons on CPU; the GPU run uses bf16
            num_sequences=8,
            prompt_range=(8, 24),
            total_range=(40, 80),
            micro_batch_sequences=4,
            logprob_chunk=48,  # smaller than a micro-batch, so the chunk loop runs
            capture_layer=2,
            pool_tokens=10,
            warmup_pairs=1,
            timing_pairs=3,
            forward_budget_s=10.0,
            min_timing_pairs=3,
            hook_reps=5,
            check_lengths=((12, 20), (9, 15)),
            probe_rows=256,
            step_rollouts=64,
            entropy_width=64,
            end_of_thinking_id=end_of_thinking_id,
            probe_fit_reps=2,
            probe_budget_s=5.0,
            optional_deadline_s=120.0,
            step_gpus=2,
            train_forward_factor=3.0,
        )


def matmul_flops(model_config: dict, lengths: list[int]) -> float:
    """Forward FLOPs of the linear layers, the LM head and causal attention for sequences of these lengths."""
    h, layers = model_config["hidden_size"], model_config["num_hidden_layers"]
    q = model_config["num_attention_heads"] * model_config["head_dim"]
    kv = model_config["num_key_value_heads"] * model_config["head_dim"]
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * model_config["intermediate_size"]
    params = layers * per_layer + h * model_config["vocab_size"]
    tokens = sum(lengths)
    # Causal attention: QK^T and PV over about L^2 / 2 pairs, 2 FLOPs per multiply-add.
    attention = layers * sum(2 * 2 * (length * length / 2) * q for length in lengths)
    return 2.0 * params * tokens + attention


def tiny_policy_shape() -> tuple[dict, int]:
    """The tiny CPU policy's architecture (``poise_verl.tiny.model``) as a Qwen3 config dict, and the id of
    its ``</think>`` token."""
    from poise_verl.tiny.model import tiny_config
    from poise_verl.tiny.tokenizer import THINK_END, build_tokenizer

    tokenizer = build_tokenizer()
    config = tiny_config(tokenizer)
    shape = {key: getattr(config, key) for key in QWEN3_4B}
    return shape, tokenizer.convert_tokens_to_ids(THINK_END)
