"""The main job trains for real on this CPU machine through verl's own trainer, with POISE or DAPO.

Each test launches `python -m poise_verl.main` (nothing mocked): Ray on loopback, verl's FSDP2 actor worker
group, the transformers rollout server, the feature-capture engine, the probe worker and the replay-buffer
actor. The assertions are what a user would check: metrics exist and are finite, the probe was refit, the
policy's weights moved, a run killed mid-checkpoint resumes from the checkpoint before, with its buffer, and
Ctrl-C stops everything it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from pathlib import Path

import psutil
import pytest
import torch
from e2e_runner import (
    SMALL_DEFAULT_MICRO_BATCHES,
    assert_finite,
    assert_stopped_by_ctrl_c,
    compose_config,
    composed_config,
    last_lines,
    run_main,
    start_main,
    step_line,
)
from safetensors.torch import load_file
from step_dumps import replay_probe_predictions

from poise_verl.startup.resume import check_resume
from poise_verl.verl_ext.feature_dump import load_step_dumps

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]

POISE_KEYS = [
    "poise/probe_mae",
    "poise/probe_pearson",
    "poise/buffer_rows",
    "training/adv_std",
    "poise/probe_refit",
    "timing_s/gen",
    "timing_s/old_log_prob",
    "timing_s/adv",
    "timing_s/update_actor",
    "timing_s/probe_predict",
    "timing_s/probe_refit_wait",
    "actor/pg_loss",
    "actor/grad_norm",
]


def _weights(path):
    state = torch.load(path, weights_only=False)
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in state.items()}


# The run also selects its prompts with the history filter (issue 13's baseline): every step draws twice the
# prompts, keeps its usual share, and the filter's per-prompt history must survive the resume.
HISTORY = ["poise.selection.mode=history"]
# 32 rollouts per step with the default micro-batch sizes (they follow the budget; fixed at 64 they refused it).
ROLLOUTS = 32
RUN = [f"budget.rollouts_per_step={ROLLOUTS}", "trainer.save_freq=2", "trainer.test_freq=-1", *HISTORY]
# Generous for a loaded 2-core machine: bounds on behaviour, not a benchmark.
STOP_BOUND_S = 90
STEP_BOUND_S = 900


def _history(checkpoint) -> dict:
    return torch.load(checkpoint / "poise_state.pt", weights_only=False)["selection"]["history"]["streaks"]


def _tracker(checkpoint_dir) -> str | None:
    path = checkpoint_dir / "latest_checkpointed_iteration.txt"
    return path.read_text().strip() if path.exists() else None


def _metrics_file(path) -> dict[int, dict[str, float]]:
    """{step: metrics} of one launch's metrics JSONL, its whole lines (the launch may be writing the last one)."""
    steps = {}
    for line in path.read_text().splitlines(keepends=True):
        if line.endswith("\n"):
            row = json.loads(line)
            steps[row["step"]] = row["data"]
    return steps


