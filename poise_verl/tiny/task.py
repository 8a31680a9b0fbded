"""A synthetic, verifiable arithmetic task with graded difficulty, written as verl-format parquet.

A prompt is an expression such as ``"473+58="``; the policy writes the result's digits least-significant
first (its "reasoning", the order in which a carry is computed), then ``</think>``, then the answer in
``\\boxed{}``, then EOS:

    prompt   "473+58="
    response "135</think>\\boxed{531}<|im_end|>"

Why graded levels: RL with a sibling or probe baseline learns only from prompts whose pass rate sits
strictly between 0 and 1 (two rollouts that agree give a sibling baseline a zero advantage). An earlier
version of this task, five equally weighted categories (1- to 3-digit add/subtract, 1x1 and 2x1 multiply),
left each category near 0% or 100% after the warm-up: few pairs of rollouts disagreed and RL with two
rollouts per prompt gained only a few points. So the levels below step through operand lengths, operations
and (within a level) carry/borrow chains, which spreads the warmed-up policy's per-prompt pass rates over
10-90% (``python -m poise_verl.tiny.build`` records the measured spread in ``build_info.json``).

    problems = generate_problems(1000, seed=0)
    write_parquet(problems, "train.parquet", split="train")
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable
from pathlib import Path

from poise_verl.tiny.tokenizer import THINK_END

DATA_SOURCE = "tiny_arith"


@dataclasses.dataclass(frozen=True)
class Level:
    """Operands with exactly ``left_digits`` and ``right_digits`` digits (a 1-digit operand may be 0)."""

    name: str
    operation: str  # "+", "-" or "*"
    left_digits: int
    right_digits: int
    weight: float  # relative sampling frequency


# Grouped by operation, easy to hard. A one-digit right operand keeps every level learnable within a
# two-minute warm-up while length and carry/borrow chains grade the difficulty (999+1 is harder than 111+1);
# the two-digit right operands are the hardest levels (a 1M-parameter model learns their digit alignment
# last), kept at half weight so they add headroom without dominating.
LEVELS: tuple[Level, ...] = (
    Level("add_1x1", "+", 1, 1, 0.5),
    Level("add_2x1", "+", 2, 1, 1.0),
    Level("add_3x1", "+", 3, 1, 1.0),
    Level("add_4x1", "+", 4, 1, 1.0),
    Level("add_2x2", "+", 2, 2, 0.5),
    Level("sub_2x1", "-", 2, 1, 1.0),
    Level("sub_3x1", "-", 3, 1, 1.0),
    Level("sub_4x1", "-", 4, 1, 1.0),
    Level("sub_2x2", "-", 2, 2, 0.5),
    Level("mul_1x1", "*", 1, 1, 0.5),
    Level("mul_2x1", "*", 2, 1, 1.0),
    Level("mul_3x1", "*", 3, 1, 1.0),
)


@dataclasses.dataclass(frozen=True)
class Problem:
    prompt: str  # the user message, e.g. "473+58="
    answer: str  # the ground truth, e.g. "531"
    level: int  # index into LEVELS

    @property
    def solution(self) -> str:
        """The reference response text (without EOS): reversed digits, end of thinking, boxed answer."""
        return f"{self.answer[::-1]}{THINK_END}\\boxed{{{self.answer}}}"


def _operand(rng: random.Random, digits: int) -> int:
    if digits == 1:
        return rng.randint(0, 9)
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


def make_problem(rng: random.Random, level: int) -> Problem:
    """One problem of the given level. Subtraction keeps the result non-negative."""
    spec = LEVELS[level]
    a, b = _operand(rng, spec.left_digits), _operand(rng, spec.right_digits)
    if spec.operation == "+":
        result = a + b
    elif spec.operation == "-":
        if a < b:
            a, b = b, a
        result = a - b
    else:
        result = a * b
    return Problem(prompt=f"{a}{spec.operation}{b}=", answer=str(result), level=level)


def sample_problems(
    rng: random.Random, exclude: frozenset[str] | set[str] = frozenset()
) -> Iterable[Problem]:
    """An endless stream of problems with levels drawn by weight, skipping prompts in ``exclude``."""
    weights = [spec.weight for spec in LEVELS]
    while True:
        level = rng.choices(range(len(LEVELS)), weights=weights)[0]
        problem = make_problem(rng, level)
        if problem.prompt not in exclude:
            yield problem


def generate_problems(
    count: int, seed: int, exclude: frozenset[str] | set[str] = frozenset(), unique: bool = True
) -> list[Problem]:
    """``count`` problems from a seeded stream; with ``unique`` no prompt appears twice.

    Small levels run out of distinct prompts (add_1x1 has 100), so a unique draw skips repeats and the
    realised level mix drifts slightly toward the larger levels.
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    problems: list[Problem] = []
    for problem in sample_problems(rng, exclude):
        if unique:
            if problem.prompt in seen:
                continue
            seen.add(problem.prompt)
        problems.append(problem)
        if len(problems) == count:
            return problems
    raise AssertionError("unreachable")


def make_splits(train_size: int, val_size: int, seed: int) -> tuple[list[Problem], list[Problem]]:
    """Disjoint train and validation prompts: validation is drawn first and excluded from train."""
    val = generate_problems(val_size, seed=seed * 1000 + 1)
    train = generate_problems(train_size, seed=seed * 1000 + 2, exclude={p.prompt for p in val})
    return train, val


def to_rows(problems: list[Problem], split: str) -> list[dict]:
    """verl RLHFDataset rows: chat-message prompt, rule-based ground truth, index and level in extra_info."""
    return [
        {
            "data_source": DATA_SOURCE,
            "prompt": [{"role": "user", "content": p.prompt}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": p.answer},
            "extra_info": {
                "split": split,
                "index": i,
                "level": p.level,
                "level_name": LEVELS[p.level].name,
            },
        }
        for i, p in enumerate(problems)
    ]


def write_parquet(problems: list[Problem], path: str | Path, split: str) -> Path:
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(to_rows(problems, split)).to_parquet(path, index=False)
    return path
