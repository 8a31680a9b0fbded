"""The datasets `prepare` converts: where each field sits in the published file, and what verl gets.

The columns read, per dataset, and where they were found (the `dataset_info` block of each hub README
unless said otherwise):

- dapo_math_17k: BytedTsinghua-SIA/DAPO-Math-17k, parquet, already verl-shaped: `data_source` ("math_dapo"),
  `prompt` (one user message wrapping the problem in DAPO's `Answer:` instruction), `ability` ("MATH"),
  `reward_model` {`ground_truth`, `style`}, `extra_info` {`index`: a uuid}. About 1.79M rows holding ~17.4k
  distinct problems, each repeated about 100 times (see the deduplicated copies on the hub, 17,398 and
  17,917 rows): `prepare` keeps the first copy of each problem.
- aime24: HuggingFaceH4/aime_2024 (parquet: `id`, `problem`, `solution`, `answer` string, `url`, `year`) or
  Maxwell-Jia/AIME_2024 (aime_2024_problems.parquet: `ID` like "2024-I-1", `Problem`, `Solution`, `Answer`;
  from its card's field list).
- aime25: opencompass/AIME2025 (aime2025-I.jsonl and aime2025-II.jsonl, `question` and `answer`; pass both
  files), MathArena/aime_2025 (parquet: `problem_idx`, `problem`, `answer` int64, as POISE's evaluation
  code reads it) or yentinglin/aime_2025 (parquet with `problem` and `answer`).
- amc: AI-MO/aimo-validation-amc (parquet: `id`, `problem`, `answer` as a float such as 142.0, `url`).
- math500: HuggingFaceH4/MATH-500 (test.jsonl: `problem`, `solution`, `answer`, `subject`, `level`,
  `unique_id`).

Every dataset also accepts a verl-shaped file (`prompt` messages and `reward_model.ground_truth`), such as
the AIME files DAPO's verl recipe evaluates on, or a file `prepare` wrote.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# POISE's official prompt: the problem, a space, and this sentence, as the only (user) message
# (holi-lab/POISE src/poise/evaluation.py `AIME_PROMPT_SUFFIX`; the same sentence as the GURU math data
# POISE trains on). verl's examples/data_preprocess/math_dataset.py also asks for the answer in \boxed{}.
BOXED_INSTRUCTION = "Please output the final answer within \\boxed{}."

# DAPO-Math-17k wraps each problem in this prefix and suffix, asking for an `Answer: ...` last line that
# verl's math_dapo scorer reads (verl recipe/dapo trains on the file as is). We unwrap the problem and ask
# for \boxed{} instead, so that the DAPO baseline and POISE see identical prompts and are scored alike.
DAPO_PROMPT_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be of the form "
    "Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n"
)
DAPO_PROMPT_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'


def _as_is(value: Any) -> Any:
    return value


def problem_from_messages(value: Any) -> str | None:
    """The problem inside a verl `prompt` column: the last user message, without an instruction wrapper.

    Accepts a list of {"role", "content"} messages or a bare string; returns None when there is no user text.
    """
    if isinstance(value, str):
        text = value
    elif isinstance(value, list | tuple):
        user_messages = [m for m in value if isinstance(m, dict) and m.get("role") == "user"]
        if not user_messages or not isinstance(user_messages[-1].get("content"), str):
            return None
        text = user_messages[-1]["content"]
    else:
        return None
    text = text.strip()
    if text.startswith(DAPO_PROMPT_PREFIX.strip()) and text.endswith(DAPO_PROMPT_SUFFIX.strip()):
        text = text[len(DAPO_PROMPT_PREFIX.strip()) : -len(DAPO_PROMPT_SUFFIX.strip())]
    elif text.endswith(BOXED_INSTRUCTION):
        text = text[: -len(BOXED_INSTRUCTION)]
    return text.strip()


def asks_for_answer_line(problem: str) -> bool:
    """Whether a problem still carries DAPO's `Answer:` instruction (a wrapper `problem_from_messages` missed)."""
    return 'on its own line after "Answer:"' in problem


def ground_truth_from_reward_model(value: Any) -> Any:
    """`reward_model.ground_truth` of a verl row, or None."""
    return value.get("ground_truth") if isinstance(value, dict) else None


def index_from_extra_info(value: Any) -> Any:
    """`extra_info.index` of a verl row (a uuid string in DAPO-Math-17k), or None."""
    return value.get("index") if isinstance(value, dict) else None


