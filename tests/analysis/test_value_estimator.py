"""``python -m poise_verl.analysis.value_estimator`` end to end on the tiny policy, and its analysis on rewards
that vary (the reduced tiny build is still untrained and gets every prompt wrong)."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from poise_verl.analysis import value_estimator
from poise_verl.analysis.policy import eos_token_ids, load_policy
from poise_verl.analysis.probe_sweep import metrics, probe_fit_flops
from poise_verl.analysis.prompts import encode_prompt, read_prompts
from poise_verl.analysis.sampling import generate_hf

ESTIMATORS = {"probe_m_rollouts", "probe_2_rollouts", "critic", "train_mean", "group_mean_2"}


def _finite_numbers(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _finite_numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _finite_numbers(item)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield value


def _small_argv(small_tiny_assets, output, *extra):
    return [
        "--model",
        str(small_tiny_assets / "model"),
        "--data",
        str(small_tiny_assets / "data" / "val.parquet"),
        "--num-prompts",
        "8",
        "--m",
        "4",
        "--max-new-tokens",
        "6",
        "--critic-epochs",
        "1",
        "--critic-lr",
        "1e-3",
        "--output",
        str(output),
        "--threads",
        "2",
        "--no-progress",
        *extra,
    ]


def _check_outputs(output, results, layers):
    assert (output / "results.md").read_text().startswith("# Value estimators")
    assert "0.870" in (output / "results.md").read_text()  # the paper anchor is in the table
    for png in ("layer_sweep.png", "scatter.png"):
        assert (output / png).read_bytes()[:4] == b"\x89PNG"
    stored = json.loads((output / "results.json").read_text())
    assert stored["estimators"].keys() == results["estimators"].keys() == ESTIMATORS
    assert all(math.isfinite(v) for v in _finite_numbers(stored))
    for entry in stored["estimators"].values():
        assert -1.0 <= entry["pearson"] <= 1.0 and 0.0 <= entry["mae"] <= 1.0
    assert [e["layer"] for e in stored["layer_sweep"]] == layers
    return stored


def test_cli_end_to_end(small_tiny_assets, tmp_path):
    output = tmp_path / "value"
    value_estimator.main(_small_argv(small_tiny_assets, output))
    results = json.loads((output / "results.json").read_text())
    stored = _check_outputs(output, results, [0, 1, 2, 3])  # every decoder layer of the policy
    assert stored["data_summary"]["rollouts"] == 32
    assert stored["data_summary"]["heldout_prompts"] == 4
    assert stored["settings"]["probe"]["probe_layer"] == 2  # 19/36 of 4 layers, POISE's relative depth
    # A constant predictor's Pearson is 0 by convention.
    assert stored["estimators"]["train_mean"]["pearson"] == 0.0


def test_analysis_on_varying_rewards(small_tiny_assets, tmp_path):
    """Real rollouts and features of the tiny policy, rewards drawn per prompt from a known pass rate: the probe
    fits without falling back to a constant and every estimator gets finite scores."""
    torch.set_num_threads(2)
    args = value_estimator.parse_args(
        _small_argv(small_tiny_assets, tmp_path / "synthetic", "--layers", "1,3")
    )
    model, tokenizer, _ = load_policy(args.model)
    rows = read_prompts(args.data, limit=12)
    prompts = [encode_prompt(tokenizer, row.messages) for row in rows]
    torch.manual_seed(0)
    responses = generate_hf(
        model,
        prompts,
        n=4,
        eos_ids=eos_token_ids(model, tokenizer),
        pad_id=tokenizer.pad_token_id,
        max_new_tokens=6,
        progress=False,
    )
    rng = random.Random(0)
    pass_rate = [0.1 + 0.8 * (i % 3) / 2 for i in range(len(rows))]
    rewards = torch.tensor([[float(rng.random() < p) for _ in range(4)] for p in pass_rate])
    results = value_estimator.analyse(args, model, tokenizer, prompts, responses, rewards, "hf", {}, 0.0)
    stored = _check_outputs(tmp_path / "synthetic", results, [1, 2, 3])  # the main layer joins the sweep
    assert all(e["constant_fallback"] == 0.0 for e in stored["layer_sweep"])
    assert stored["data_summary"]["mean_pass_rate"] == pytest.approx(float(rewards.mean()))


def test_helpers():
    assert value_estimator.pearson_ceiling(torch.full((10,), 0.5), 8) == 0.0
    spread = torch.tensor([0.0, 0.125, 0.5, 0.875, 1.0] * 4)
    assert 0.8 < value_estimator.pearson_ceiling(spread, 8) < 1.0
    small = probe_fit_flops(100, (128, 128, 3), (32, 64))
    large = probe_fit_flops(4096, (2560, 2560, 3), (32, 64))
    assert 0 < small < large and math.isfinite(large)
    constant = metrics(torch.full((5,), 0.4), torch.tensor([0.0, 0.2, 0.5, 0.7, 1.0]))
    assert constant["pearson"] == 0.0 and constant["mae"] == pytest.approx(0.32)


def test_argument_checks(small_tiny_assets, tmp_path):
    for bad in (["--m", "5"], ["--m", "2"], ["--heldout-fraction", "1.0"], ["--critic-lr", "x"]):
        with pytest.raises(SystemExit):
            value_estimator.parse_args(_small_argv(small_tiny_assets, tmp_path, *bad))
