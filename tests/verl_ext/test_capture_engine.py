"""POISE's capture inside verl's real FSDP engine equals pooling a separate output_hidden_states forward.

`engine_capture_check.py` runs in its own process (verl's CPU platform and a one-rank gloo group must be set
up before verl is imported): `PoiseFSDPEngine`, picked from verl's engine registry by VERL_ENGINE_VENDOR=poise
as the launcher does, wraps the tiny policy's architecture in FSDP2 and runs `infer_batch` with the capture
flag, packed (remove-padding) and padded, at two decoder layers, without the end-of-thinking cut and with a
one-token and a two-token marker.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cpu_env import cpu_env

SCRIPT = Path(__file__).with_name("engine_capture_check.py")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("capture") / "results.json"
    env = cpu_env()
    env["VERL_ENGINE_VENDOR"] = "poise"
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def test_registry_gives_the_capture_engine(results):
    assert results["engines"] == {"True": "PoiseFSDPEngine", "False": "PoiseFSDPEngine"}


@pytest.mark.parametrize("remove_padding", [True, False], ids=["packed", "padded"])
def test_hook_features_equal_output_hidden_states(results, remove_padding):
    cases = [c for c in results["cases"] if c["flag"] and c["remove_padding"] == remove_padding]
    assert len(cases) == 6  # two layers x (no cut, a one-token marker, a two-token marker)
    for case in cases:
        for part in ("prompt", "response"):
            assert case[f"{part}_shape"] == [6, 128], case
            # fp32 on both sides; the features are O(1e-2), so 1e-6 is four orders below their size.
            assert case[f"{part}_max_abs_diff"] < 1e-6, case
            assert case[f"{part}_mean_abs"] > 1e-3, case
        # The check can tell the two response pools apart: the cut moves them by far more than the tolerance.
        assert case["response_diff_to_other_cut"] > 1e-3, case
        assert case["log_probs_finite"], case


@pytest.mark.parametrize("remove_padding", [True, False], ids=["packed", "padded"])
def test_no_flag_no_capture(results, remove_padding):
    (case,) = [c for c in results["cases"] if not c["flag"] and c["remove_padding"] == remove_padding]
    assert "log_probs" in case["keys"]
    assert not any(key.startswith("poise_") for key in case["keys"]), case["keys"]
