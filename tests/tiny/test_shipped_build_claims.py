"""The README's figures of the shipped tiny build are the ones its build_info.json measured.

The README says the tiny policy has 988,544 parameters, is warmed up until greedy accuracy reaches 40% so that
about half of the prompts sit between 10% and 90% pass rate, validates on 2048 held-out prompts, and starts
every ablation at 0.423. Each number is read from the README's text and compared with what the build recorded
(``python -m poise_verl.tiny.build`` writes build_info.json), so a rebuild that changes one fails here until the
README says the new figure.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from poise_verl.tiny import paths as tiny_paths

README = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text().split())  # one line
INFO = json.loads((tiny_paths.SHIPPED_DIR / "build_info.json").read_text())


def _number(pattern: str) -> float:
    found = re.search(pattern, README)
    assert found, f"the README no longer says {pattern!r}"
    return float(found.group(1).replace(",", ""))


def test_the_parameter_count_and_prompt_counts():
    assert _number(r"a ([\d,]+)-parameter Qwen3") == INFO["parameters"]
    assert _number(r"validation on (\d+) held-out prompts") == INFO["val_prompts"]


def test_the_warm_up_target_and_the_greedy_accuracy_it_reached():
    target = _number(r"until greedy accuracy reaches (\d+)%") / 100
    assert target == INFO["warm_up"]["target_accuracy"]
    measured = INFO["measured"]["val_greedy_accuracy"]
    assert measured >= target
    # Every ablation row starts at the shipped policy's greedy validation accuracy, to three decimals.
    starts = {float(s) for s in re.findall(r"\| (0\.\d{3}) -> ", README)}
    assert starts == {round(measured, 3)}, starts


def test_about_half_the_prompts_have_pass_rates_between_ten_and_ninety_percent():
    assert "about half of the prompts sit between 10% and 90% pass rate" in README
    # Measured on 200 prompts x 16 samples at temperature 1 (build_info's measured_on).
    assert 0.4 <= INFO["measured"]["pass_rate_fraction_in_0.1_0.9"] <= 0.6
