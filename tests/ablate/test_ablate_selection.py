"""The selection variants in the ablation: their registry entries (real composed configs), and the report's
zero-variance / prompt-selection table, figure, ratios and validation standard error on synthetic runs whose
every number is computed by hand below."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ablate_helpers import algo_config, mark_done, write_launch

from poise_verl.ablate.algorithms import ALGORITHMS, DEFAULT_ALGOS
from poise_verl.ablate.cli import main
from poise_verl.ablate.metrics import collect
from poise_verl.ablate.plan import check_extra_overrides, compose, plan_runs, read_algo_config
from poise_verl.ablate.report import validation_noise, validation_text, write_report
from poise_verl.ablate.selection import ZERO_VARIANCE, run_selection
from poise_verl.ablate.statistics import seed_band

VAL = "val-core/tiny_arithmetic/acc/mean@1"
NAN = float("nan")
ALGOS = ["poise", "poise_select", "poise_history", "dapo"]

# Per algorithm (both seeds): timing_s/step at steps 1-4, timing_s/testing at steps 2 and 4, response length.
TIMING = {
    "poise": ((1.5, 1.5, 1.5, 1.5), 0.5, 10.0),
    "poise_select": ((1.0, 2.0, 2.0, 4.0), 0.5, 10.0),
    "poise_history": ((1.0, 1.0, 1.0, 1.0), 0.5, 10.0),
    "dapo": ((3.0, 3.0, 3.0, 3.0), 1.0, 20.0),
}
# Validation accuracy at steps 0, 2, 4 per seed, the same for every algorithm: final 0.6 and 0.4, mean 0.5.
ACCURACY = {0: (0.3, 0.5, 0.6), 1: (0.3, 0.5, 0.4)}
# Per (algo, seed): metric -> values at steps 1-4 (None: not logged that step).
SELECTION = {
    ("poise", 0): {ZERO_VARIANCE: (0.5, 0.5, 0.4, 0.4)},
    ("poise", 1): {ZERO_VARIANCE: (0.6, 0.6, 0.5, 0.5)},
    ("poise_select", 0): {
        ZERO_VARIANCE: (0.5, 0.2, 0.3, 0.4),
        "poise/selection/active": (0.0, 1.0, 1.0, 1.0),  # the prompt probe is fitted from step 2 on
        "poise/selection/predicted_zero_variance_share": (None, 0.3, 0.3, 0.3),
        "poise/selection/candidates_predicted_zero_variance_share": (None, 0.5, 0.5, 0.5),
        "poise/selection/prompt_pearson": (None, 0.2, 0.4, 0.6),
        "poise/selection/feature_diff_max": (None, 1e-6, 3e-6, 2e-6),
        "timing_s/select": (None, 0.1, 0.2, 0.3),
    },
    ("poise_select", 1): {
        ZERO_VARIANCE: (0.5, 0.4, 0.3, 0.2),
        "poise/selection/active": (0.0, 1.0, 1.0, 1.0),
        "poise/selection/predicted_zero_variance_share": (None, 0.2, 0.3, 0.4),
        "poise/selection/candidates_predicted_zero_variance_share": (None, 0.5, 0.5, 0.5),
        "poise/selection/prompt_pearson": (None, 0.4, NAN, 0.4),  # one step's Pearson undefined
        "poise/selection/feature_diff_max": (None, 1e-6, 1e-6, 1e-6),
        "timing_s/select": (None, 0.1, 0.2, 0.3),
    },
    ("poise_history", 0): {
        ZERO_VARIANCE: (0.4, 0.3, 0.3, 0.2),
        "poise/selection/active": (1.0, 1.0, 1.0, 1.0),
        "timing_s/select": (0.01, 0.01, 0.01, 0.01),
    },
    ("poise_history", 1): {
        ZERO_VARIANCE: (0.4, 0.3, 0.3, 0.2),
        "poise/selection/active": (1.0, 1.0, 1.0, 1.0),
        "timing_s/select": (0.01, 0.01, 0.01, 0.01),
    },
}


def rows(algo: str, seed: int) -> dict[int, dict[str, float]]:
    step_s, test_s, length = TIMING[algo]
    acc = ACCURACY[seed]
    out = {0: {VAL: acc[0]}}
    for step in range(1, 5):
        row = {"timing_s/step": step_s[step - 1], "response_length/mean": length}
        if step % 2 == 0:
            row.update({VAL: acc[step // 2], "timing_s/testing": test_s})
        for metric, values in SELECTION.get((algo, seed), {}).items():
            if values[step - 1] is not None:
                row[metric] = values[step - 1]
        out[step] = row
    return out


def ablation(tmp_path, val_rows: int = 400, val_max_samples: int = -1):
    """The four algorithms x seeds 0, 1, validated on a real parquet of ``val_rows`` prompts."""
    val = tmp_path / "val.parquet"
    pq.write_table(pa.table({"prompt": [f"p{i}" for i in range(val_rows)]}), val)
    n = {"poise": 2, "poise_select": 2, "poise_history": 2, "dapo": 16}
    configs = {
        a: algo_config(n=n[a], val_files=(str(val),), val_max_samples=val_max_samples, shuffle=False)
        for a in ALGOS
    }
    runs = plan_runs(ALGOS, [0, 1], tmp_path / "abl", ["budget.rollouts_per_step=16"], configs)
    for run in runs:
        write_launch(run.folder, "20260101-000000-1", rows(run.algo, run.seed))
        mark_done(run, wall_clock_s=30.0)
    return collect(runs)


def test_selection_table_ratios_and_figure_match_hand_computed_values(tmp_path):
    results = ablation(tmp_path)
    summary = write_report(results, ALGOS, tmp_path / "report", target_accuracy=None)

    # Target: DAPO's mean final accuracy 0.5; every seed-mean curve reaches it at step 2. Wall-clock there:
    # steps 1-2 plus one validation. DAPO 3 + 3 + 1 = 7 s; poise 1.5 + 1.5 + 0.5 = 3.5 s; poise_select
    # 1 + 2 + 0.5 = 3.5 s; poise_history 1 + 1 + 0.5 = 2.5 s. Tokens: 2 steps x 16 rollouts x 10 (DAPO 20).
    assert summary["target_accuracy"]["value"] == pytest.approx(0.5)
    for algo, seconds in (("poise", 3.5), ("poise_select", 3.5), ("poise_history", 2.5), ("dapo", 7.0)):
        hit = summary["algorithms"][algo]["to_target"]
        assert hit["step"] == 2 and hit["wall_clock_s"] == pytest.approx(seconds), algo
    # Without the validation: DAPO 6 s, poise 3 s, poise_select 3 s, poise_history 2 s.
    for algo, seconds in (("poise", 3.0), ("poise_select", 3.0), ("poise_history", 2.0), ("dapo", 6.0)):
        assert summary["algorithms"][algo]["to_target"]["steps_wall_clock_s"] == pytest.approx(seconds), algo
    for algo, ratio, steps_only in (("poise", 0.5, 0.5), ("poise_select", 0.5, 0.5), ("poise_history", 2.5 / 7, 2 / 6)):
        assert summary["ratios"][f"{algo}/dapo"]["wall_clock_s"] == pytest.approx(ratio), algo
        assert summary["ratios"][f"{algo}/dapo"]["steps_wall_clock_s"] == pytest.approx(steps_only), algo
        assert summary["ratios"][f"{algo}/dapo"]["tokens"] == pytest.approx(320.0 / 640.0), algo

    selection = summary["selection"]
    assert list(selection) == ["poise", "poise_select", "poise_history"]  # DAPO logs none of it: no row
    plain, probe, history = selection["poise"], selection["poise_select"], selection["poise_history"]
    # Plain POISE: realised share only, (0.5 + 0.5 + 0.4 + 0.4) / 4 = 0.45 and 0.55.
    assert [r["zero_variance_share"] for r in plain["runs"]] == pytest.approx([0.45, 0.55])
    assert plain["zero_variance_share"]["mean"] == pytest.approx(0.5)
    assert plain["zero_variance_share"]["sd"] == pytest.approx(math.sqrt(2 * 0.05**2))
    for key in ("selection_steps", "predicted_zero_variance_share", "prompt_pearson", "select_share_of_step"):
        assert plain[key] == {"mean": None, "sd": None, "n": 0}, key
    # Probe selection, seed 0: realised 1.4 / 4 = 0.35 over all steps, 0.9 / 3 = 0.3 over the 3 selection
    # steps (2-4); predicted 0.3 (kept) and 0.5 (candidates); Pearson (0.2 + 0.4 + 0.6) / 3 = 0.4.
    # Seed 1: the same means; its undefined Pearson is left out (2 steps, mean 0.4).
    assert [r["zero_variance_share"] for r in probe["runs"]] == pytest.approx([0.35, 0.35])
    assert [r["selection_steps"] for r in probe["runs"]] == [3, 3]
    assert [r["zero_variance_share_selection_steps"] for r in probe["runs"]] == pytest.approx([0.3, 0.3])
    assert probe["predicted_zero_variance_share"]["mean"] == pytest.approx(0.3)
    assert probe["candidates_predicted_zero_variance_share"]["mean"] == pytest.approx(0.5)
    assert [r["prompt_pearson"] for r in probe["runs"]] == pytest.approx([0.4, 0.4])
    assert [r["prompt_pearson_steps"] for r in probe["runs"]] == [3, 2]
    # Cost: median select 0.2 s over steps 2-4, whose median step is 2.0 s (step 1's 1.0 s did not select).
    assert [r["select_median_s"] for r in probe["runs"]] == pytest.approx([0.2, 0.2])
    assert [r["step_median_s_selection_steps"] for r in probe["runs"]] == pytest.approx([2.0, 2.0])
    assert probe["select_share_of_step"]["mean"] == pytest.approx(0.1)
    assert [r["feature_diff_max"] for r in probe["runs"]] == pytest.approx([3e-6, 1e-6])
    # History filter: selects at every step, 0.01 s of 1.0 s; no prediction, no Pearson.
    assert history["zero_variance_share"]["mean"] == pytest.approx(0.3)
    assert [r["selection_steps"] for r in history["runs"]] == [4, 4]
    assert history["select_share_of_step"]["mean"] == pytest.approx(0.01)
    assert history["predicted_zero_variance_share"]["mean"] is None and history["prompt_pearson"]["n"] == 0

    report = tmp_path / "report"
    markdown = (report / "summary.md").read_text()
    table = markdown.split("## Zero-variance groups and prompt selection")[1].split("## Plots")[0]
    assert "| poise | 2 | 0.500 ± 0.071 | 0.500 ± 0.071 | not logged | not logged | not logged | not logged | " \
        "not logged | not logged |" in table
    assert "| poise_select | 2 | 0.350 ± 0.000 | 0.350 ± 0.000 | 0: 3, 1: 3 | 0.300 ± 0.000 | 0.300 ± 0.000 | " \
        "0.500 ± 0.000 | 0.400 ± 0.000 (0.400 ± 0.000) | 0.100 ± 0.000 (0.2 s / 2 s) |" in table
    assert "| poise_history | 2 | 0.300 ± 0.000 | 0.300 ± 0.000 | 0: 4, 1: 4 | 0.300 ± 0.000 | not logged | " \
        "not logged | not logged | 0.010 ± 0.000 (0.01 s / 1 s) |" in table
    assert "| dapo |" not in table
    assert "poise_select 3.00e-06." in table
    assert "- poise_select/dapo: wall-clock 0.50x (0.50x without validations), tokens 0.50x" in markdown
    assert "- poise_history/dapo: wall-clock 0.36x (0.33x without validations), tokens 0.50x" in markdown
    assert any("poise_select, poise_history generate the budget's rollouts" in n for n in summary["caveats"])

    # The figure: realised share per step of the three POISE variants (mean over seeds), e.g. poise_select
    # at step 2: (0.2 + 0.4) / 2, band 0.2-0.4; DAPO is not drawn (it does not log the share).
    assert "zero_variance_share.png" in summary["plots"]
    assert (report / "zero_variance_share.png").stat().st_size > 5000
    assert {"poise_select_probe.png", "poise_history_probe.png", "poise_probe.png"} <= set(summary["plots"])
    frames = [r.frame for r in results if r.algo == "poise_select"]
    band = seed_band(frames, ZERO_VARIANCE).set_index("step")
    assert band.loc[2, ["y_mean", "y_min", "y_max"]].tolist() == pytest.approx([0.3, 0.2, 0.4])
    assert list(band.index) == [1, 2, 3, 4]
    json.loads((report / "summary.json").read_text())  # strict JSON: the NaN Pearson did not leak


def test_last_steps_window_and_runs_without_selection_metrics(tmp_path):
    results = {(r.algo, r.seed): r for r in ablation(tmp_path)}
    late = run_selection(results["poise_select", 0].frame, window=2)  # steps 3 and 4
    assert late["zero_variance_share_last_steps"] == pytest.approx((0.3 + 0.4) / 2)
    assert late["prompt_pearson_last_steps"] == pytest.approx((0.4 + 0.6) / 2)
    assert run_selection(results["dapo", 0].frame) is None


@pytest.mark.parametrize(
    ("val_rows", "val_max_samples", "prompts", "se", "met"),
    [
        (400, -1, 400, 0.025, False),  # sqrt(0.25 / 400): 2.5 points
        (2500, -1, 2500, 0.01, True),  # sqrt(0.25 / 2500): 1.0 point
        (2500, 1600, 1600, 0.0125, False),  # val_max_samples caps the prompts: sqrt(0.25 / 1600)
    ],
)
def test_validation_standard_error_against_the_requirement(tmp_path, val_rows, val_max_samples, prompts, se, met):
    results = ablation(tmp_path, val_rows=val_rows, val_max_samples=val_max_samples)
    noise = validation_noise(results)
    # The mean final accuracy over all 8 runs: (0.6 + 0.4) / 2 = 0.5; every run validates 0.5 at step 2.
    assert noise["accuracy"] == pytest.approx(0.5) and noise["prompts"] == prompts
    assert noise["largest_at_accuracy"] == pytest.approx(0.5)
    for key in ("standard_error", "largest_standard_error", "standard_error_at_half"):
        assert noise[key] == pytest.approx(se), key
    assert noise["required_at_most"] == 0.012 and noise["meets_requirement"] is met
    # 0.25 / 0.012^2 = 1736.1: 1737 prompts at accuracy 0.5.
    assert noise["prompts_needed"] == 1737 and noise["prompts_needed_at_half"] == 1737
    summary = write_report(results, ALGOS, tmp_path / "report", target_accuracy=None)
    assert summary["validation"] == noise
    markdown = (tmp_path / "report" / "summary.md").read_text()
    sentence = f"one validation's binomial standard error sqrt(p(1-p)/{prompts}) is {se:.4f} ({100 * se:.2f} points)"
    assert sentence in markdown
    assert f"required: at most 1.2 points: {'met' if met else 'NOT met'}" in markdown


def test_the_verdict_takes_the_validation_nearest_half(tmp_path):
    """Every run ends at 0.7 but validated 0.5 at step 2: the final accuracies carry sqrt(0.21 / 1700) = 0.0111,
    within 1.2 points, but the step-2 validations carry sqrt(0.25 / 1700) = 0.0121, beyond."""
    results = ablation(tmp_path, val_rows=1700)
    for r in results:
        r.frame.loc[4, "val_accuracy"] = 0.7
    noise = validation_noise(results)
    assert noise["accuracy"] == pytest.approx(0.7)
    assert noise["standard_error"] == pytest.approx(math.sqrt(0.21 / 1700))
    assert noise["largest_at_accuracy"] == pytest.approx(0.5)
    assert noise["largest_standard_error"] == pytest.approx(math.sqrt(0.25 / 1700))
    assert noise["meets_requirement"] is False
    assert noise["prompts_needed"] == 1737

    # A policy that never (or always) solves a validation prompt: the binomial estimate, 0, proves nothing.
    for r in results:
        r.frame["val_accuracy"] = r.frame["val_accuracy"].where(r.frame["val_accuracy"].isna(), 0.0)
    noise = validation_noise(results)
    assert noise["largest_standard_error"] == 0.0 and noise["meets_requirement"] is None
    assert noise["prompts_needed"] is None and noise["prompts_needed_at_half"] == 1737
    assert "every validation scored 0 or 1" in validation_text(noise)


def test_selection_variants_are_registry_entries_with_their_own_experiment_names(tmp_path, capsys):
    assert set(DEFAULT_ALGOS) == {
        "poise", "poise_select", "poise_history", "rloo2", "dapo", "grpo", "poise_async", "grpo_async",
        "poise_fully_async", "grpo_fully_async",
    }
    assert len({ALGORITHMS[a].colour for a in DEFAULT_ALGOS}) == len(DEFAULT_ALGOS)
    extra = ["budget.rollouts_per_step=16"]
    for algo, mode in (("poise", "none"), ("poise_select", "probe"), ("poise_history", "history")):
        config = compose(algo, extra)
        assert config.poise.selection.mode == mode and config.trainer.v1.trainer_mode == "poise", algo
        assert read_algo_config(algo, extra).experiment_name == f"tiny_{algo}"
        assert read_algo_config(algo, extra).n == 2
    # rloo2, the probe's control: POISE's two rollouts with the sibling's reward as the baseline on every step.
    config = compose("rloo2", [*extra, "trainer.total_training_steps=9"])
    assert (config.trainer.v1.trainer_mode, config.actor_rollout_ref.rollout.n) == ("poise", 2)
    assert config.poise.bootstrap_steps == config.trainer.total_training_steps == 9
    assert read_algo_config("rloo2", extra).experiment_name == "tiny_rloo2"

    # The ablation owns what selects an algorithm only when that algorithm runs.
    with pytest.raises(SystemExit, match="--algos"):
        check_extra_overrides(["poise.selection.mode=none"], ["poise", "poise_select"])
    check_extra_overrides(["poise.selection.mode=none"], ["poise", "dapo"])

    # A user's experiment name would be shared by every algorithm: each run gets its algorithm's name added.
    shared = {a: algo_config(n=2, experiment_name="mine") for a in ("poise", "poise_select")}
    names = [
        next(o for o in run.overrides if o.startswith("trainer.experiment_name="))
        for run in plan_runs(["poise", "poise_select"], [3], tmp_path, [], shared)
    ]
    assert names == ["trainer.experiment_name=mine_poise_seed3", "trainer.experiment_name=mine_poise_select_seed3"]

    code = main(["--algos", "poise_select,poise_history", "--seeds", "0", "--output", str(tmp_path), "--dry-run"])
    assert code == 0
    out = capsys.readouterr().out
    assert "poise.selection.mode=probe algo_name=poise_select" in out
    assert "trainer.experiment_name=tiny_poise_select_seed0" in out
    assert "trainer.experiment_name=tiny_poise_history_seed0" in out
