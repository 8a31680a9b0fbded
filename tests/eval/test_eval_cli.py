"""``python -m poise_verl.eval`` end to end on the tiny policy, its prompt rendering, sampling and input errors."""

from __future__ import annotations

import csv
import itertools
import json
import math
import subprocess
import sys

import pandas as pd
import pytest
import torch

from poise_verl.analysis.policy import eos_token_ids, load_policy
from poise_verl.analysis.prompts import DataError, encode_prompt, read_prompts
from poise_verl.generation import generate_hf

# The CLI run below: the first 64 prompts of each file, 4 samples each at temperature 1, as many tokens as training
# allows (data.max_response_length=24). On the shipped build this gave 128 prompts with avg@4 0.379, pass@2 0.483,
# pass@4 0.578, and 50 of the 128 prompts with mixed outcomes (1-3 of 4 right; 54 with none, 24 with all 4).
LIMIT, K, MAX_NEW_TOKENS, SEED = 64, 4, 24, 0


def brute_force_pass_at(outcomes: list[bool], j: int) -> float:
    """Share of the size-j subsets of one prompt's samples that hold a correct one (no closed form)."""
    subsets = list(itertools.combinations(outcomes, j))
    return sum(any(subset) for subset in subsets) / len(subsets)


def recount(assets, rows) -> list[list[bool]]:
    """The CLI's samples drawn again in this process (same seed, threads and order), each decoded and scored by
    the tiny task's own reward, not through the evaluation's scorer dispatch."""
    from poise_verl.tiny.reward import compute_score

    torch.set_num_threads(2)
    model, tokenizer, _ = load_policy(assets / "model")
    prompts = [encode_prompt(tokenizer, row.messages) for row in rows]
    torch.manual_seed(SEED)
    responses = generate_hf(
        model,
        prompts,
        n=K,
        eos_ids=eos_token_ids(model, tokenizer),
        pad_id=tokenizer.pad_token_id,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=MAX_NEW_TOKENS,
        progress=False,
    )
    return [
        [
            compute_score(
                row.data_source, tokenizer.decode(r.token_ids, skip_special_tokens=True), row.ground_truth
            )
            == 1.0
            for r in group
        ]
        for row, group in zip(rows, responses, strict=True)
    ]


def test_cli_summaries_match_a_recount_of_the_samples(small_tiny_assets, tmp_path):
    out = tmp_path / "eval"
    data = small_tiny_assets / "data"
    files = [data / "val.parquet", data / "train.parquet"]
    command = [
        sys.executable,
        "-m",
        "poise_verl.eval",
        str(small_tiny_assets / "model"),
        "--data",
        *map(str, files),
        "--limit",
        str(LIMIT),
        "--k",
        str(K),
        "--temperature",
        "1.0",
        "--top-p",
        "1.0",
        "--max-new-tokens",
        str(MAX_NEW_TOKENS),
        "--seed",
        str(SEED),
        "--output",
        str(out),
        "--threads",
        "2",
        "--no-progress",
    ]
    finished = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    results = summary["results"]
    assert set(results) == {"tiny_arith", "all"}
    assert results["all"]["prompts"] == 2 * LIMIT
    for entry in results.values():
        for key in ("avg@4", "pass@1", "pass@2", "pass@4", "mean_score", "truncated_fraction"):
            assert math.isfinite(entry[key]) and 0.0 <= entry[key] <= 1.0
    with open(out / "summary.csv") as handle:
        rows_csv = list(csv.DictReader(handle))
    assert [row["data_source"] for row in rows_csv] == ["tiny_arith", "all"]
    assert all(math.isfinite(float(row["pass@4"])) for row in rows_csv)
    with open(out / "per_prompt.csv") as handle:
        per_prompt = list(csv.DictReader(handle))
    assert len(per_prompt) == 2 * LIMIT

    # The samples again, scored by the tiny reward itself: the per-prompt counts are those counts.
    rows = read_prompts(files, limit=LIMIT)
    outcomes = recount(small_tiny_assets, rows)
    assert [(r["file"], int(r["row"])) for r in per_prompt] == [(row.file, row.row) for row in rows]
    assert [int(r["correct"]) for r in per_prompt] == [sum(o) for o in outcomes]
    assert all(int(r["samples"]) == K for r in per_prompt)
    mixed = [o for o in outcomes if 0 < sum(o) < K]
    assert len(mixed) >= 16, (
        f"only {len(mixed)} prompts with mixed outcomes: pass@k would equal avg@k trivially"
    )

    # Every figure against the raw outcomes: avg@k the share correct, pass@j over all size-j subsets.
    for source, entry in results.items():
        members = [o for o, row in zip(outcomes, rows, strict=True) if source in ("all", row.data_source)]
        assert entry["prompts"] == len(members)
        average = sum(map(sum, members)) / (K * len(members))
        assert entry["avg@4"] == pytest.approx(average, abs=1e-12)
        assert entry["mean_score"] == pytest.approx(average, abs=1e-12)  # the tiny reward scores 1 or 0
        for j in (1, 2, 4):
            expected = sum(brute_force_pass_at(o, j) for o in members) / len(members)
            assert entry[f"pass@{j}"] == pytest.approx(expected, abs=1e-12), j
        # pass@1 is avg@k; with prompts of mixed outcomes more samples strictly help.
        assert entry["pass@1"] == pytest.approx(entry["avg@4"], abs=1e-12)
        assert entry["avg@4"] < entry["pass@2"] < entry["pass@4"]
        assert entry["pass@4"] == pytest.approx(sum(any(o) for o in members) / len(members), abs=1e-12)


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
