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
    data_source: str,
    solution_str: str,
    ground_truth: str | None,
    extra_info: dict | None = None,
    incorrect_score: float = 0.0,
    **kwargs,
) -> float | dict[str, float]:
    """1.0 on an exact (whitespace-stripped) match of the last boxed answer, else ``incorrect_score``.

    POISE keeps the official 0/1 score (its probe predicts a success rate) and gets a float, which verl also
    logs as the accuracy. ``algo=dapo`` passes ``incorrect_score=-1.0``, the score of verl's DAPO recipe
    (``math_dapo``); then the result is ``{"score": 1.0 or -1.0, "acc": 1.0 or 0.0}``, so that validation
    and DAPO's group filter still read the accuracy from ``acc``.
    """
    if ground_truth is None or str(ground_truth).strip() == "":
        index = (extra_info or {}).get("index")
        raise ValueError(
            f"No ground truth for a sample of data_source={data_source!r} (extra_info index={index!r}): "
            "each parquet row needs reward_model.ground_truth."
        )
    answer = last_boxed(solution_str)
    correct = 1.0 if answer is not None and answer.strip() == str(ground_truth).strip() else 0.0
    if incorrect_score == 0.0:
        return correct
    return {"score": 1.0 if correct else float(incorrect_score), "acc": correct}
