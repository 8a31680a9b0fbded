"""Read prompts from verl-format parquet and render them exactly as verl's rollout does.

A row (verl's RLHFDataset format, as ``poise_verl.data.prepare`` and ``poise_verl.tiny.task`` write it):
``data_source`` (str), ``prompt`` (list of chat messages ``{"role", "content"}``), ``reward_model``
(``{"ground_truth": ...}``), optional ``extra_info`` (dict).

verl 0.9.1 renders the prompt in its agent loop (``verl.utils.tokenizer.chat_template.apply_chat_template``)
with ``tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)``; that equals
rendering the text (``tokenize=False``) and encoding it with ``add_special_tokens=False`` (the template
already writes any BOS), which is what ``encode_prompt`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REQUIRED_COLUMNS = ("data_source", "prompt", "reward_model")


class DataError(ValueError):
    """Bad input data; the message names the file and the row."""


@dataclass
class PromptRow:
    """One prompt of a parquet file.

    Attributes:
        file: the parquet path; row: 0-based row in that file (for error messages and per-prompt output).
        data_source: what the scorer dispatches on.
        messages: chat messages, plain python dicts.
        ground_truth: ``reward_model["ground_truth"]`` as stored (passed to the scorer unchanged, as verl does).
        extra_info: the row's ``extra_info`` dict (may be empty).
    """

    file: str
    row: int
    data_source: str
    messages: list[dict[str, Any]]
    ground_truth: Any
    extra_info: dict[str, Any] = field(default_factory=dict)


def _plain(value: Any) -> Any:
    """pyarrow/pandas nested values (numpy arrays of dicts) -> python lists and dicts."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _messages(value: Any, where: str) -> list[dict[str, Any]]:
    value = _plain(value)
    if isinstance(value, str):
        # Some datasets store the prompt as plain text; verl needs chat messages.
        raise DataError(
            f"{where}: 'prompt' is a string; verl expects a list of {{'role', 'content'}} messages"
        )
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: 'prompt' must be a non-empty list of chat messages, got {value!r:.100}")
    for message in value:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataError(f"{where}: every prompt message needs 'role' and 'content', got {message!r:.100}")
    return value


def read_prompts(paths: Sequence[str | Path], limit: int | None = None) -> list[PromptRow]:
    """Every row of the given parquet files (the first ``limit`` of each when given), validated.

    Raises ``DataError`` naming the file (and row) for a missing file or column, a prompt that is not chat
    messages, or a missing/blank ground truth.
    """
    import pandas as pd

    rows: list[PromptRow] = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"data file {path} does not exist")
        frame = pd.read_parquet(path)
        missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
        if missing:
            raise DataError(
                f"{path}: missing column(s) {missing}; verl-format rows need {list(REQUIRED_COLUMNS)} "
                f"(found {list(frame.columns)})"
            )
        if limit is not None:
            frame = frame.head(limit)
        for row, record in enumerate(frame.to_dict("records")):
            where = f"{path}, row {row}"
            reward_model = _plain(record["reward_model"])
            truth = reward_model.get("ground_truth") if isinstance(reward_model, dict) else None
            if truth is None or (isinstance(truth, str) and not truth.strip()):
                raise DataError(f"{where}: reward_model.ground_truth is missing or blank")
            data_source = record["data_source"]
            if not isinstance(data_source, str) or not data_source:
                raise DataError(f"{where}: data_source must be a non-empty string, got {data_source!r}")
            extra_info = _plain(record.get("extra_info"))
            rows.append(
                PromptRow(
                    file=str(path),
                    row=row,
                    data_source=data_source,
                    messages=_messages(record["prompt"], where),
                    ground_truth=truth,
                    extra_info=extra_info if isinstance(extra_info, dict) else {},
                )
            )
    if not rows:
        raise DataError(f"no rows in {[str(p) for p in paths]}")
    return rows


def encode_prompt(
    tokenizer, messages: list[dict[str, Any]], chat_template_kwargs: dict | None = None
) -> list[int]:
    """Token ids of the rendered prompt, as verl's rollout sees them (see the module docstring)."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            "the tokenizer has no chat template; verl renders prompts with tokenizer.apply_chat_template, "
            "so set tokenizer.chat_template (tokenizer_config.json) first"
        )
    text = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False, **(chat_template_kwargs or {})
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]