@dataclass(frozen=True)
class Column:
    """One place a field may be found in a published file: a column, and how to read the field from it."""

    name: str
    read: Callable[[Any], Any] = _as_is


@dataclass(frozen=True)
class DatasetSpec:
    """How one dataset maps to verl rows. For each field the first candidate column present in the file wins."""

    name: str
    # The verl `data_source`: the scorer dispatches on it, and verl names validation metrics after it.
    data_source: str
    # Written to extra_info.split: "train" for training data, "test" for validation benchmarks.
    split: str
    # Hub datasets whose published format this spec reads (documentation and --help only).
    hub_ids: tuple[str, ...]
    problem: tuple[Column, ...]
    answer: tuple[Column, ...]
    # The row's identifier in the source, kept in extra_info.source_id; the file and row when absent.
    source_id: tuple[Column, ...] = ()
    # Further source columns kept, when present, in extra_info.metadata (a JSON string).
    metadata: tuple[str, ...] = ()


# Fallbacks for a file that is already verl-shaped.
_VERL_PROBLEM = Column("prompt", problem_from_messages)
_VERL_ANSWER = Column("reward_model", ground_truth_from_reward_model)
_VERL_INDEX = Column("extra_info", index_from_extra_info)

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="dapo_math_17k",
            data_source="math_dapo",
            split="train",
            hub_ids=("BytedTsinghua-SIA/DAPO-Math-17k",),
            problem=(_VERL_PROBLEM, Column("problem"), Column("question")),
            answer=(_VERL_ANSWER, Column("answer")),
            source_id=(_VERL_INDEX, Column("id")),
        ),
        DatasetSpec(
            name="aime24",
            data_source="aime24",
            split="test",
            hub_ids=("HuggingFaceH4/aime_2024", "Maxwell-Jia/AIME_2024"),
            problem=(Column("problem"), Column("Problem"), Column("question"), _VERL_PROBLEM),
            answer=(Column("answer"), Column("Answer"), _VERL_ANSWER),
            source_id=(Column("id"), Column("ID"), Column("problem_idx"), _VERL_INDEX),
            metadata=("year", "url"),
        ),
        DatasetSpec(
            name="aime25",
            data_source="aime25",
            split="test",
            hub_ids=("opencompass/AIME2025", "yentinglin/aime_2025", "MathArena/aime_2025"),
            problem=(Column("problem"), Column("question"), Column("Problem"), _VERL_PROBLEM),
            answer=(Column("answer"), Column("Answer"), _VERL_ANSWER),
            source_id=(Column("id"), Column("ID"), Column("problem_idx"), _VERL_INDEX),
            metadata=("year", "url", "problem_type"),
        ),
        DatasetSpec(
            name="amc",
            data_source="amc",
            split="test",
            hub_ids=("AI-MO/aimo-validation-amc",),
            problem=(Column("problem"), Column("Problem"), Column("question"), _VERL_PROBLEM),
            answer=(Column("answer"), Column("Answer"), _VERL_ANSWER),
            source_id=(Column("id"), Column("ID"), _VERL_INDEX),
            metadata=("url",),
        ),
        DatasetSpec(
            name="math500",
            data_source="math500",
            split="test",
            hub_ids=("HuggingFaceH4/MATH-500",),
            problem=(Column("problem"), Column("Problem"), Column("question"), _VERL_PROBLEM),
            answer=(Column("answer"), Column("Answer"), _VERL_ANSWER),
            source_id=(Column("unique_id"), Column("id"), _VERL_INDEX),
            metadata=("subject", "level"),
        ),
    )
}

# The data sources whose rows `poise_verl.data.scoring.compute_score` grades.
MATH_DATA_SOURCES: tuple[str, ...] = tuple(spec.data_source for spec in DATASETS.values())


def clean_problem(value: Any) -> str | None:
    """The problem text, or None when it is missing or blank."""
    if not isinstance(value, str):
        return None
    return value.strip() or None


def clean_answer(value: Any) -> str | None:
    """The ground truth as a string, or None when it is missing.

    Integral floats lose their ".0" (AMC publishes 142.0 for 142); other values keep their spelling, so
    AIME's leading zeros ("023") survive: the scorer compares them as numbers.
    """
    if value is None:
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    return text or None
