"""``python -m poise_verl.eval`` end to end on the tiny policy, its prompt rendering, sampling and input errors."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pandas as pd
import pytest
import torch

from poise_verl.analysis.policy import eos_token_ids, load_policy
from poise_verl.analysis.prompts import DataError, encode_prompt, read_prompts
from poise_verl.analysis.sampling import generate_hf


def test_cli_writes_finite_summaries(small_tiny_assets, tmp_path):
    out = tmp_path / "eval"
    data = small_tiny_assets / "data"
    command = [
        sys.executable,
        "-m",
        "poise_verl.eval",
        str(small_tiny_assets / "model"),
        "--data",
        str(data / "val.parquet"),
        str(data / "train.parquet"),
        "--limit",
        "4",
        "--k",
        "4",
        "--temperature",
        "1.0",
        "--top-p",
        "1.0",
        "--max-new-tokens",
        "8",
        "--output",
        str(out),
        "--threads",
        "2",
        "--no-progress",
    ]
    finished = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    results = summary["results"]
    assert set(results) == {"tiny_arith", "all"}
    assert results["all"]["prompts"] == 8
    for entry in results.values():
        for key in ("avg@4", "pass@1", "pass@2", "pass@4", "mean_score", "truncated_fraction"):
            assert math.isfinite(entry[key]) and 0.0 <= entry[key] <= 1.0
        assert entry["pass@1"] == pytest.approx(entry["avg@4"])
        assert entry["pass@1"] <= entry["pass@2"] <= entry["pass@4"]
    with open(out / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["data_source"] for row in rows] == ["tiny_arith", "all"]
    assert all(math.isfinite(float(row["pass@4"])) for row in rows)
    with open(out / "per_prompt.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 8


def test_prompt_rendering_matches_verl(small_tiny_assets):
    from verl.utils.tokenizer.chat_template import apply_chat_template

    _, tokenizer, _ = load_policy(small_tiny_assets / "model")
    for row in read_prompts([small_tiny_assets / "data" / "val.parquet"], limit=5):
        verl_ids = apply_chat_template(tokenizer, row.messages, tokenize=True, add_generation_prompt=True)
        verl_ids = (
            verl_ids["input_ids"] if isinstance(verl_ids, dict) or hasattr(verl_ids, "keys") else verl_ids
        )
        assert encode_prompt(tokenizer, row.messages) == list(verl_ids)


def test_left_padded_batches_generate_like_single_prompts(small_tiny_assets):
    torch.set_num_threads(2)
    model, tokenizer, _ = load_policy(small_tiny_assets / "model")
    rows = read_prompts([small_tiny_assets / "data" / "val.parquet"], limit=12)
    prompts = [encode_prompt(tokenizer, row.messages) for row in rows]
    assert len({len(p) for p in prompts}) > 1  # the batch really mixes prompt lengths
    eos = eos_token_ids(model, tokenizer)
    kwargs = {
        "eos_ids": eos,
        "pad_id": tokenizer.pad_token_id,
        "temperature": 0.0,
        "max_new_tokens": 10,
        "progress": False,
    }
    batched = generate_hf(model, prompts, n=1, batch_rows=64, **kwargs)
    for prompt, group in zip(prompts, batched, strict=True):
        alone = generate_hf(model, [prompt], n=1, **kwargs)[0][0]
        assert group[0].token_ids == alone.token_ids
        assert group[0].truncated == (not any(t in eos for t in alone.token_ids))


def _write(path, frame):
    frame.to_parquet(path, index=False)
    return path


def test_bad_input_names_file_and_row(small_tiny_assets, tmp_path):
    frame = pd.read_parquet(small_tiny_assets / "data" / "val.parquet").head(4)
    missing_column = _write(tmp_path / "no_reward.parquet", frame.drop(columns=["reward_model"]))
    with pytest.raises(DataError, match=r"no_reward\.parquet: missing column\(s\) \['reward_model'\]"):
        read_prompts([missing_column])

    blank = frame.copy()
    blank.at[2, "reward_model"] = {"style": "rule", "ground_truth": " "}
    blank_truth = _write(tmp_path / "blank_truth.parquet", blank)
    with pytest.raises(DataError, match=r"blank_truth\.parquet, row 2: reward_model.ground_truth is missing"):
        read_prompts([blank_truth])

    text_prompt = frame.copy()
    text_prompt["prompt"] = ["1+1="] * len(text_prompt)
    with pytest.raises(DataError, match=r"text_prompt\.parquet, row 0: 'prompt' is a string"):
        read_prompts([_write(tmp_path / "text_prompt.parquet", text_prompt)])

    with pytest.raises(DataError, match="does not exist"):
        read_prompts([tmp_path / "absent.parquet"])


def test_cli_reports_bad_input_without_a_traceback(small_tiny_assets, tmp_path):
    frame = pd.read_parquet(small_tiny_assets / "data" / "val.parquet").head(2).drop(columns=["data_source"])
    path = _write(tmp_path / "bad.parquet", frame)
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "poise_verl.eval",
            str(small_tiny_assets / "model"),
            "--data",
            str(path),
            "--output",
            str(tmp_path / "out"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode != 0
    assert "bad.parquet: missing column(s) ['data_source']" in finished.stderr
    assert "Traceback" not in finished.stderr
