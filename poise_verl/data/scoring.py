"""The reward for the math datasets: the last \\boxed{} answer of the response, checked with math-verify.

verl calls a custom reward function as `fn(data_source=, solution_str=, ground_truth=, extra_info=, **kw)`
from its reward loop (verl.experimental.reward_loop.reward_manager.{naive,dapo}); a dict result gives the
reward from "score" and logs every key as reward_extra_info: DAPO's dynamic sampling filters groups on
"acc" (algorithm.filter_groups.metric), validation reports mean@N/best@N of "acc", and maj@N votes over
"pred". Configure it as

    reward.custom_reward_function.path=pkg://poise_verl.data.scoring
    reward.custom_reward_function.name=default_compute_score

`default_compute_score` dispatches on data_source: the math datasets of `sources.py` go to
`compute_score`, the tiny task's "tiny_arith" to `poise_verl.tiny.reward.compute_score`, anything else to
verl's own `verl.utils.reward_score.default_compute_score`.

How this differs from verl's math_dapo scorer (which DAPO's verl recipe uses): the answer is read from
\\boxed{} (not an `Answer:` line), compared with math-verify (so \\frac{1}{2} equals 0.5 and 023 equals 23),
and a wrong answer scores 0.0 (POISE's naive_dapo scorer; the probe predicts a success rate in [0, 1])
rather than -1.0. Pass `incorrect_score: -1.0` in `reward.custom_reward_function.reward_kwargs` for
DAPO's paper convention; with group-normalised advantages only the overlong penalty sees the difference.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import queue
import re
import select
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from poise_verl.data import verify_worker
from poise_verl.data.sources import MATH_DATA_SOURCES

logger = logging.getLogger(__name__)

# A boxed answer longer than this is not graded (no answer in these datasets comes close); it bounds the
# parser's work on degenerate output. POISE's scorer uses the same bound (_MAX_MATH_ANSWER_CHARS).
MAX_ANSWER_CHARS = 1000

# Seconds math-verify may spend on each parse and each comparison (its own signal-based timeouts).
DEFAULT_TIMEOUT_SECONDS = 5

_BOXED_START = re.compile(r"\\(?:boxed|fbox)\s*\{")


def last_boxed_answer(solution_str: str) -> str | None:
    """The content of the last \\boxed{...} (or \\fbox{...}) after any </think>, nested braces included.

    None when there is none, or when the last one is never closed (a truncated response). Only the text
    after the last </think> is searched, as POISE's scorer does: once the reasoning is closed, an answer
    boxed inside it does not count.
    """
    text = solution_str.rsplit("</think>", 1)[-1]
    starts = [match.end() for match in _BOXED_START.finditer(text)]
    if not starts:
        return None
    opened = starts[-1]  # just after the "{"
    depth = 1
    for position in range(opened, len(text)):
        character = text[position]
        if character == "{":
            depth += 1
        elif character == "}":
            depth -= 1
            if depth == 0:
                return text[opened:position].strip()
    return None


class _WorkerFailed(RuntimeError):
    """A verifier worker that died or overstayed its deadline."""


class VerifierWorkers:
    """A few `verify_worker.py` processes that check answers for threads other than the main one.

    verl's reward loop calls the scorer from executor threads, where math-verify's signal.alarm timeouts
    cannot run; each worker runs math-verify in its own main thread, with them. A caller holds one worker
    for its request, so a deadline measures that request alone; a worker that overstays it (a hang in C code
    that no signal interrupts) is killed, the answer counts as wrong, and a new worker starts on next use.
    """

    def __init__(self, max_workers: int) -> None:
        self._idle: queue.LifoQueue[subprocess.Popen | None] = queue.LifoQueue()
        for _ in range(max_workers):
            self._idle.put(None)  # a slot whose process starts on first use

    @staticmethod
    def _start() -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(_WORKER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def match(self, answer: str, ground_truth: str, timeout_seconds: int, deadline_seconds: float) -> bool:
        """The worker's verdict, or False when it gives none within `deadline_seconds`."""
        worker = self._idle.get()
        try:
            if worker is None or worker.poll() is not None:
                worker = self._start()
            request = {"answer": answer, "ground_truth": ground_truth, "timeout_seconds": timeout_seconds}
            worker.stdin.write(json.dumps(request) + "\n")
            worker.stdin.flush()
            # One request, one response line: nothing is ever left in stdout's buffer between requests.
            ready, _, _ = select.select([worker.stdout], [], [], deadline_seconds)
            line = worker.stdout.readline() if ready else ""
            if not line:
                problem = "closed its output" if ready else f"gave no answer in {deadline_seconds:.0f} s"
                raise _WorkerFailed(f"math-verify worker {problem}; counting the answer as wrong")
            reply = json.loads(line)
            if "error" in reply:
                logger.warning("math-verify failed on %r: %s", answer, reply["error"])
            return bool(reply["match"])
        # A dead or stuck worker, a broken pipe, a garbled reply: replace the worker.
        except (_WorkerFailed, OSError, ValueError, KeyError) as error:
            logger.warning("%s", error)
            if worker is not None:
                worker.kill()
                worker.wait()
                worker = None
            return False
        finally:
            self._idle.put(worker)


