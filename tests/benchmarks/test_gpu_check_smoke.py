"""The prepared GPU check (benchmarks/gpu_check/) on its --quick path, run as a user runs it.

The full check needs a GPU and runs once per GPU session, so these tests make sure the code both share works
on the CPU: the tiny policy's architecture, packed micro-batches, the capture hook, the checks, the probe
timings, the JSON file and the markdown table. verl is installed here, so the quick run also times verl's own
engine (FSDPEngineWithLMHead against PoiseFSDPEngine with the capture flag) and checks that the hand-written
forward the GPU box times (it has no verl) computes what verl's engine computes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The only entries that may be null in a quick run: no CUDA version on a CPU build.
ALLOWED_NULLS = {"phases.environment.cuda"}


def _leaves(value, path=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}[{index}]")
    else:
        yield path, value


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One ``python -m benchmarks.gpu_check --quick`` run: its process result and its JSON."""
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    env = {key: value for key, value in os.environ.items() if key != "OUT"}
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--quick", "--out", str(out)],
        cwd=ROOT,
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    data = json.loads(out.read_text()) if out.exists() else None
    return result, data


def test_quick_path_writes_finite_results(quick_run):
    result, data = quick_run
    log = result.stdout[-4000:] + result.stderr[-4000:]
    assert result.returncode == 0, log
    assert "| quantity | value |" in result.stdout, log

    assert data["status"] == "done" and data["errors"] == {}, data["errors"]
    assert all(data["phases"][name]["ok"] for name in data["phases"]), log

    # The JSON writes a non-finite float as null: no null may appear outside the allowed entries.
    leaves = dict(_leaves(data))
    nulls = {path for path, value in leaves.items() if value is None}
    assert nulls <= ALLOWED_NULLS, nulls
    for path, value in leaves.items():
        if isinstance(value, float):
            assert math.isfinite(value), path

    checks = data["phases"]["checks"]
    assert checks["passed"], checks
    assert checks["layer_output_is_hidden_states_index"]  # hidden_states[L + 1] is layer L's output
    assert checks["capture_equal"] and checks["captured_finite"]
    assert checks["same_forward_max_abs_diff"] == 0.0
    assert checks["packed_attention_ok"]
    assert checks["packed_vs_alone_rel_diff"] < 1e-4 < checks["leaky_vs_alone_rel_diff"]

    forward = data["phases"]["forward"]
    assert forward["log_probs_finite"] and forward["entropy_finite"] and forward["features_finite"]
    assert forward["features_rows"] == forward["sequences"]
    assert len(forward["times_s"]["with"]) == len(forward["times_s"]["without"]) >= 3

    summary = data["summary"]
    for key in (
        "step_lower_bound_s",
        "capture_overhead_pct",
        "hook_alone_pct_of_forward",
        "probe_fit_pct_of_step",
        "probe_predict_pct_of_step",
        "entropy_stats_pct_of_step",
        "probe_total_pct_of_step",
    ):
        assert isinstance(summary[key], float) and math.isfinite(summary[key]), key
    assert summary["step_lower_bound_s"] > 0
    assert data["phases"]["probe"]["predictions_finite"]


def test_verls_engine_is_timed_and_the_hand_written_forward_matches_it(quick_run):
    """Where verl imports, the timed forward is verl's engine; the hand-written forward (what a machine without
    verl times) gives verl's log-probs, entropies and pooled features on the tiny policy's architecture."""
    result, data = quick_run
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    forward = data["phases"]["forward"]
    assert forward["timed_path"] == "verl_engine" and data["summary"]["timed_path"] == "verl_engine"
    assert "timed path: verl's engine" in result.stdout
    assert data["phases"]["engine_build"]["engines"] == ["FSDPEngineWithLMHead", "PoiseFSDPEngine"]
    # Three conditions, alternating: plain engine, POISE's engine with and without the capture flag.
    assert set(forward["times_s"]) == {"without", "with", "poise_engine_flag_off"}

    same = data["phases"]["engine_equivalence"]
    assert same["equal"] and data["summary"]["engine_matches_hand_written"], same
    assert same["log_probs_shape"] == [forward["tokens"]] and same["entropy_shape"] == [forward["tokens"]]
    hidden = data["phases"]["environment"]["model"]["hidden_size"]
    assert same["prompt_features_shape"] == same["response_features_shape"] == [forward["sequences"], hidden]
    # fp32 on both sides: the attention kernels differ (one SDPA call per sequence vs one over the packed row
    # with packed position ids), so the two agree to float32 rounding, far below what a wrong pool would give.
    for part in ("log_probs", "entropy", "prompt_features", "response_features"):
        assert same[f"{part}_max_rel_diff"] < 1e-5, (part, same)
