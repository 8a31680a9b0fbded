"""`python -m poise_verl.data.prepare` on fixture files in each published format, and on malformed ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from poise_verl.data.prepare import VERL_SCHEMA, main
from poise_verl.data.sources import BOXED_INSTRUCTION, DATASETS

REPO_ROOT = Path(__file__).resolve().parents[2]

# name, input fixtures, expected ground truths in output order.
CONVERSIONS = [
    ("dapo_math_17k", ["dapo_math_17k.parquet"], ["24", "5", "9", "2", "17"]),
    ("aime24", ["aime24_huggingfaceh4.parquet"], ["401", "001", "12", "016", "24"]),
    ("aime24", ["aime24_maxwell_jia.parquet"], ["401", "1", "12", "16", "24"]),
    ("aime25", ["aime2025-I.jsonl", "aime2025-II.jsonl"], ["24", "47", "625", "01", "120", "15"]),
    ("aime25", ["aime25_matharena.parquet"], ["120", "210", "243"]),
    ("amc", ["amc.parquet"], ["142", "0.5", "3", "-2", "11", "1.25"]),
    ("math500", ["math500.jsonl"], ["\\frac{1}{2}", "10\\%", "(3,-1)", "\\text{(C)}", "\\sqrt{2}", "5"]),
]


def _prepare(name: str, inputs: list[Path], output: Path, *extra: str) -> int:
    return main([name, "--input", *map(str, inputs), "--output", str(output), *extra])


@pytest.mark.parametrize(("name", "inputs", "answers"), CONVERSIONS, ids=[c[1][0] for c in CONVERSIONS])
def test_each_published_format_converts_to_verl_rows(name, inputs, answers, fixtures, tmp_path):
    output = tmp_path / "out.parquet"
    assert _prepare(name, [fixtures / f for f in inputs], output) == 0

    assert pq.read_schema(output).equals(VERL_SCHEMA)
    frame = pd.read_parquet(output)
    spec = DATASETS[name]
    assert list(frame.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    assert (frame["data_source"] == spec.data_source).all()
    assert (frame["ability"] == "math").all()
    assert [row["ground_truth"] for row in frame["reward_model"]] == answers
    assert all(row["style"] == "rule" for row in frame["reward_model"])
    for position, (prompt, extra_info) in enumerate(zip(frame["prompt"], frame["extra_info"], strict=True)):
        (message,) = list(prompt)
        assert message["role"] == "user"
        assert message["content"] == f"{extra_info['question']} {BOXED_INSTRUCTION}"
        assert extra_info["question"] and extra_info["question"] == extra_info["question"].strip()
        assert extra_info["split"] == spec.split
        assert extra_info["index"] == position
        assert extra_info["source_id"]
        assert isinstance(json.loads(extra_info["metadata"]), dict)


def test_dapo_prompt_is_unwrapped_and_repeats_dropped(fixtures, tmp_path, capsys):
    output = tmp_path / "dapo.parquet"
    assert _prepare("dapo_math_17k", [fixtures / "dapo_math_17k.parquet"], output) == 0

    frame = pd.read_parquet(output)
    contents = [next(iter(prompt))["content"] for prompt in frame["prompt"]]
    assert contents[0] == f"How many positive divisors does $360$ have? {BOXED_INSTRUCTION}"
    assert not any("Answer:" in content for content in contents)
    assert frame["extra_info"][0]["source_id"] == "9a1c0000-0000-4000-8000-000000000000"
    assert frame["extra_info"][0]["split"] == "train"
    out = capsys.readouterr().out
    assert "11 rows read" in out
    assert "6 repeats of an earlier problem dropped (1 of them with a different answer" in out
    assert "5 rows written" in out


def test_an_unrecognised_answer_wrapper_is_reported(tmp_path, capsys):
    source = tmp_path / "variant.jsonl"
    wrapped = 'Solve this. What is $1+1$?\n\nRemember to put your answer on its own line after "Answer:".'
    source.write_text(json.dumps({"problem": wrapped, "answer": "2"}) + "\n")
    assert _prepare("dapo_math_17k", [source], tmp_path / "out.parquet") == 0
    assert "warning: 1 problems still ask for an `Answer:` line" in capsys.readouterr().out


def test_metadata_keeps_dataset_specific_columns(fixtures, tmp_path):
    output = tmp_path / "math500.parquet"
    assert _prepare("math500", [fixtures / "math500.jsonl"], output) == 0
    extra_info = pd.read_parquet(output)["extra_info"][0]
    assert extra_info["source_id"] == "test/prealgebra/101.json"
    assert json.loads(extra_info["metadata"]) == {"level": 1, "subject": "Prealgebra"}


def test_rows_without_an_identifier_are_named_by_file_and_row(fixtures, tmp_path):
    output = tmp_path / "aime25.parquet"
    assert _prepare("aime25", [fixtures / "aime2025-I.jsonl", fixtures / "aime2025-II.jsonl"], output) == 0
    source_ids = [extra_info["source_id"] for extra_info in pd.read_parquet(output)["extra_info"]]
    assert source_ids[0] == "aime2025-I.jsonl:0"
    assert source_ids[3] == "aime2025-II.jsonl:0"


def test_limit_keeps_the_first_problems(fixtures, tmp_path, capsys):
    output = tmp_path / "dapo.parquet"
    assert _prepare("dapo_math_17k", [fixtures / "dapo_math_17k.parquet"], output, "--limit", "2") == 0
    frame = pd.read_parquet(output)
    assert [row["ground_truth"] for row in frame["reward_model"]] == ["24", "5"]
    assert "stopped at --limit 2" in capsys.readouterr().out


def test_a_verl_shaped_file_is_read_back(fixtures, tmp_path):
    """Any dataset accepts verl parquet, including our own output: converting twice changes nothing."""
    first, second = tmp_path / "first.parquet", tmp_path / "second.parquet"
    assert _prepare("aime24", [fixtures / "aime24_huggingfaceh4.parquet"], first) == 0
    assert _prepare("aime24", [first], second) == 0
    a, b = pd.read_parquet(first), pd.read_parquet(second)
    assert [list(p) for p in a["prompt"]] == [list(p) for p in b["prompt"]]
    assert list(a["reward_model"]) == list(b["reward_model"])


# Malformed inputs: each error names the file and, where one row is at fault, the row.
ERRORS = [
    (
        "bad_columns.jsonl",
        (
            "bad_columns.jsonl: no column for the problem; expected one of [problem, Problem, question, prompt], "
            "found [query, target]"
        ),
    ),
    ("bad_empty_problem.jsonl", "bad_empty_problem.jsonl: row 1 (line 3): problem is missing or blank"),
    ("bad_missing_answer.parquet", "bad_missing_answer.parquet: row 2: answer is missing"),
    ("bad_invalid_json.jsonl", "bad_invalid_json.jsonl: row 1 (line 2): not valid JSON"),
    ("bad_no_user_message.parquet", "bad_no_user_message.parquet: row 0: problem is missing or blank"),
    ("bad_not_parquet.parquet", "bad_not_parquet.parquet: not a readable parquet file"),
    ("bad_format.csv", "bad_format.csv: unsupported file type '.csv'"),
    ("no_such_file.jsonl", "no_such_file.jsonl: no such file"),
]


@pytest.mark.parametrize(("fixture", "message"), ERRORS, ids=[e[0] for e in ERRORS])
def test_bad_input_fails_naming_the_file_and_row(fixture, message, fixtures, tmp_path, capsys):
    output = tmp_path / "out.parquet"
    assert _prepare("aime24", [fixtures / fixture], output) == 2
    error = capsys.readouterr().err
    assert f"error: {fixtures / fixture}" in error
    assert message in error
    assert not output.exists()


def test_a_json_array_file_converts(tmp_path):
    source = tmp_path / "test.json"
    source.write_text(
        json.dumps([{"problem": "What is $1+1$?", "answer": "2"}, {"problem": "And $2+2$?", "answer": 4}])
    )
    output = tmp_path / "out.parquet"
    assert _prepare("math500", [source], output) == 0
    assert [row["ground_truth"] for row in pd.read_parquet(output)["reward_model"]] == ["2", "4"]


def test_a_file_that_is_not_text_fails_naming_its_line(tmp_path, capsys):
    source = tmp_path / "binary.jsonl"
    source.write_bytes(b'{"problem": "x", "answer": "1"}\n\xff\xfe\x00\n')
    assert _prepare("math500", [source], tmp_path / "out.parquet") == 2
    assert f"{source}: row 1 (line 2): not valid JSON" in capsys.readouterr().err


def test_skip_bad_drops_bad_rows_and_counts_them(fixtures, tmp_path, capsys):
    output = tmp_path / "out.parquet"
    assert _prepare("math500", [fixtures / "bad_empty_problem.jsonl"], output, "--skip-bad") == 0
    assert [row["ground_truth"] for row in pd.read_parquet(output)["reward_model"]] == ["2", "4"]
    out = capsys.readouterr().out
    assert "bad rows dropped (--skip-bad): 1" in out
    assert "bad_empty_problem.jsonl: row 1 (line 3): problem is missing or blank" in out


def test_a_file_with_only_bad_rows_writes_nothing(fixtures, tmp_path, capsys):
    output = tmp_path / "out.parquet"
    assert _prepare("aime24", [fixtures / "bad_no_user_message.parquet"], output, "--skip-bad") == 2
    assert "no usable rows" in capsys.readouterr().err
    assert not output.exists()


def test_command_line_entry_point(fixtures, tmp_path):
    output = tmp_path / "amc.parquet"
    command = [
        sys.executable,
        "-m",
        "poise_verl.data.prepare",
        "amc",
        "--input",
        str(fixtures / "amc.parquet"),
    ]
    result = subprocess.run(
        [*command, "--output", str(output)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "6 rows written" in result.stdout
    assert f"{fixtures / 'amc.parquet'}: 6 rows" in result.stderr  # progress goes to stderr
    assert len(pd.read_parquet(output)) == 6


def test_verl_rlhf_dataset_reads_every_output_together(fixtures, tmp_path, char_tokenizer):
    """verl's own RLHFDataset loads all five outputs as one dataset (as for data.val_files=[...])."""
    from omegaconf import OmegaConf
    from verl.utils.dataset.rl_dataset import RLHFDataset

    inputs_of = {}
    for name, inputs, _answers in CONVERSIONS:
        inputs_of.setdefault(name, inputs)  # the first fixture of each dataset
    assert sorted(inputs_of) == sorted(DATASETS)
    outputs = []
    for name, inputs in inputs_of.items():
        outputs.append(str(tmp_path / f"{name}.parquet"))
        assert _prepare(name, [fixtures / f for f in inputs], Path(outputs[-1])) == 0

    config = OmegaConf.create(
        {
            "prompt_key": "prompt",
            "max_prompt_length": 1024,
            "filter_overlong_prompts": True,
            "filter_overlong_prompts_workers": 1,
            "cache_dir": str(tmp_path / "cache"),
        }
    )
    dataset = RLHFDataset(data_files=outputs, tokenizer=char_tokenizer, config=config)

    assert len(dataset) == 5 + 5 + 6 + 6 + 6  # nothing is filtered as too long
    sources = [dataset[i]["data_source"] for i in range(len(dataset))]
    assert sorted(set(sources)) == sorted(spec.data_source for spec in DATASETS.values())
    item = dataset[len(dataset) - 1]
    assert item["raw_prompt"] == [{"role": "user", "content": f"What is $2+3$? {BOXED_INSTRUCTION}"}]
    assert item["reward_model"]["ground_truth"] == "5"
    assert item["index"] == 5  # from extra_info.index
    text = char_tokenizer.apply_chat_template(item["raw_prompt"], add_generation_prompt=True, tokenize=False)
    assert text.endswith(f"{BOXED_INSTRUCTION}\n<assistant>")
