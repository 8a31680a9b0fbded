import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from transformers import AutoTokenizer

from poise_verl.tiny.reward import compute_score
from poise_verl.tiny.task import DATA_SOURCE, LEVELS, generate_problems, make_splits


def test_deterministic_under_seed():
    assert generate_problems(200, seed=5) == generate_problems(200, seed=5)
    assert generate_problems(200, seed=5) != generate_problems(200, seed=6)


def test_splits_disjoint_and_answers_right():
    train, val = make_splits(2000, 300, seed=0)
    assert len(train) == 2000 and len(val) == 300
    assert not {p.prompt for p in train} & {p.prompt for p in val}
    assert {p.level for p in train} == set(range(len(LEVELS)))
    for p in train + val:
        assert str(eval(p.prompt[:-1])) == p.answer  # prompts are plain Python arithmetic
        assert compute_score(DATA_SOURCE, p.solution, p.answer) == 1.0


def test_parquet_schema(tiny_assets):
    frame = pd.read_parquet(tiny_assets / "data" / "train.parquet")
    assert list(frame.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    row = frame.iloc[0]
    assert row.data_source == DATA_SOURCE and row.ability == "math"
    assert isinstance(row.prompt, np.ndarray) and row.prompt[0]["role"] == "user"
    assert row.reward_model["style"] == "rule" and isinstance(row.reward_model["ground_truth"], str)
    assert row.extra_info["split"] == "train" and row.extra_info["index"] == 0
    assert 0 <= row.extra_info["level"] < len(LEVELS)
    val = pd.read_parquet(tiny_assets / "data" / "val.parquet")
    assert set(val.extra_info.map(lambda e: e["split"])) == {"val"}


def test_verl_rlhf_dataset_reads_it(tiny_assets, tmp_path):
    from verl.utils.dataset.rl_dataset import RLHFDataset

    tokenizer = AutoTokenizer.from_pretrained(tiny_assets / "model")
    config = OmegaConf.create(
        {"max_prompt_length": 16, "filter_overlong_prompts": True, "cache_dir": str(tmp_path / "cache")}
    )
    dataset = RLHFDataset(str(tiny_assets / "data" / "val.parquet"), tokenizer, config)
    assert len(dataset) == 32  # nothing filtered as too long
    item = dataset[0]
    assert item["raw_prompt"][0]["role"] == "user"
    assert item["reward_model"]["ground_truth"]
    assert item["index"] == 0 and item["data_source"] == DATA_SOURCE
