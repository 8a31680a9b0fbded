"""The tiny policy: a 4-layer ``Qwen3ForCausalLM`` of about a million parameters.

Four layers so the probe has a middle layer to read (POISE reads layer 19 of Qwen3-4B's 36).
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase, Qwen3Config, Qwen3ForCausalLM

HIDDEN_SIZE = 128
NUM_LAYERS = 4
# Prompts are at most 11 tokens and responses about 20; the rest is headroom for users' own tasks.
MAX_POSITIONS = 256


def tiny_config(tokenizer: PreTrainedTokenizerBase) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        intermediate_size=4 * HIDDEN_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=MAX_POSITIONS,
        # transformers 5 takes rope settings here, not as rope_theta=.
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        dtype="float32",
    )


def make_model(tokenizer: PreTrainedTokenizerBase, seed: int) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(tiny_config(tokenizer))
    # A fresh GenerationConfig leaves sampling settings as None; plain temperature-1 sampling by default.
    model.generation_config = GenerationConfig(
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
    )
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (the tied input/output embedding counted once)."""
    return sum(p.numel() for p in model.parameters())
