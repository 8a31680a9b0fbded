"""Rule-based reward for the tiny arithmetic task: 1.0 when the last ``\\boxed{}`` equals the ground truth.

verl's reward managers call ``compute_score(data_source=..., solution_str=..., ground_truth=...,
extra_info=...)`` with the response decoded with ``skip_special_tokens=True``. To use another rule, point
``reward.custom_reward_function.path`` at a file with a function of the same signature.
"""

from __future__ import annotations

BOX = "\\boxed{"


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (braces balanced), or None when there is none or it is open."""
    start = text.rfind(BOX)
    if start < 0:
        return None
    depth = 1
    begin = start + len(BOX)
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i]
    return None


def compute_score(
    data_source: str, solution_str: str, ground_truth: str | None, extra_info: dict | None = None, **kwargs
) -> float:
    """1.0 on an exact (whitespace-stripped) match of the last boxed answer, else 0.0."""
    if ground_truth is None or str(ground_truth).strip() == "":
        index = (extra_info or {}).get("index")
        raise ValueError(
            f"No ground truth for a sample of data_source={data_source!r} (extra_info index={index!r}): "
            "each parquet row needs reward_model.ground_truth."
        )
    answer = last_boxed(solution_str)
    if answer is None:
        return 0.0
    return 1.0 if answer.strip() == str(ground_truth).strip() else 0.0
