"""The math scorer: boxed-answer extraction, math-verify equivalence, timeouts, dispatch, and verl's use of it."""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from poise_verl.data import scoring, verify_worker
from poise_verl.data.scoring import (
    MAX_ANSWER_CHARS,
    SCORERS,
    VerifierWorkers,
    compute_score,
    default_compute_score,
    last_boxed_answer,
)
from poise_verl.data.sources import DATASETS

# An answer whose comparison runs until math-verify's timeout stops it.
SLOW_ANSWER = "9^{9^{9^{9}}}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so the answer is \\boxed{42}.", "42"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("nested \\boxed{\\left\\{ x : x^{2} < 1 \\right\\}} done", "\\left\\{ x : x^{2} < 1 \\right\\}"),
        ("first \\boxed{1}, then \\boxed{2}", "2"),
        ("\\boxed{ 7 }", "7"),
        ("\\boxed {8}", "8"),
        ("\\fbox{9}", "9"),
        ("\\boxed{}", ""),
        ("\\boxed{1} and finally \\boxed{2", None),  # the last one is cut off: no answer
        ("The answer is 42.", None),
        ("<think>maybe \\boxed{3}</think>It is \\boxed{4}.", "4"),
        ("<think>maybe \\boxed{3}</think>I am not sure.", None),
        ("<think>still thinking \\boxed{3}", "3"),  # no closed reasoning: the whole text is searched
    ],
)
def test_last_boxed_answer(text, expected):
    assert last_boxed_answer(text) == expected


@pytest.mark.parametrize(
    ("ground_truth", "answer", "correct"),
    [
        ("34", "34", True),
        ("34", "35", False),
        ("\\frac{1}{2}", "0.5", True),
        ("0.5", "\\frac{1}{2}", True),
        ("\\frac{1}{2}", "\\dfrac{2}{4}", True),
        ("023", "23", True),  # AIME's leading zeros
        ("1", "001", True),
        ("142", "142.0", True),  # AMC answers published as floats
        ("10\\%", "10", True),  # MATH-500 percentages
        ("(3,-1)", "(3, -1)", True),
        ("(3,-1)", "(-1,3)", False),
        ("\\text{(C)}", "C", True),
        ("\\sqrt{2}", "\\frac{2}{\\sqrt{2}}", True),
        ("\\sqrt{2}", "1.414", False),
        ("x^2+1", "1+x^{2}", True),
    ],
)
def test_compute_score_uses_mathematical_equivalence(ground_truth, answer, correct):
    result = compute_score("math500", f"Working... so the answer is $\\boxed{{{answer}}}$.", ground_truth)
    assert result == {"score": 1.0 if correct else 0.0, "acc": correct, "pred": answer}


def test_no_boxed_answer_scores_zero():
    assert compute_score("aime24", "The answer is 42.", "42") == {"score": 0.0, "acc": False, "pred": ""}
    assert compute_score("aime24", "\\boxed{}", "42") == {"score": 0.0, "acc": False, "pred": ""}


def test_incorrect_score_is_configurable():
    assert compute_score("math_dapo", "\\boxed{41}", "42", incorrect_score=-1.0)["score"] == -1.0
    assert compute_score("math_dapo", "no answer", "42", incorrect_score=-1.0)["score"] == -1.0
    assert compute_score("math_dapo", "\\boxed{42}", "42", incorrect_score=-1.0)["score"] == 1.0


def test_unknown_keywords_from_verl_are_ignored():
    result = compute_score("amc", "\\boxed{3}", "3", extra_info={"index": 0}, reward_router_address=None)
    assert result["acc"] is True


