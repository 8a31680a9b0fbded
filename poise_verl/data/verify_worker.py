"""math-verify's verdict on one answer, computed in this process or served to another one.

`scoring.py` calls `answers_match` directly in a main thread. From other threads (verl's reward loop scores
in executor threads) it sends requests to worker processes that run this file as a script,

    python poise_verl/data/verify_worker.py

reading one JSON request a line on stdin, {"answer", "ground_truth", "timeout_seconds"}, and writing one
JSON line back, {"match": bool}. A worker runs math-verify in its main thread, where math-verify's
signal-based timeouts work. It is run as a file, not with -m, so that it imports math-verify alone: `-m`
would import the poise_verl package and with it verl and torch (seconds and ~400 MB a worker).

This module imports nothing from poise_verl.
"""

from __future__ import annotations

import json
import sys
from typing import IO


def parse_answer(text: str, timeout_seconds: int | None) -> list:
    """math-verify's reading of one answer (LaTeX, as written inside \\boxed{}): sympy objects and strings.

    Read as a boxed answer first; if that yields no sympy object, as inline math: math-verify reads
    `\\boxed{10\\%}` only as a string but `$10\\%$` as 10, which MATH-500's percentage answers need.
    """
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    config = (LatexExtractionConfig(), ExprExtractionConfig())
    parsed: list = []
    for wrapped in (f"\\boxed{{{text}}}", f"${text}$"):
        parsed = parse(wrapped, extraction_config=config, parsing_timeout=timeout_seconds) or parsed
        if any(not isinstance(item, str) for item in parsed):
            break
    return parsed


def answers_match(answer: str, ground_truth: str, timeout_seconds: int | None) -> bool:
    """Whether `answer` equals `ground_truth` (both LaTeX) according to math-verify.

    `timeout_seconds` bounds each parse and each comparison with math-verify's signal.alarm timeouts, which
    work only in a main thread; an overrun counts as a mismatch.
    """
    from math_verify import verify

    gold = parse_answer(ground_truth, timeout_seconds)
    if not gold:
        # A ground truth math-verify cannot read at all: exact match after trimming.
        return answer.strip() == ground_truth.strip()
    predicted = parse_answer(answer, timeout_seconds)
    if not predicted:
        return False
    return bool(verify(gold, predicted, timeout_seconds=timeout_seconds))


def serve(requests: IO[str], responses: IO[str]) -> None:
    """Answer requests, one JSON line each, until `requests` closes."""
    for line in requests:
        request = json.loads(line)
        try:
            response = {
                "match": answers_match(request["answer"], request["ground_truth"], request["timeout_seconds"])
            }
        except Exception as error:  # noqa: BLE001  (one bad request must not end the worker)
            response = {"match": False, "error": f"{type(error).__name__}: {error}"}
        responses.write(json.dumps(response) + "\n")
        responses.flush()


if __name__ == "__main__":
    # sys.path[0] is this folder; drop it so that its modules cannot shadow others.
    del sys.path[0]
    serve(sys.stdin, sys.stdout)