_WORKER_SCRIPT = Path(verify_worker.__file__).resolve()
_verifier_workers = VerifierWorkers(max_workers=min(4, os.cpu_count() or 1))


def _deadline_seconds(timeout_seconds: int) -> float:
    # Up to four parses and four comparisons, each bounded by timeout_seconds in the worker, plus the
    # worker's start-up (importing math-verify and sympy) on its first request.
    return 8 * timeout_seconds + 30


def answers_match(answer: str, ground_truth: str, timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS) -> bool:
    """Whether `answer` equals `ground_truth` mathematically; False when checking overruns its time."""
    if len(answer) > MAX_ANSWER_CHARS:
        return False
    if threading.current_thread() is threading.main_thread():
        return verify_worker.answers_match(answer, ground_truth, timeout_seconds)
    return _verifier_workers.match(answer, ground_truth, timeout_seconds, _deadline_seconds(timeout_seconds))


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    incorrect_score: float = 0.0,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    **kwargs: Any,
) -> dict[str, Any]:
    """Score one response to a math problem: 1.0 when its last \\boxed{} answer equals the ground truth.

    Returns {"score": 1.0 or incorrect_score, "acc": bool, "pred": the boxed answer or "" when none}.
    `data_source`, `extra_info` and any further keyword (verl passes reward-model addresses) are unused.
    """
    answer = last_boxed_answer(solution_str)
    if answer is None:
        return {"score": float(incorrect_score), "acc": False, "pred": ""}
    # math-verify's signal.alarm takes whole seconds.
    correct = bool(answer) and answers_match(answer, str(ground_truth), max(1, round(timeout_seconds)))
    return {
        "score": 1.0 if correct else float(incorrect_score),
        "acc": correct,
        "pred": answer[:MAX_ANSWER_CHARS],
    }


# data_source -> scorer, for the datasets `python -m poise_verl.data.prepare` writes.
SCORERS: dict[str, Callable[..., Any]] = {data_source: compute_score for data_source in MATH_DATA_SOURCES}

# data_source -> module with a `compute_score`, imported on first use: the module belongs to another part
# of the package and may be absent.
LAZY_SCORERS: dict[str, str] = {"tiny_arith": "poise_verl.tiny.reward"}


def _scorer_for(data_source: str) -> Callable[..., Any] | None:
    if data_source in SCORERS:
        return SCORERS[data_source]
    module_name = LAZY_SCORERS.get(data_source)
    if module_name is None:
        return None
    try:
        return importlib.import_module(module_name).compute_score
    except (ImportError, AttributeError) as error:
        raise NotImplementedError(
            f"data_source {data_source!r} is scored by {module_name}.compute_score, which cannot be imported"
        ) from error


def default_compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    **kwargs: Any,
) -> dict[str, Any] | float:
    """verl's custom reward function: score by data_source (see the module docstring for the routing)."""
    scorer = _scorer_for(data_source)
    if scorer is None:
        from verl.utils.reward_score import default_compute_score as verl_default_compute_score

        return verl_default_compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)
    return scorer(
        data_source=data_source,
        solution_str=solution_str,
        ground_truth=ground_truth,
        extra_info=extra_info,
        **kwargs,
    )