@pytest.fixture
def math_verify_calls(monkeypatch):
    """Every call of math-verify's comparison in this process and every request to a worker process, counted
    (and passed on to the real ones)."""
    calls = {"in_process": [], "workers": []}
    in_process, to_workers = verify_worker.answers_match, scoring._verifier_workers.match

    def counted_in_process(answer, ground_truth, timeout_seconds):
        calls["in_process"].append((answer, threading.current_thread() is threading.main_thread()))
        return in_process(answer, ground_truth, timeout_seconds)

    def counted_to_workers(answer, ground_truth, timeout_seconds, deadline_seconds):
        calls["workers"].append(answer)
        return to_workers(answer, ground_truth, timeout_seconds, deadline_seconds)

    monkeypatch.setattr(verify_worker, "answers_match", counted_in_process)
    monkeypatch.setattr(scoring._verifier_workers, "match", counted_to_workers)
    return calls


def test_overlong_answer_is_not_parsed(math_verify_calls):
    """The bound on the parser's work: math-verify never sees an answer over MAX_ANSWER_CHARS (how long parsing
    one would take: ``python -m benchmarks.math_scoring``)."""
    answer = "1+" * MAX_ANSWER_CHARS + "1"
    result = compute_score("math500", f"\\boxed{{{answer}}}", "2")
    assert result["acc"] is False and len(result["pred"]) == MAX_ANSWER_CHARS
    assert math_verify_calls == {"in_process": [], "workers": []}
    # One character shorter than the bound, it is parsed.
    compute_score("math500", f"\\boxed{{{answer[:MAX_ANSWER_CHARS]}}}", "2")
    assert math_verify_calls["in_process"] == [(answer[:MAX_ANSWER_CHARS], True)]


# A bound on a hang, not a measurement; a thread, as math-verify owns SIGALRM here.
@pytest.mark.timeout(300, method="thread")
def test_slow_answer_is_cut_off_by_the_timeout_in_the_main_thread(monkeypatch, caplog):
    """math-verify's own signal.alarm timeout, armed with the requested second, is what ends the comparison."""
    armed = []
    alarm = signal.alarm

    def recorded_alarm(seconds):
        armed.append(seconds)
        return alarm(seconds)

    monkeypatch.setattr(signal, "alarm", recorded_alarm)
    result = compute_score("aime24", f"\\boxed{{{SLOW_ANSWER}}}", "5", timeout_seconds=1)
    assert result["acc"] is False
    assert set(armed) == {0, 1}, armed  # every parse and comparison armed with 1 s (0 disarms)
    assert "Timeout during" in caplog.text  # math-verify reports that its timeout fired


def test_scores_agree_from_threads_where_workers_do_the_checking(math_verify_calls, caplog):
    """verl's reward loop scores in executor threads; math-verify then runs in worker processes."""
    cases = [("\\frac{1}{2}", "0.5"), ("023", "23"), ("34", "35"), ("10\\%", "10"), ("5", SLOW_ANSWER)]
    expected = [compute_score("math500", f"\\boxed{{{a}}}", gt, timeout_seconds=1) for gt, a in cases]
    assert [answer for answer, main in math_verify_calls["in_process"] if main] == [a for _, a in cases]
    math_verify_calls["in_process"].clear()
    with ThreadPoolExecutor(max_workers=3) as threads:
        results = list(
            threads.map(
                lambda case: compute_score("math500", f"\\boxed{{{case[1]}}}", case[0], timeout_seconds=1),
                cases,
            )
        )
    assert results == expected
    assert [r["acc"] for r in results] == [True, True, False, True, False]
    # Not one comparison ran in a thread of this process: each went to a worker process.
    assert math_verify_calls["in_process"] == []
    assert sorted(math_verify_calls["workers"]) == sorted(a for _, a in cases)


