"""Everything the driver can check from the config, the model's files and the data files, it checks before Ray.

Issue 11, items 2 and 3: a data row without ``reward_model.ground_truth``, a missing data file, a probe layer
past the model's depth and a ``trainer.resume_from_path`` that does not exist each took 40-100 s of cluster
start-up before failing, the first with verl's unrelated "no materializable trajectories". The first test
runs the real entry point; the others call the check functions on real files (the tiny model, its tokenizer,
real parquet and jsonl files, real checkpoint folders).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from e2e_runner import compose_config, last_lines, run_main

from poise_verl.startup import PreflightError, preflight
from poise_verl.startup.inputs import (
    check_data_file,
    check_model,
    check_prompt_lengths,
    check_reward_function,
)
from poise_verl.startup.resume import check_resume

pytestmark = pytest.mark.timeout(600)


def _rows(tiny_assets: Path, count: int = 16) -> list[dict]:
    return pq.read_table(tiny_assets / "data" / "train.parquet").slice(0, count).to_pylist()


def _write(path: Path, rows: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _without_ground_truth(rows: list[dict], index: int) -> list[dict]:
    rows = [dict(row) for row in rows]
    rows[index]["reward_model"] = {"style": "rule"}  # the key is absent, as in a hand-made dataset
    return rows


def test_the_entry_point_lists_every_problem_before_starting_ray(tiny_assets, tmp_path):
    train = _write(tmp_path / "train.parquet", _without_ground_truth(_rows(tiny_assets), 5))
    run = run_main(
        [
            f"data.train_files={train}",
            f"data.val_files={tmp_path / 'missing_val.parquet'}",
            "poise.probe_layer=4",
            "trainer.resume_mode=resume_path",
            f"trainer.resume_from_path={tmp_path / 'ckpt' / 'global_step_3'}",
        ],
        tmp_path,
        timeout=300,
    )
    assert run.returncode != 0
    tail = last_lines(run.log, 6)
    assert "stopped before starting Ray, 4 problem(s) to fix" in tail, tail
    assert re.search(
        rf"data.train_files: {re.escape(str(train))} row 5 \(0-based; 1 of 16 rows\) has no "
        r"reward_model.ground_truth",
        tail,
    ), tail
    assert f"data.val_files: {tmp_path / 'missing_val.parquet'} does not exist" in tail
    assert "poise.probe_layer=4, but the model at" in tail and "has 4 decoder layers" in tail
    assert "choose a layer in 0..3" in tail
    assert f"checkpoint folder {tmp_path / 'ckpt' / 'global_step_3'} does not exist" in tail
    assert "ray init kwargs" not in run.log and "Started a local Ray instance" not in run.log


def test_data_rows_verl_cannot_use_are_named_by_file_and_row(tiny_assets, tmp_path):
    rows = _rows(tiny_assets)
    kwargs = {"prompt_key": "prompt", "domain_key": "ability"}

    good = _write(tmp_path / "good.parquet", rows)
    assert check_data_file(str(good), "data.train_files", **kwargs) == ([], 16)

    missing = _write(tmp_path / "no_answer.parquet", _without_ground_truth(rows, 11))
    (problem,), _ = check_data_file(str(missing), "data.train_files", **kwargs)
    assert (
        f"data.train_files: {missing} row 11 (0-based; 1 of 16 rows) has no reward_model.ground_truth"
        in problem
    )
    assert "Fix or drop those rows" in problem

    empty_prompt = [dict(row) for row in rows]
    empty_prompt[7]["prompt"] = []
    (problem,), _ = check_data_file(
        str(_write(tmp_path / "p.parquet", empty_prompt)), "data.val_files", **kwargs
    )
    assert "row 7 (0-based; 1 of 16 rows) has no a non-empty list of {role, content} messages" in problem

    no_field = [{**row, "reward_model": {"style": "rule"}} for row in rows]
    (problem,), _ = check_data_file(
        str(_write(tmp_path / "nf.parquet", no_field)), "data.train_files", **kwargs
    )
    assert (
        "column reward_model is struct<style: string>, but verl reads reward_model['ground_truth']" in problem
    )

    text_prompt = [{**row, "prompt": row["prompt"][0]["content"]} for row in rows]
    (problem,), _ = check_data_file(
        str(_write(tmp_path / "t.parquet", text_prompt)), "data.train_files", **kwargs
    )
    assert "column prompt is string, but verl reads chat messages" in problem

    no_domain = [{k: v for k, v in row.items() if k != "ability"} for row in rows]
    (problem,), _ = check_data_file(
        str(_write(tmp_path / "d.parquet", no_domain)), "data.train_files", **kwargs
    )
    assert "has no column(s) ['ability']" in problem and "poise.buffer.domain_key=ability" in problem

    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("\n".join(json.dumps(row) for row in _without_ground_truth(rows, 2)))
    (problem,), _ = check_data_file(str(jsonl), "data.train_files", **kwargs)
    assert f"{jsonl} row 2 (0-based; 1 of 16 rows) has no reward_model.ground_truth" in problem

    (problem,), _ = check_data_file(str(tmp_path), "data.train_files", **kwargs)
    assert "does not exist (a folder: name the .parquet file itself)" in problem
    csv = tmp_path / "rows.csv"
    csv.write_text("a,b\n")
    (problem,), _ = check_data_file(str(csv), "data.train_files", **kwargs)
    assert "is not a .parquet, .json or .jsonl file" in problem


def test_too_few_rows_for_one_step(tiny_assets, tmp_path):
    small = _write(tmp_path / "small.parquet", _rows(tiny_assets, 8))
    config = compose_config(f"data.train_files={small}", f"trainer.default_local_dir={tmp_path}/ckpt")
    with pytest.raises(PreflightError) as stop:
        preflight(config)
    assert "data.train_files hold 8 usable row(s), fewer than one step's data.train_batch_size=64" in str(
        stop.value
    )


def test_model_checks_read_its_config_and_tokenizer(tiny_assets, tmp_path):
    assert check_model(compose_config("poise.probe_layer=3"), is_poise=True) == []
    (problem,) = check_model(compose_config("poise.probe_layer=7"), is_poise=True)
    assert (
        problem.startswith("poise.probe_layer=7, but the model at ") and "choose a layer in 0..3" in problem
    )
    assert check_model(compose_config("poise.probe_layer=7"), is_poise=False) == []  # DAPO reads no layer

    # The end-of-thinking marker may be several tokens (the tiny tokenizer writes 'boxed' as five), never none and
    # never the unknown token ('z' is not in the tiny vocabulary): the trainer could then never find it.
    assert check_model(compose_config("poise.end_of_thinking_token=boxed"), is_poise=True) == []
    (problem,) = check_model(compose_config("poise.end_of_thinking_token=zz"), is_poise=True)
    assert "poise.end_of_thinking_token='zz' encodes to the tokenizer's unknown token" in problem
    assert "the tokenizer at " in problem
    (problem,) = check_model(compose_config("poise.end_of_thinking_token=''"), is_poise=True)
    assert "poise.end_of_thinking_token='' encodes to no token" in problem

    (problem,) = check_model(
        compose_config(f"actor_rollout_ref.model.path={tmp_path}/nothing"), is_poise=True
    )
    assert f"actor_rollout_ref.model.path={tmp_path}/nothing does not exist" in problem
    # A hub id is left to the workers, which download it.
    assert check_model(compose_config("actor_rollout_ref.model.path=Qwen/Qwen3-4B"), is_poise=True) == []


def _checkpoint(folder: Path, step: int, poise_state: bool = True) -> Path:
    step_folder = folder / f"global_step_{step}"
    (step_folder / "actor").mkdir(parents=True)
    if poise_state:
        (step_folder / "poise_state.pt").write_bytes(b"")
    return step_folder


def test_resume_checks_find_the_checkpoint_or_say_what_is_there(tmp_path):
    ckpt = tmp_path / "ckpt"
    base = f"trainer.default_local_dir={ckpt}"
    assert check_resume(compose_config(base), is_poise=True) == []  # nothing saved yet: a fresh start

    _checkpoint(ckpt, 2)
    _checkpoint(ckpt, 4, poise_state=False)
    (problem,) = check_resume(
        compose_config(
            base, "trainer.resume_mode=resume_path", f"trainer.resume_from_path={ckpt}/global_step_3"
        ),
        is_poise=True,
    )
    assert (
        f"checkpoint folder {ckpt}/global_step_3 does not exist; {ckpt} holds global_step_2, global_step_4"
        in (problem)
    )
    (problem,) = check_resume(compose_config(base, "trainer.resume_mode=resume_path"), is_poise=True)
    assert "needs trainer.resume_from_path=<run folder>/global_step_N" in problem

    (ckpt / "latest_checkpointed_iteration.txt").write_text("4")
    (problem,) = check_resume(compose_config(base), is_poise=True)
    assert f"{ckpt}/global_step_4 has no poise_state.pt (probe and replay buffer)" in problem
    assert check_resume(compose_config(base), is_poise=False) == []  # DAPO checkpoints have none

    (ckpt / "latest_checkpointed_iteration.txt").write_text("6")
    (problem,) = check_resume(compose_config(base), is_poise=True)
    assert f"checkpoint folder {ckpt}/global_step_6 does not exist" in problem
    assert check_resume(compose_config(base, "trainer.resume_mode=disable"), is_poise=True) == []


def test_reward_function_file_and_name(tmp_path):
    reward = tmp_path / "reward.py"
    reward.write_text(
        "import math\n\ndef score(data_source, solution_str, ground_truth, extra_info=None):\n    return 1.0\n"
    )
    key = "reward.custom_reward_function"
    assert check_reward_function(compose_config(f"{key}.path={reward}", f"{key}.name=score")) == []
    (problem,) = check_reward_function(compose_config(f"{key}.path={reward}"))
    assert (
        f"reward.custom_reward_function.name='compute_score' is not defined in {reward} (its functions: "
        in problem
    )
    (problem,) = check_reward_function(compose_config(f"{key}.path={tmp_path}/none.py"))
    assert f"reward.custom_reward_function.path={tmp_path}/none.py does not exist" in problem


def _with_long_prompt(rows: list[dict], index: int, characters: int) -> list[dict]:
    rows = [dict(row) for row in rows]
    rows[index]["prompt"] = [{"role": "user", "content": "1+" * (characters // 2) + "1="}]
    return rows


def test_an_overlong_prompt_under_truncation_error_is_named_with_its_row_and_length(tiny_assets, tmp_path):
    """verl 0.9.1's rollout cuts an over-long prompt to its last tokens with one warning in a worker's log, whatever
    data.truncation says; the start-up check measures every prompt as the rollout builds it instead."""
    from transformers import AutoTokenizer

    rows = _with_long_prompt(_rows(tiny_assets, 80), 5, 800)
    train = _write(tmp_path / "long.parquet", rows)
    base = [f"data.train_files={train}", "data.max_prompt_length=16"]
    (problem,) = check_prompt_lengths(compose_config(*base, "data.truncation=error"))
    # The length the rollout sees: the tokenizer's chat template with the generation prompt, as verl applies it.
    tokenizer = AutoTokenizer.from_pretrained(tiny_assets / "model")
    ids = tokenizer.apply_chat_template(rows[5]["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
    length = len(ids)
    assert length > 800
    assert problem.startswith(
        f"data.train_files: {train} row 5 (0-based; 1 of 80 rows over the limit) is a prompt of {length} tokens "
        "with the chat template, longer than data.max_prompt_length=16, and data.truncation=error."
    ), problem
    assert "data.filter_overlong_prompts=true" in problem and "data.truncation=left" in problem

    # Honoured when the user chose them: verl's dataset drops the rows, or the rollout keeps their end.
    assert check_prompt_lengths(compose_config(*base, "data.filter_overlong_prompts=true")) == []
    assert check_prompt_lengths(compose_config(*base, "data.truncation=left")) == []
    (problem,) = check_prompt_lengths(compose_config(*base, "data.truncation=right"))
    assert "data.truncation=right: verl 0.9.1's rollout cuts over-long prompts on the left" in problem
    # Every row within the limit: nothing to say.
    assert check_prompt_lengths(compose_config(base[0], f"data.max_prompt_length={length}")) == []


def test_the_entry_point_refuses_an_overlong_prompt_before_ray(tiny_assets, tmp_path):
    train = _write(tmp_path / "long.parquet", _with_long_prompt(_rows(tiny_assets, 80), 5, 800))
    run = run_main([f"data.train_files={train}", "data.truncation=error"], tmp_path, timeout=300)
    assert run.returncode != 0
    tail = last_lines(run.log, 2)
    assert "stopped before starting Ray, 1 problem(s) to fix" in tail, tail
    assert f"data.train_files: {train} row 5 (0-based; 1 of 80 rows over the limit)" in tail, tail
    assert "Started a local Ray instance" not in run.log


def test_a_checkpoint_cut_short_is_named_with_the_checkpoint_to_resume_instead(tmp_path):
    import torch

    ckpt = tmp_path / "ckpt"
    for step in (2, 4, 6):
        folder = ckpt / f"global_step_{step}"
        (folder / "actor").mkdir(parents=True)
        torch.save({"w": torch.ones(64)}, folder / "actor" / "model_world_size_1_rank_0.pt")
        torch.save({"probe": {}}, folder / "poise_state.pt")
    (ckpt / "latest_checkpointed_iteration.txt").write_text("6")
    config = compose_config(f"trainer.default_local_dir={ckpt}")
    assert check_resume(config, is_poise=True) == []
    for step in (6, 4):  # the latest and the one before it were cut short: step 2 is the one to resume
        model = ckpt / f"global_step_{step}" / "actor" / "model_world_size_1_rank_0.pt"
        model.write_bytes(model.read_bytes()[:200])
    (problem,) = check_resume(config, is_poise=True)
    assert problem == (
        f"{ckpt}/latest_checkpointed_iteration.txt (trainer.resume_mode=auto): the checkpoint {ckpt}/global_step_6 "
        "is unreadable: actor/model_world_size_1_rank_0.pt is not a whole torch archive (its write was cut short). "
        "Resume from the previous checkpoint with the same command plus trainer.resume_mode=resume_path "
        f"trainer.resume_from_path={ckpt}/global_step_2, or start fresh with trainer.resume_mode=disable (or a new "
        "trainer.default_local_dir)"
    )
    # The command it gives passes the same check.
    assert check_resume(
        compose_config(
            f"trainer.default_local_dir={ckpt}", "trainer.resume_mode=resume_path",
            f"trainer.resume_from_path={ckpt}/global_step_2",
        ),
        is_poise=True,
    ) == []


def test_a_checkpoint_resumes_only_under_the_algorithm_that_wrote_it(tmp_path):
    ckpt = tmp_path / "ckpt"
    folder = _checkpoint(ckpt, 2, poise_state=False)
    (ckpt / "latest_checkpointed_iteration.txt").write_text("2")
    base = f"trainer.default_local_dir={ckpt}"
    for written_by, identity in (("poise", "poise"), ("dapo", "dapo"), ("grpo", "grpo")):
        (folder / "run_identity.json").write_text(
            json.dumps({"algorithm": identity, "algo_name": written_by, "trainer_mode": written_by})
        )
        for launched in ("poise", "dapo", "grpo"):
            if launched == "poise" and written_by == "poise":
                continue  # needs a POISE state: the settings test below
            problems = check_resume(compose_config(base, f"algo={launched}"), is_poise=launched == "poise")
            if launched == written_by:
                assert problems == [], problems
            elif launched == "poise":  # refused as before: no probes or buffer to resume
                assert "has no poise_state.pt" in problems[0], problems
            else:
                assert problems == [(
                    f"{folder} was written by algo={written_by} ({identity}); this launch trains {launched} "
                    f"(algo={launched}). Resuming would train {launched} on from another algorithm's weights, "
                    f"optimizer state and data position: resume it with algo={written_by}, or start fresh: a new "
                    "trainer.default_local_dir (or trainer.resume_mode=disable)"
                )], problems
    # The asynchronous modes train the same algorithms: a POISE checkpoint resumes under poise_async.
    (folder / "run_identity.json").write_text(json.dumps({"algorithm": "grpo", "algo_name": "grpo"}))
    assert check_resume(compose_config(base, "algo=grpo_async"), is_poise=False) == []
    # A checkpoint from before run_identity.json existed: POISE's own file still tells a POISE one apart.
    (folder / "run_identity.json").unlink()
    import torch

    torch.save({"probe": {}}, folder / "poise_state.pt")
    (problem,) = check_resume(compose_config(base, "algo=dapo"), is_poise=False)
    assert problem.startswith(f"{folder} was written by the poise algorithm (poise); this launch trains dapo")


def test_a_poise_checkpoint_resumes_only_with_the_poise_settings_it_was_trained_with(tmp_path):
    from dataclasses import asdict

    import torch

    from poise_verl.config import PoiseSettings

    ckpt = tmp_path / "ckpt"
    folder = _checkpoint(ckpt, 2, poise_state=False)
    (ckpt / "latest_checkpointed_iteration.txt").write_text("2")
    base = f"trainer.default_local_dir={ckpt}"
    saved = asdict(PoiseSettings.from_config(compose_config(base, "poise.probe.ridge.alpha=100").poise))
    torch.save({"settings": saved, "probe": {}, "buffer": {"rows": torch.zeros(4, 8)}}, folder / "poise_state.pt")
    assert check_resume(compose_config(base, "poise.probe.ridge.alpha=100"), is_poise=True) == []
    # Where the run writes its diagnostics may change; nothing it learns depends on it.
    assert check_resume(
        compose_config(base, "poise.probe.ridge.alpha=100", f"poise.feature_dump_dir={tmp_path}"), is_poise=True
    ) == []
    (problem,) = check_resume(
        compose_config(base, "poise.probe.ridge.alpha=10", "+poise.buffer.capacity.physics=500"), is_poise=True
    )
    assert problem.startswith(f"{folder} was trained with other poise settings than this launch sets"), problem
    assert "    poise.buffer.capacity: saved {" in problem and "'physics': 500}" in problem
    assert "    poise.probe.ridge.alpha: saved 100, this launch 10" in problem
    assert problem.endswith(
        "Resume with the saved values, or start fresh: a new trainer.default_local_dir (or trainer.resume_mode=disable)"
    )


def test_a_checkpoint_older_than_a_poise_key_resumes_under_the_keys_earlier_behaviour():
    """A key added since a checkpoint was written (poise.entropy_split) is missing from its saved settings: the
    value that does what the run did then resumes it; another value is a change, named with both."""
    from dataclasses import asdict

    from poise_verl.config import PoiseSettings, changed_poise_settings

    configured = asdict(PoiseSettings.from_config(compose_config().poise))
    saved = {key: value for key, value in configured.items() if key != "entropy_split"}
    assert configured["entropy_split"] == "end_of_thinking"
    assert changed_poise_settings(saved, configured) == []
    official = {**configured, "entropy_split": "official_text"}
    assert changed_poise_settings(saved, official) == [("poise.entropy_split", "end_of_thinking", "official_text")]
