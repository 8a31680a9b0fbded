"""The report stage on synthetic runs whose every number is computed by hand below, the merge of resumed
launches, and the driver's skip/resume logic with a stand-in for the main job (a real subprocess that writes
metrics like verl's file logger; the real main job runs in test_ablate_e2e.py)."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from ablate_helpers import BUDGET, algo_config, mark_done, write_launch

from poise_verl.ablate.cli import main
from poise_verl.ablate.launch import run_all
from poise_verl.ablate.metrics import (
    add_derived_columns,
    attempts,
    collect,
    load_metrics,
    validation_accuracy,
)
from poise_verl.ablate.plan import (
    DONE_MARKER,
    Run,
    check_extra_overrides,
    check_folder,
    plan_runs,
    read_algo_config,
)
from poise_verl.ablate.report import write_report

VAL = "val-core/tiny_arithmetic/acc/mean@1"

# Per (algo, seed): validation accuracy at steps 0, 2, 4; seconds per step and per validation; mean response
# length; DAPO groups dropped at step 1.
SYNTHETIC = {
    ("poise", 0): {"acc": (0.2, 0.5, 0.7), "step_s": 1.0, "test_s": 0.5, "length": 10.0, "dropped": 0},
    ("poise", 1): {"acc": (0.1, 0.3, 0.6), "step_s": 2.0, "test_s": 0.5, "length": 10.0, "dropped": 0},
    ("dapo", 0): {"acc": (0.2, 0.4, 0.6), "step_s": 3.0, "test_s": 1.0, "length": 20.0, "dropped": 1},
    ("dapo", 1): {"acc": (0.1, 0.5, 0.7), "step_s": 3.0, "test_s": 1.0, "length": 20.0, "dropped": 0},
}


def synthetic_rows(algo: str, acc, step_s, test_s, length, dropped) -> dict[int, dict[str, float]]:
    rows = {0: {VAL: acc[0]}}
    for step in range(1, 5):
        row = {
            "timing_s/step": step_s,
            "response_length/mean": length,
            "actor/grad_norm": 0.1 * step,
            "training/adv_std": 0.5 if algo == "dapo" else 0.4,
            "critic/advantages/max": 1.0,
            "critic/advantages/min": -1.0,
        }
        if step % 2 == 0:
            row.update({VAL: acc[step // 2], "timing_s/testing": test_s})
        if algo == "dapo" and step == 1 and dropped:
            row["training/filter_groups/evicted_samples"] = dropped
        if algo == "poise":
            row.update(
                {
                    "training/off_policy/trajectory_staleness_worst/mean": float(step % 2),
                    "timing_s/gen": 0.1 if step % 2 else 0.7,  # a stale batch was generated ahead: no wait
                    "poise/reward_mean": 0.5,
                    "poise/prediction_mean": 0.45,
                    "poise/probe_pearson": 0.3,
                }
            )
        rows[step] = row
    return rows


def synthetic_ablation(output: Path, algos=("poise", "dapo")) -> list[Run]:
    configs = {"poise": algo_config(n=2), "dapo": algo_config(n=16), "grpo": algo_config(n=16)}
    runs = plan_runs(list(algos), [0, 1], output, ["budget.rollouts_per_step=16"], configs)
    for run in runs:
        if (run.algo, run.seed) in SYNTHETIC:
            write_launch(
                run.folder, "20260101-000000-1", synthetic_rows(run.algo, **SYNTHETIC[(run.algo, run.seed)])
            )
            mark_done(run, wall_clock_s=60.0 + run.seed)
    return runs


def test_report_numbers_match_hand_computed_values(tmp_path):
    runs = synthetic_ablation(tmp_path, algos=("poise", "dapo", "grpo"))
    results = collect(runs)
    summary = write_report(
        results, ["poise", "dapo", "grpo"], tmp_path / "report", target_accuracy=None
    )

    # Target: DAPO's mean final accuracy, (0.6 + 0.7) / 2.
    assert summary["target_accuracy"]["value"] == pytest.approx(0.65)
    assert "dapo" in summary["target_accuracy"]["source"]

    poise, dapo = summary["algorithms"]["poise"], summary["algorithms"]["dapo"]
    assert poise["final_accuracy"]["mean"] == pytest.approx(0.65)
    assert poise["final_accuracy"]["sd"] == pytest.approx(math.sqrt(2 * 0.05**2))
    assert poise["start_accuracy"]["mean"] == pytest.approx(0.15)
    assert [r["final_accuracy"] for r in poise["runs"]] == pytest.approx([0.7, 0.6])

    # Training wall-clock from the metrics: 4 steps + 2 validations. POISE seed 0: 4 x 1 + 2 x 0.5 = 5 s;
    # seed 1: 4 x 2 + 1 = 9 s; DAPO: 4 x 3 + 2 x 1 = 14 s. Process wall-clock: the attempts' 60 and 61 s.
    assert [r["train_wall_clock_s"] for r in poise["runs"]] == pytest.approx([5.0, 9.0])
    assert [r["process_wall_clock_s"] for r in poise["runs"]] == pytest.approx([60.0, 61.0])
    # Tokens: 4 steps x 16 rollouts x length; DAPO seed 0 also 1 dropped group x 16 rollouts at step 1.
    assert [r["generated_tokens"] for r in poise["runs"]] == pytest.approx([640.0, 640.0])
    assert [r["generated_tokens"] for r in dapo["runs"]] == pytest.approx(
        [(4 * 16 + 16) * 20.0, 4 * 16 * 20.0]
    )

    # The seed-mean curves reach 0.65 at step 4 (step 2: POISE 0.4, DAPO 0.45).
    assert poise["to_target"]["step"] == 4 and dapo["to_target"]["step"] == 4
    assert poise["to_target"]["wall_clock_s"] == pytest.approx(7.0)
    assert dapo["to_target"]["wall_clock_s"] == pytest.approx(14.0)
    # Without the validations: POISE (4 x 1 + 4 x 2) / 2 = 6 s, DAPO 4 x 3 = 12 s.
    assert poise["to_target"]["steps_wall_clock_s"] == pytest.approx(6.0)
    assert dapo["to_target"]["steps_wall_clock_s"] == pytest.approx(12.0)
    assert [r["steps_wall_clock_s"] for r in poise["runs"]] == pytest.approx([4.0, 8.0])
    assert poise["to_target"]["tokens"] == pytest.approx(640.0)
    assert dapo["to_target"]["tokens"] == pytest.approx((1600.0 + 1280.0) / 2)
    ratio = summary["ratios"]["poise/dapo"]
    assert ratio["wall_clock_s"] == pytest.approx(0.5)
    assert ratio["steps_wall_clock_s"] == pytest.approx(0.5)
    assert ratio["tokens"] == pytest.approx(640.0 / 1440.0)

    # Phase medians: seconds per step and per validation as written; phases the metrics lack stay None.
    assert [r["phase_median_s"]["step"] for r in poise["runs"]] == pytest.approx([1.0, 2.0])
    assert poise["phase_median_s"]["step"]["mean"] == pytest.approx(1.5)
    assert dapo["phase_median_s"]["testing"]["mean"] == pytest.approx(1.0)
    assert poise["phase_median_s"]["gen"]["mean"] == pytest.approx(0.4)
    assert dapo["phase_median_s"]["gen"]["mean"] is None
    # The probe's Pearson over the last steps: 0.3 at every POISE step; DAPO has no probe.
    assert [r["probe_pearson_last_steps"] for r in poise["runs"]] == pytest.approx([0.3, 0.3])
    assert dapo["runs"][0]["probe_pearson_last_steps"] is None

    # Per-step statistics, means over the 4 steps: advantage variance 0.4^2 and 0.5^2, gradient norms 0.1-0.4;
    # POISE's staleness alternates 1, 0; neither logged partial rollouts.
    statistics = {algo: summary["algorithms"][algo]["step_statistics"] for algo in ("poise", "dapo")}
    assert statistics["poise"]["advantage_variance"]["mean"] == pytest.approx(0.16)
    assert statistics["dapo"]["advantage_variance"]["mean"] == pytest.approx(0.25)
    assert statistics["dapo"]["grad_norm"]["mean"] == pytest.approx(0.25)
    assert statistics["poise"]["staleness"]["mean"] == pytest.approx(0.5)
    assert statistics["dapo"]["staleness"]["mean"] is None and statistics["poise"]["partial_share"]["mean"] is None
    # The wait for a batch, 0.1 s at staleness 1 and 0.7 s at 0: told apart by the batch's staleness.
    assert statistics["poise"]["batch_wait"]["mean"] == pytest.approx(0.4)
    assert statistics["poise"]["batch_wait_fresh"]["mean"] == pytest.approx(0.7)
    assert statistics["poise"]["batch_wait_stale"]["mean"] == pytest.approx(0.1)
    assert statistics["dapo"]["batch_wait"]["mean"] is None and statistics["dapo"]["batch_wait_fresh"]["mean"] is None

    # Per seed: POISE seed 1 ends at 0.6 and never reaches 0.65.
    assert poise["runs"][0]["to_target"] == {"step": 4, "wall_clock_s": 5.0, "steps_wall_clock_s": 4.0, "tokens": 640.0}
    assert poise["runs"][1]["to_target"] is None
    # Each run's curve is kept: POISE seed 0 validates at steps 0, 2 (2 x 1 s + 0.5 s, 2 x 16 x 10 tokens), 4.
    assert poise["runs"][0]["validations"] == [
        {"step": 0, "accuracy": 0.2, "wall_clock_s": 0.0, "steps_wall_clock_s": 0.0, "tokens": 0.0},
        {"step": 2, "accuracy": 0.5, "wall_clock_s": 2.5, "steps_wall_clock_s": 2.0, "tokens": 320.0},
        {"step": 4, "accuracy": 0.7, "wall_clock_s": 5.0, "steps_wall_clock_s": 4.0, "tokens": 640.0},
    ]
    assert poise["seeds_reaching_target"] == 1

    # GRPO has no runs: reported, not invented.
    assert summary["algorithms"]["grpo"]["runs"] == []
    assert any("No metrics for: grpo" in note for note in summary["caveats"])
    assert any("2 seed(s)" in note for note in summary["caveats"])
    assert any("val_max_samples=16" in note for note in summary["caveats"])

    report = tmp_path / "report"
    for name in summary["plots"]:
        assert (report / name).stat().st_size > 5000, name
    assert {
        "accuracy_vs_wall_clock.png",
        "accuracy_vs_tokens.png",
        "grad_norm.png",
        "advantages.png",
        "poise_probe.png",
    } <= set(summary["plots"])
    on_disk = json.loads((report / "summary.json").read_text())  # strict JSON: no NaN anywhere
    assert on_disk["ratios"]["poise/dapo"]["wall_clock_s"] == pytest.approx(0.5)
    markdown = (report / "summary.md").read_text()
    assert (
        "0.650 ± 0.071" in markdown
        and "not reached" in markdown
        and "poise/dapo: wall-clock 0.50x (0.50x without validations)" in markdown
    )
    assert "| poise | 1.50 | 0.40 | n/a | n/a | n/a | 0.50 | 0: 0.50, 1: 0.50 |" in markdown  # no update_weights logged
    assert "poise seed 0 0.300, seed 1 0.300." in markdown


def test_an_unreachable_target_is_reported_as_not_reached(tmp_path):
    runs = synthetic_ablation(tmp_path)
    summary = write_report(
        collect(runs), ["poise", "dapo"], tmp_path / "report", target_accuracy=0.9
    )
    assert summary["target_accuracy"] == {"value": 0.9, "source": "--target-accuracy"}
    for algo in ("poise", "dapo"):
        assert summary["algorithms"][algo]["to_target"] is None
        assert summary["algorithms"][algo]["seeds_reaching_target"] == 0
    assert summary["ratios"]["poise/dapo"] == {
        "wall_clock_s": None,
        "steps_wall_clock_s": None,
        "tokens": None,
        "note": "poise: not reached; dapo: not reached",
    }
    markdown = (tmp_path / "report" / "summary.md").read_text()
    assert markdown.count("not reached") >= 6
    json.loads((tmp_path / "report" / "summary.json").read_text())


def test_a_resumed_launch_replaces_the_steps_it_redid(tmp_path):
    """Launch 1 logged steps 0-3 and died (checkpoint at step 2); launch 2 resumed at 2 and ran 3-4."""
    write_launch(
        tmp_path,
        "20260101-000000-1",
        {
            0: {VAL: 0.1},
            1: {"timing_s/step": 1.0},
            2: {"timing_s/step": 1.0, "timing_s/testing": 0.5, VAL: 0.3},
            3: {"timing_s/step": 9.0, "lost/metric": 1.0},
        },
    )
    write_launch(
        tmp_path,
        "20260101-000500-2",
        {
            2: {VAL: 0.31},  # verl validates again on resume, at the checkpoint's step
            3: {"timing_s/step": 2.0},
            4: {"timing_s/step": 2.0, "timing_s/testing": 0.5, VAL: 0.5},
        },
    )
    frame = load_metrics(tmp_path)
    assert list(frame.index) == [0, 1, 2, 3, 4]
    assert frame.loc[2, "timing_s/step"] == 1.0 and frame.loc[2, VAL] == 0.31
    assert frame.loc[3, "timing_s/step"] == 2.0 and "lost/metric" not in frame.columns
    derived = add_derived_columns(frame, algo_config(n=2))
    # 1 + (1 + 0.5) + 2 + (2 + 0.5): the lost 9 s of the interrupted step 3 are not training time.
    assert list(derived["train_wall_clock_s"]) == pytest.approx([0.0, 1.0, 2.5, 4.5, 7.0])
    assert list(derived["steps_wall_clock_s"]) == pytest.approx([0.0, 1.0, 2.0, 4.0, 6.0])


def test_validation_accuracy_averages_data_sources_and_prefers_acc(tmp_path):
    write_launch(
        tmp_path,
        "1",
        {
            0: {
                "val-core/aime/acc/mean@4": 0.2,
                "val-core/aime/acc/maj@4/mean": 0.9,
                "val-core/amc/acc/mean@4": 0.4,
                "val-core/other/reward/mean@1": 0.6,
                "val-core/amc/reward/mean@4": 0.99,
                "val-aux/aime/score/mean@4": 0.7,
            }
        },
    )
    accuracy = validation_accuracy(load_metrics(tmp_path))
    assert accuracy.loc[0] == pytest.approx((0.2 + 0.4 + 0.6) / 3)
    assert (
        validation_accuracy(load_metrics(tmp_path), "val-core/amc/reward/mean@4").loc[0] == 0.99
    )


FAKE_MAIN = textwrap.dedent('''
    """Stand-in for `python -m poise_verl.main`: logs metrics like verl's file logger. FAIL_ONCE_FLAG: the first
    launch of that run dies after step 1, as an interrupted run would."""
    import json, os, sys, time
    args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
    folder = args["trainer.default_local_dir"]
    os.makedirs(os.path.join(folder, "metrics"), exist_ok=True)
    flag = os.path.join(folder, "failed_once")
    fail = args.get("data.seed") == os.environ["FAIL_SEED"] and not os.path.exists(flag)
    first = 1 if os.path.exists(flag) else 0
    open(os.path.join(os.environ["TMPDIR"], "ckpt_0.lock"), "w").close()  # as verl's checkpoint lock
    with open(os.path.join(folder, "tmpdirs.txt"), "a") as out:
        out.write(os.environ["TMPDIR"] + "\\n")
    with open(os.path.join(folder, "metrics", f"{time.time_ns()}.jsonl"), "w") as out:
        for step in range(first, 3):
            data = {"timing_s/step": 1.0, "response_length/mean": 4.0}
            if step % 2 == 0:
                data["val-core/x/acc/mean@1"] = 0.1 * step
            out.write(json.dumps({"step": step, "data": data}) + "\\n")
            if fail and step == 1:
                open(flag, "w").close()
                print("dying at step 1", flush=True)
                sys.exit(3)
    print("finished", args["algo"], flush=True)
''')


def test_finished_runs_are_skipped_and_an_interrupted_one_is_relaunched(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "fake_main.py"
    fake.write_text(FAKE_MAIN)
    monkeypatch.setenv("FAIL_SEED", "1")
    configs = {"poise": algo_config(n=2)}
    runs = [
        dataclasses.replace(r, program=(str(fake),))
        for r in plan_runs(["poise"], [0, 1], tmp_path / "abl", [], configs)
    ]
    good, flaky = runs

    failed = run_all(runs, use_ray_temp_dir=False)
    assert failed == [flaky]
    assert good.status() == "done" and flaky.status() == "partial"
    marker = json.loads((good.folder / DONE_MARKER).read_text())
    assert marker["launches"] == 1 and marker["wall_clock_s"] > 0
    assert marker["command"][:2] == [sys.executable, str(fake)]
    assert "finished poise" in (good.folder / "log.txt").read_text()
    assert [a["returncode"] for a in attempts(flaky.folder)] == [3]

    failed = run_all(runs, use_ray_temp_dir=False)
    assert failed == []
    assert len(attempts(good.folder)) == 1  # skipped: not launched again
    assert [a["returncode"] for a in attempts(flaky.folder)] == [3, 0]
    marker = json.loads((flaky.folder / DONE_MARKER).read_text())
    assert marker["launches"] == 2
    assert marker["wall_clock_s"] == pytest.approx(
        sum(a["wall_clock_s"] for a in attempts(flaky.folder))
    )
    log = (flaky.folder / "log.txt").read_text()
    assert log.count("===== ablate launch") == 2 and "dying at step 1" in log
    # Each launch had a TMPDIR of its own, and it went with the launch, lock files and all.
    temp_dirs = [line for r in runs for line in (r.folder / "tmpdirs.txt").read_text().split()]
    assert len(set(temp_dirs)) == 3 and tempfile.gettempdir() not in temp_dirs
    assert not any(Path(d).exists() for d in temp_dirs)
    # Both launches' metrics merge into one trajectory 0..2, the redone step 1 counted once.
    frame = add_derived_columns(load_metrics(flaky.folder), configs["poise"])
    assert list(frame["train_wall_clock_s"]) == pytest.approx([0.0, 1.0, 2.0])

    capsys.readouterr()
    assert run_all(runs, use_ray_temp_dir=False) == []
    out = capsys.readouterr().out
    assert out.count("finished earlier, skipped") == 2
    assert "[1/2] poise seed 0" in out

    # The same folder with other overrides is refused rather than mixed.
    other = plan_runs(["poise"], [0], tmp_path / "abl", ["trainer.total_training_steps=9"], configs)[0]
    with pytest.raises(SystemExit, match="other overrides"):
        check_folder(other)


def test_seed_overrides_and_owned_keys(tmp_path):
    config = algo_config(n=2, logger=("console", "wandb"))
    (run,) = plan_runs(["poise"], [7], tmp_path, ["+recipe=x"], {"poise": config})
    assert run.overrides[:2] == ("algo=poise", "+recipe=x")
    for key in config.seed_keys:
        assert f"{key}=7" in run.overrides
    assert f"trainer.default_local_dir={tmp_path / 'runs' / 'poise' / 'seed_7'}" in run.overrides
    assert "trainer.experiment_name=tiny_seed7" in run.overrides
    assert "trainer.logger=[console,wandb,file]" in run.overrides  # the report needs the file logger
    with pytest.raises(SystemExit, match="--seeds"):
        check_extra_overrides(["data.seed=3"])
    with pytest.raises(SystemExit, match="--output"):
        check_extra_overrides(["trainer.default_local_dir=/x"])
    with pytest.raises(SystemExit, match="unknown algorithm"):
        main(["--algos", "poise,ppo", "--dry-run"])


def test_report_only_from_the_command_line(tmp_path, capsys):
    """`--report-only` composes the real configs, finds the runs by their overrides and writes the report."""
    output = tmp_path / "abl"
    configs = {
        a: read_algo_config(a, [f"budget.rollouts_per_step={BUDGET}"]) for a in ("poise", "dapo")
    }
    assert (configs["poise"].n, configs["dapo"].n) == (2, 16)
    assert "poise.probe.seed" in configs["poise"].seed_keys and "data.seed" in configs["dapo"].seed_keys
    for run in plan_runs(
        ["poise", "dapo"], [0, 1], output, [f"budget.rollouts_per_step={BUDGET}"], configs
    ):
        write_launch(run.folder, "1", synthetic_rows(run.algo, **SYNTHETIC[(run.algo, run.seed)]))
        mark_done(run, wall_clock_s=1.0)
    code = main(
        [
            "--algos",
            "poise,dapo",
            "--seeds",
            "0,1",
            "--output",
            str(output),
            "--report-only",
            "--",
            f"budget.rollouts_per_step={BUDGET}",
        ]
    )
    assert code == 0
    summary = json.loads((output / "report" / "summary.json").read_text())
    assert summary["ratios"]["poise/dapo"]["wall_clock_s"] == pytest.approx(0.5)
    assert "poise/dapo wall-clock to target: 0.50" in capsys.readouterr().out