def test_a_worker_past_its_deadline_is_replaced(monkeypatch, caplog):
    """A worker that never answers (a hang in C code no signal interrupts) is killed at the deadline, the answer
    counts as wrong, and the slot's next request starts a fresh worker. The stuck worker reads its requests and
    never replies, so the outcome does not depend on how fast anything runs."""
    started = []
    start_real_worker = VerifierWorkers._start

    def start_stuck_then_real() -> subprocess.Popen:
        if started:
            started.append(start_real_worker())
        else:
            stuck = [sys.executable, "-c", "import sys\nfor _ in sys.stdin: pass"]
            started.append(
                subprocess.Popen(stuck, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
            )
        return started[-1]

    monkeypatch.setattr(VerifierWorkers, "_start", staticmethod(start_stuck_then_real))
    workers = VerifierWorkers(max_workers=1)
    assert workers.match("1", "1", timeout_seconds=5, deadline_seconds=0.5) is False
    assert "gave no answer" in caplog.text
    assert started[0].poll() is not None, "the stuck worker was left running"
    # The slot's next request starts a fresh (real) worker, which answers.
    assert workers.match("\\frac{1}{2}", "0.5", timeout_seconds=5, deadline_seconds=120) is True
    assert workers.match("2", "0.5", timeout_seconds=5, deadline_seconds=120) is False
    assert len(started) == 2  # one replacement, then reused
    started[1].kill()
    started[1].wait()


def test_worker_survives_a_bad_request():
    requests = io.StringIO(
        json.dumps({"answer": "1"})
        + "\n"
        + json.dumps({"answer": "2", "ground_truth": "2", "timeout_seconds": 5})
    )
    responses = io.StringIO()
    verify_worker.serve(requests, responses)
    first, second = (json.loads(line) for line in responses.getvalue().splitlines())
    assert first["match"] is False and "KeyError" in first["error"]
    assert second == {"match": True}


def test_worker_script_imports_neither_poise_verl_nor_verl():
    """Workers start in ~2 s with ~60 MB instead of importing verl and torch."""
    check = (
        "import runpy, sys\n"
        f"worker = runpy.run_path({str(scoring._WORKER_SCRIPT)!r})\n"
        "assert worker['answers_match']('0.5', '\\\\frac{1}{2}', 5)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'poise_verl', 'verl', 'torch'})\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr


def test_every_prepared_data_source_has_the_math_scorer():
    assert {spec.data_source for spec in DATASETS.values()} <= set(SCORERS)
    for spec in DATASETS.values():
        assert default_compute_score(spec.data_source, "\\boxed{\\frac{1}{2}}", "0.5")["acc"] is True


def test_other_data_sources_fall_back_to_verl():
    # verl's gsm8k scorer reads the answer after "####".
    assert default_compute_score("openai/gsm8k", "so #### 72", "72") == 1.0
    with pytest.raises(NotImplementedError):
        default_compute_score("no_such_dataset", "\\boxed{1}", "1")


# Responses the tiny task's scorer and the math scorer grade differently (tiny: the last \\boxed{} anywhere,
# compared as text; math: only after </think>, compared with math-verify).
TINY_CASES = [
    ("\\boxed{12}", "12"),
    ("\\boxed{13}", "12"),
    ("45</think>\\boxed{45}", "45"),
    ("\\boxed{3}</think>so three", "3"),  # math: no answer after </think>
    ("\\boxed{0.5}", "\\frac{1}{2}"),  # math: equal; tiny: different text
]


def test_tiny_arith_goes_to_the_tiny_task_scorer():
    """default_compute_score hands tiny_arith to the real poise_verl.tiny.reward, with verl's keywords."""
    from poise_verl.tiny import reward as tiny_reward

    for text, truth in TINY_CASES:
        routed = default_compute_score("tiny_arith", text, truth, extra_info={"index": 0})
        assert routed == tiny_reward.compute_score("tiny_arith", text, truth)
        assert isinstance(routed, float)  # the tiny scorer's plain float, not the math scorer's dict
    assert [default_compute_score("tiny_arith", t, g) for t, g in TINY_CASES] == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert [compute_score("tiny_arith", t, g)["acc"] for t, g in TINY_CASES] == [
        True,
        False,
        True,
        False,
        True,
    ]
    # Keyword arguments reach it: DAPO's incorrect score, and the tiny scorer's own error on a missing answer key.
    assert default_compute_score("tiny_arith", "\\boxed{13}", "12", incorrect_score=-1.0) == {
        "score": -1.0,
        "acc": 0.0,
    }
    with pytest.raises(
        ValueError, match=r"No ground truth for a sample of data_source='tiny_arith' \(extra_info index=7\)"
    ):
        default_compute_score("tiny_arith", "\\boxed{1}", " ", extra_info={"index": 7})


def test_tiny_arith_without_the_tiny_task_says_what_is_missing(tmp_path):
    """A copy of the package's data modules without poise_verl/tiny (as a package that leaves the tiny task out
    would be): the lazy import fails for real, in a fresh interpreter that sees only that copy."""
    package = tmp_path / "poise_verl"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    source = Path(scoring.__file__).parent
    for name in ("__init__.py", "scoring.py", "verify_worker.py", "sources.py"):
        shutil.copy(source / name, package / "data" / name)
    check = (
        "import sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from poise_verl.data.scoring import default_compute_score\n"
        "try:\n"
        "    default_compute_score('tiny_arith', '3', '3')\n"
        "except NotImplementedError as error:\n"
        "    print(type(error.__cause__).__name__, error)\n"
    )
    # -I -S: no site-packages, so no editable install of the real package to fall back on.
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", check], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "ModuleNotFoundError data_source 'tiny_arith' is scored by poise_verl.tiny.reward.compute_score, "
        "which cannot be imported"
    )


def _reward_config(**reward_kwargs):
    from omegaconf import OmegaConf

    return OmegaConf.create(
        {
            "reward": {
                "custom_reward_function": {
                    "path": "pkg://poise_verl.data.scoring",
                    "name": "default_compute_score",
                    "reward_kwargs": reward_kwargs,
                },
                "reward_kwargs": {},
            }
        }
    )


def test_verl_loads_the_scorer_from_the_documented_config():
    from verl.trainer.ppo.reward import get_custom_reward_fn

    score = get_custom_reward_fn(_reward_config(incorrect_score=-1.0))
    assert (
        score(data_source="aime24", solution_str="\\boxed{023}", ground_truth="23", extra_info={})["score"]
        == 1.0
    )
    assert (
        score(data_source="aime24", solution_str="\\boxed{24}", ground_truth="23", extra_info={})["score"]
        == -1.0
    )


def test_verl_dapo_reward_manager_scores_a_response(char_tokenizer):
    """verl's DAPO reward manager decodes the response and calls the scorer from an executor thread."""
    import numpy as np
    import torch
    from verl import DataProto
    from verl.experimental.reward_loop.reward_manager.dapo import DAPORewardManager
    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = _reward_config()
    manager = DAPORewardManager(config, char_tokenizer, get_custom_reward_fn(config))

    def score(response: str) -> dict:
        prompt_ids = char_tokenizer.encode("<user>What is 1/2?\n<assistant>")
        response_ids = char_tokenizer.encode(response)
        data = DataProto.from_dict(
            tensors={
                "prompts": torch.tensor([prompt_ids]),
                "responses": torch.tensor([response_ids]),
                "attention_mask": torch.ones(1, len(prompt_ids) + len(response_ids), dtype=torch.long),
            },
            non_tensors={
                "data_source": np.array(["math500"], dtype=object),
                "reward_model": np.array([{"style": "rule", "ground_truth": "\\frac{1}{2}"}], dtype=object),
                "extra_info": np.array([{"index": 0}], dtype=object),
            },
        )
        return manager.loop.run_until_complete(manager.run_single(data))

    right = score("Half of one: \\boxed{0.5}")
    assert right["reward_score"] == 1.0
    assert right["reward_extra_info"] == {"score": 1.0, "acc": True, "pred": "0.5"}
    wrong = score("\\boxed{2}")
    assert wrong["reward_score"] == 0.0 and wrong["reward_extra_info"]["acc"] is False