@pytest.mark.slow(launches=2)
def test_poise_trains_survives_a_kill_mid_checkpoint_resumes_and_stops_on_ctrl_c(tiny_assets, tmp_path):
    """A user's run, start to end, in two launches of the same command (and a third that stops before Ray):

    1. POISE trains with validation before step 1, saves at step 2 and is SIGKILLed in the middle of writing
       the checkpoint of step 4. The kill point is made certain, with no clock: ``global_step_4/data.pt`` is a
       FIFO, so the trainer blocks opening it after it wrote POISE's state and the actor, before verl's tracker
       file (``latest_checkpointed_iteration.txt``, written last) moves past step 2.
    2. The same command again, launched as a script's background job is (SIGINT ignored), resumes from step 2:
       verl restores the actor, POISE its probes, replay buffer and selection history. It overwrites the torn
       step-4 folder and saves it whole; then Ctrl-C (SIGINT to its process group, as a terminal sends it)
       stops the run and every process it started, and the last line says where the same command resumes.
    3. The evaluation command reads the checkpoint the trainer wrote; cut short, the same checkpoint stops the
       next launch before Ray, naming the file and the command that resumes from the one before it.

    The resumed run redoes steps 3 and 4 from step 2's checkpoint: both launches dump their steps
    (``poise.feature_dump_dir``, a key a resume may change), and the resumed steps equal the uninterrupted ones
    in what POISE's state decides: the same prompts (verl's data position and the selection history restored),
    probes fitted on the same buffer rows, and predictions that a probe replayed offline over the first launch's
    steps 1-2 and the resumed steps 3-4 reproduces. What differs is the responses: the rollout server samples
    anew (its random state restarts from ``rollout.seed``; tests/core/test_resume_equality.py compares the same
    state machine with the rollouts held fixed). The checkpoint also refuses, before Ray, a launch of another
    algorithm and one with another ``poise.*`` setting.
    """
    checkpoint_dir = tmp_path / "ckpt"
    torn = checkpoint_dir / "global_step_4"
    torn.mkdir(parents=True)
    os.mkfifo(torn / "data.pt")  # the trainer blocks here, mid-way through writing checkpoint 4

    first = start_main([*RUN, "trainer.total_training_steps=4", f"poise.feature_dump_dir={tmp_path / 'dump_1'}"],
                       tmp_path, small=SMALL_DEFAULT_MICRO_BATCHES)
    try:
        written = first.wait_for(step_line(2), STEP_BOUND_S) and first.wait_for(
            r"Saving checkpoint to .*global_step_4", STEP_BOUND_S
        )
        assert written, last_lines(first.log(), 40)
        # The actor's files of step 4 are written (the same names as step 2's) before data.pt is opened.
        actor_files = {p.name for p in (checkpoint_dir / "global_step_2" / "actor").iterdir()}
        actor_written = first.wait_until(
            lambda: actor_files <= {p.name for p in (torn / "actor").glob("*")}, STEP_BOUND_S
        )
        assert actor_written, last_lines(first.log(), 40)
        assert (torn / "poise_state.pt").exists()
        assert _tracker(checkpoint_dir) == "2", "the kill must land before the tracker moves to step 4"
        os.killpg(first.process.pid, signal.SIGKILL)
        first.finish(STOP_BOUND_S)  # SIGKILLs any process of the launch outside the group too
    finally:
        first.kill_all()
    assert first.process.returncode == -signal.SIGKILL
    assert _tracker(checkpoint_dir) == "2"
    (torn / "data.pt").unlink()
    (torn / "data.pt").write_bytes(b"torn")  # what a kill mid-write leaves

    # What the first launch logged before the kill: steps 1-3 (step 4's line comes after its checkpoint).
    (first_metrics_file,) = (checkpoint_dir / "metrics").glob("*.jsonl")
    first_metrics_text = first_metrics_file.read_text()
    metrics = _metrics_file(first_metrics_file)
    assert any(k.startswith("val-core/") for k in metrics[0]), "no validation before training"
    # Step 1 is a bootstrap step (RLOO); from step 2 the probe, fitted on step 1's rows, gives the baselines.
    assert metrics[1]["poise/phase_probe"] == 0.0 and metrics[2]["poise/phase_probe"] == 1.0
    for step in (2, 3):
        assert_finite(metrics[step], POISE_KEYS)
    assert metrics[3]["poise/probe_num_fits"] == 3.0
    assert metrics[3]["poise/buffer_rows"] == 3 * ROLLOUTS  # prompts x 2 per step: the budget, whatever was drawn
    prompts = ROLLOUTS // 2
    for step in (1, 2, 3):
        assert metrics[step]["poise/selection/active"] == 1.0
        selection = (metrics[step]["poise/selection/candidates"], metrics[step]["poise/selection/kept"])
        assert selection == (2.0 * prompts, float(prompts))
        assert 0.0 <= metrics[step]["poise/zero_variance_share"] <= 1.0
    history = _history(checkpoint_dir / "global_step_2")
    assert len(history) == 2 * prompts and set(history.values()) <= {0, 1}  # each kept prompt visited once
    # The actor's weights moved away from the tiny policy it started from.
    initial = load_file(tiny_assets / "model" / "model.safetensors")
    trained = _weights(checkpoint_dir / "global_step_2" / "actor" / "model_world_size_1_rank_0.pt")
    moved = max((trained[k].float() - initial[k].float()).abs().max().item() for k in initial if k in trained)
    assert moved > 0.0

    second = start_main(
        [*RUN, "trainer.total_training_steps=100", f"poise.feature_dump_dir={tmp_path / 'dump_2'}"], tmp_path,
        small=SMALL_DEFAULT_MICRO_BATCHES, sigint_ignored=True,
    )
    try:
        resumed = second.wait_for(step_line(4), STEP_BOUND_S)
        log = second.log()
        assert resumed, last_lines(log, 40)
        assert re.search(r"Resuming from .*global_step_2\b", log), last_lines(log, 40)
        assert re.search(
            rf"Restored POISE state from .*global_step_2/poise_state\.pt \({2 * ROLLOUTS} buffer rows\)", log
        )
        assert not re.search(step_line(1), log), "the resumed run started over"
        rewritten = second.wait_until(lambda: _tracker(checkpoint_dir) == "4", STEP_BOUND_S)
        assert rewritten, "the torn step-4 checkpoint was not rewritten"
        second_metrics_file = next(p for p in (checkpoint_dir / "metrics").glob("*.jsonl") if p != first_metrics_file)
        assert second.wait_until(lambda: 4 in _metrics_file(second_metrics_file), STEP_BOUND_S)
        # The CPU platform starts Ray's workers at the niceness of everything else (runtime.ray_worker_niceness),
        # not Ray's 15, at which any other work on the machine starves the run.
        workers = {}
        for process in second.processes():
            with contextlib.suppress(psutil.Error):  # a worker may exit meanwhile
                title = (process.cmdline() or [""])[0]
                if title.startswith("ray::"):
                    workers[f"{process.pid} {title}"] = process.nice()
        assert any("TaskRunner" in name for name in workers) and set(workers.values()) == {0}, workers
        returncode, left, log = second.interrupt(STOP_BOUND_S)
        # verl's workers left a ckpt_<hash>.lock in their temporary folder for every checkpoint folder they made:
        # the run's own folder, which went with the run, not the launch's (here the user's) TMPDIR.
        leftovers = [p.name for pattern in ("ckpt_*.lock", "poise-verl-run-*")
                     for p in Path(second.ray_dir).glob(pattern)]
        assert not leftovers, leftovers
    finally:
        second.kill_all()
    # The signal lands between steps: the run may have saved a later checkpoint than step 4 by then (steps take
    # well under a second here). The hint names the one verl's tracker points at, which is where it resumes.
    latest = int(_tracker(checkpoint_dir))
    assert latest >= 4
    assert_stopped_by_ctrl_c(returncode, left, log, resume_from=checkpoint_dir / f"global_step_{latest}")
    resumed_metrics = _metrics_file(second_metrics_file)
    assert resumed_metrics[4]["poise/buffer_rows"] == 4 * ROLLOUTS
    assert resumed_metrics[4]["poise/probe_num_fits"] == 4.0
    assert_finite(resumed_metrics[4], POISE_KEYS)
    assert set(history) < set(_history(checkpoint_dir / "global_step_4"))  # the restored history, plus more
    # The first launch's metrics survive the resume: its file is untouched, the second launch wrote its own.
    assert first_metrics_file.read_text() == first_metrics_text
    assert len(list((checkpoint_dir / "metrics").glob("*.jsonl"))) == 2

    # Steps 3 and 4, uninterrupted (first launch) and resumed from step 2 (second): what POISE's state decides.
    uninterrupted, resumed_steps = load_step_dumps(tmp_path / "dump_1"), load_step_dumps(tmp_path / "dump_2")
    assert sorted(uninterrupted) == [1, 2, 3, 4] and {3, 4} <= set(resumed_steps)
    for step in (3, 4):
        prompts = [sorted(tuple(ids.tolist()) for ids in run[step]["prompt_ids"]) for run in (uninterrupted,
                                                                                               resumed_steps)]
        assert prompts[0] == prompts[1], f"step {step}: the resumed run trained on other prompts"
        assert resumed_steps[step]["probe_rows"] == uninterrupted[step]["probe_rows"], step
    config = composed_config(tmp_path)
    joined = {1: uninterrupted[1], 2: uninterrupted[2], 3: resumed_steps[3], 4: resumed_steps[4]}
    compared, _ = replay_probe_predictions(config, joined)
    assert compared == 3  # steps 2-4: the resumed steps' probes were fitted on the first launch's rows, restored

    # The checkpoint refuses, before Ray, another algorithm and another poise setting (the check preflight runs).
    base = [*SMALL_DEFAULT_MICRO_BATCHES, *RUN, f"trainer.default_local_dir={checkpoint_dir}"]  # the command
    assert check_resume(compose_config(*base), is_poise=True) == []
    (problem,) = check_resume(compose_config(*base, "algo=dapo"), is_poise=False)
    assert problem.startswith(f"{checkpoint_dir / f'global_step_{latest}'} was written by algo=poise (poise); "
                              "this launch trains dapo"), problem
    (problem,) = check_resume(compose_config(*base, "poise.probe.ridge.alpha=1"), is_poise=True)
    assert "poise.probe.ridge.alpha: saved 100.0, this launch 1" in problem, problem

    # The evaluation command reads the checkpoint the trainer wrote: the actor's trained weights.
    from poise_verl.analysis.policy import load_policy
    from poise_verl.eval import main as evaluate

    step_dir = checkpoint_dir / "global_step_4"
    model, _, layout = load_policy(step_dir)
    assert layout.kind == "verl"
    saved = _weights(step_dir / "actor" / "model_world_size_1_rank_0.pt")
    loaded = model.state_dict()
    assert all(torch.equal(loaded[key], saved[key].to(loaded[key].dtype)) for key in saved if key in loaded)
    evaluate([
        str(step_dir), "--data", str(tiny_assets / "data" / "val.parquet"), "--limit", "16", "--k", "2",
        "--max-new-tokens", "24", "--no-progress", "--output", str(tmp_path / "eval"),
    ])
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["settings"]["checkpoint_kind"] == "verl"
    assert summary["results"]
    # Pointed at the run's folder instead of a step folder, it names the step folders and the one to take.
    with pytest.raises(SystemExit) as refused:
        evaluate([str(checkpoint_dir), "--data", str(tiny_assets / "data" / "val.parquet"), "--no-progress",
                  "--output", str(tmp_path / "eval_run")])
    message = str(refused.value)
    assert f"{checkpoint_dir} is a training run's folder, not a model" in message, message
    assert "global_step_2, global_step_4" in message
    assert f"Pass one of them, e.g. {checkpoint_dir / f'global_step_{latest}'} (the last checkpoint" in message

    # A checkpoint cut short (the actor's weights) stops the next launch before Ray, naming the file and the
    # command that resumes from the previous checkpoint, instead of torch's zip-archive traceback.
    cut = checkpoint_dir / f"global_step_{latest}"
    actor_file = cut / "actor" / "model_world_size_1_rank_0.pt"
    actor_file.write_bytes(actor_file.read_bytes()[: actor_file.stat().st_size // 2])
    third = run_main([*RUN, "trainer.total_training_steps=100"], tmp_path, small=SMALL_DEFAULT_MICRO_BATCHES,
                     timeout=300)
    assert third.returncode != 0
    tail = last_lines(third.log, 2)
    assert f"the checkpoint {cut} is unreadable: actor/model_world_size_1_rank_0.pt is not a whole torch" in tail
    assert (
        "Resume from the previous checkpoint with the same command plus trainer.resume_mode=resume_path "
        f"trainer.resume_from_path={checkpoint_dir / f'global_step_{latest - 2}'}" in tail
    ), tail
    assert "PytorchStreamReader" not in third.log and "Started a local Ray instance" not in third.log


# The project's reward, until the test creates the file ZERO_FLAG names: then every rollout scores 0.
REWARD_THAT_DIES = """
import os

from poise_verl.tiny.reward import compute_score as arithmetic


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    if os.path.exists(os.environ["ZERO_FLAG"]):
        return 0.0
    return arithmetic(data_source, solution_str, ground_truth, extra_info, **kwargs)
"""


def test_dapo_trains_at_the_same_rollout_budget_and_stops_when_it_cannot_fill_a_batch(tiny_assets, tmp_path):
    """DAPO trains at POISE's rollout budget; when the reward stops telling rollouts apart (the test switches it to
    0 after step 2), dynamic sampling cannot fill the next step and the run stops with an error that says so."""
    reward = tmp_path / "reward_that_dies.py"
    reward.write_text(REWARD_THAT_DIES)
    flag = tmp_path / "zero_from_now_on"
    run = start_main(
        [
            "algo=dapo",
            "trainer.total_training_steps=100",
            "trainer.save_freq=-1",
            "trainer.val_before_train=false",
            "trainer.test_freq=-1",
            "algorithm.filter_groups.max_num_gen_batches=2",
            # DAPO's overlong penalty alone would tell rollouts of different lengths apart.
            "reward.reward_kwargs.overlong_buffer_cfg.enable=false",
            f"reward.custom_reward_function.path={reward}",
            f"+ray_kwargs.ray_init.runtime_env.env_vars.ZERO_FLAG={flag}",
        ],
        tmp_path,
    )
    try:
        trained = run.wait_for(step_line(2), STEP_BOUND_S)
        assert trained, last_lines(run.log(), 40)
        flag.touch()
        finished = run.finish(STEP_BOUND_S)
    finally:
        run.kill_all()
    assert finished.returncode != 0
    stopped = re.search(r"DAPO dynamic sampling could not fill step (\d+)", finished.log)
    assert stopped, last_lines(finished.log, 20)
    assert int(stopped.group(1)) >= 3  # a step already generating when the reward died may still fill
    metrics = finished.metrics()
    for step in (1, 2):
        assert_finite(
            metrics[step], ["actor/pg_loss", "actor/grad_norm", "critic/score/mean", "timing_s/gen"]
        )
        assert not any(k.startswith("poise/") for k in metrics[step])
    # 16 rollouts per step, as for POISE: one prompt with n=16, in the config the run composed.
    config = composed_config(tmp_path)
    assert (config.actor_rollout_ref.rollout.n, config.data.train_batch_size) == (16, 1)
    assert config.reward.custom_reward_function.reward_kwargs.incorrect_score == -1.0
