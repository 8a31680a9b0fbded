"""Fixtures for the CPU plugins: a tiny random Qwen3, a character-level tokenizer, an arithmetic parquet.

Everything is built in a temporary directory; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

# Digits, operators and a few letters; one token per character.
CHARACTERS = list("0123456789+-*=? abcdefghij")
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]
PAD_ID, EOS_ID, BOS_ID = 0, 1, 2
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
DATA_SOURCE = "tiny_arithmetic"

REWARD_FUNCTION = '''
def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    """1.0 for the right answer, 0.5 for any digit first (so a random model gets varied rewards), else 0."""
    if solution_str.startswith(str(ground_truth)):
        return 1.0
    return 0.5 if solution_str[:1].isdigit() else 0.0
'''


@dataclasses.dataclass(frozen=True)
class TinyTask:
    model_dir: Path
    train_parquet: Path
    val_parquet: Path
    reward_file: Path
    vocab_size: int


def build_tokenizer(directory: Path):
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    # BPE without merges splits text into single characters.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return tokenizer


def build_model(directory: Path, vocab_size: int, seed: int = 0):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=BOS_ID,
    )
    model = Qwen3ForCausalLM(config)
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.eos_token_id = EOS_ID
    model.generation_config.bos_token_id = BOS_ID
    model.save_pretrained(directory)
    return model


def build_parquet(path: Path, count: int, seed: int) -> None:
    import pandas as pd

    rng = random.Random(seed)
    rows = []
    for index in range(count):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append(
            {
                "data_source": DATA_SOURCE,
                "prompt": [{"role": "user", "content": f"{a}+{b}="}],
                "ability": "math",
                "reward_model": {"style": "rule", "ground_truth": str(a + b)},
                "extra_info": {"split": path.stem, "index": index},
            }
        )
    pd.DataFrame(rows).to_parquet(path)


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory) -> TinyTask:
    root = tmp_path_factory.mktemp("tiny_task")
    model_dir = root / "model"
    tokenizer = build_tokenizer(model_dir)
    build_model(model_dir, vocab_size=len(tokenizer))
    build_parquet(root / "train.parquet", count=64, seed=0)
    build_parquet(root / "val.parquet", count=8, seed=1)
    reward_file = root / "reward.py"
    reward_file.write_text(REWARD_FUNCTION)
    return TinyTask(
        model_dir=model_dir,
        train_parquet=root / "train.parquet",
        val_parquet=root / "val.parquet",
        reward_file=reward_file,
        vocab_size=len(tokenizer),
    )
