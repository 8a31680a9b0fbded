"""What the math scorer's bounds save: answer length, math-verify's timeout, worker processes for threads.

    python -m benchmarks.math_scoring [--repeats 5] [--out outputs/math_scoring.json]

The tests (tests/data/test_math_scoring.py) check these bounds without a clock: that an answer over
``MAX_ANSWER_CHARS`` never reaches math-verify, that every parse and comparison arms math-verify's alarm with the
requested seconds, that threads leave the checking to worker processes. This prints what they are worth in time,
on this machine and its load (the load average is printed before and after), as the median of ``--repeats``:

1. a short answer (``\\frac{1}{2}`` against 0.5), the reference;
2. the overlong answer (``1+1+...``, over ``MAX_ANSWER_CHARS``), cut before parsing: its ratio to 1. (the tests
   used to require under 1 s);
3. the same answer one character inside the bound, parsed by math-verify;
4. an answer whose comparison never ends (``9^{9^{9^{9}}}``) with a 1 s timeout, in the main thread (the tests
   used to require under 10 s);
5. five answers scored from three threads, math-verify in worker processes, first with the workers starting
   and then with them warm (the tests used to require under 60 s).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SLOW_ANSWER = "9^{9^{9^{9}}}"
THREAD_CASES = [("\\frac{1}{2}", "0.5"), ("023", "23"), ("34", "35"), ("10\\%", "10"), ("5", SLOW_ANSWER)]


def _median_seconds(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _threaded(compute_score) -> None:
    with ThreadPoolExecutor(max_workers=3) as threads:
        list(
            threads.map(
                lambda case: compute_score("math500", f"\\boxed{{{case[1]}}}", case[0], timeout_seconds=1),
                THREAD_CASES,
            )
        )


def measure(repeats: int) -> dict:
    from poise_verl.data.scoring import MAX_ANSWER_CHARS, compute_score

    overlong = "1+" * MAX_ANSWER_CHARS + "1"
    compute_score("math500", "\\boxed{1}", "1")  # math-verify's imports and grammar, once
    short = _median_seconds(lambda: compute_score("math500", "\\boxed{0.5}", "\\frac{1}{2}"), repeats)
    cut = _median_seconds(lambda: compute_score("math500", f"\\boxed{{{overlong}}}", "2"), repeats)
    inside = _median_seconds(
        lambda: compute_score("math500", f"\\boxed{{{overlong[:MAX_ANSWER_CHARS]}}}", "2"), repeats
    )
    slow = _median_seconds(
        lambda: compute_score("aime24", f"\\boxed{{{SLOW_ANSWER}}}", "5", timeout_seconds=1), repeats
    )
    started = time.perf_counter()
    _threaded(compute_score)  # the worker processes start here
    threads_cold = time.perf_counter() - started
    threads_warm = _median_seconds(lambda: _threaded(compute_score), repeats)
    return {
        "short_answer_s": short,
        "overlong_answer_cut_s": cut,
        "overlong_over_short": cut / short,
        "answer_at_the_bound_parsed_s": inside,
        "slow_answer_with_1s_timeout_s": slow,
        "threads_5_answers_workers_starting_s": threads_cold,
        "threads_5_answers_workers_warm_s": threads_warm,
        "max_answer_chars": MAX_ANSWER_CHARS,
        "repeats": repeats,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5, help="median over this many calls of each")
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    result = measure(args.repeats)
    result["load_average_before_after"] = [load_before[0], os.getloadavg()[0]]
    for key, value in result.items():
        print(f"{key:>40}: {value:.4f}" if isinstance(value, float) else f"{key:>40}: {value}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
