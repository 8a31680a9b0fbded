"""Where a response's reasoning ends, as read with the policy's tokenizer: the marker's ids and the official text split.

Two things here need a tokenizer, so they sit outside the pure-torch ``core``:

- ``end_of_thinking_ids``: the token ids of ``poise.end_of_thinking_token``, a string that may tokenize to several
  ids (a tokenizer without a ``</think>`` token of its own writes it as ``</``, ``think``, ``>``). The start-up
  check (``preflight``) and the trainer both read it, so both refuse the same markers.
- ``official_text_parts``: ``poise.entropy_split=official_text``, the reasoning and answer parts of each response as
  the official code finds them, on the decoded text (``core.entropy`` has the token-id rule, ``end_of_thinking``).

The official rule (holi-lab/POISE ``src/poise/trainer.py``, ``RayPOISETrainer``: ``_build_poise_feature_rows``,
``_rollout_entropy_features``, ``_reasoning_answer_spans``, ``_span_token_indices``), restated:

1. The response's real tokens are decoded with ``skip_special_tokens=True`` (the end-of-sequence token drops out).
2. Spans of that text: reasoning = what the first ``<think> ... </think>`` encloses, whitespace at both ends left
   out (tags matched in any letter case); answer = what the first ``<answer> ... </answer>`` encloses, the same
   way, or else, when the text holds ``</think>`` (this test is case-sensitive), everything after the first
   ``</think>`` from its first non-space character to the end; a span is absent when its tags are.
3. The text is tokenized again with character offsets. If that gives exactly as many tokens as the response has
   real tokens, a part is the tokens whose non-empty character range overlaps its span (token i of the new
   tokenization stands for real token i). Otherwise (or when tokenizing raises, e.g. a tokenizer without offsets)
   the fallback: the reasoning part is the response's first c_r real tokens and the answer part its last c_a, with
   c_r and c_a the token counts of the reasoning text and of the answer text (the ``<answer>`` content, else the
   text after the first ``</think>`` stripped at both ends), each at most the response's length.

Consequences worth knowing: a response without ``<think>`` has an empty reasoning part, so its reasoning mean is 0
(DeepSeek-R1-Distill's chat template writes ``<think>`` into the prompt, so every response of it); a response that
ends with a special end-of-sequence token decodes to one token fewer and always takes the fallback, whose parts are
shifted from the tagged text by the tokens the counts leave out (the fallback's reasoning part starts at the
``<think>`` token itself, its answer part ends with the end-of-sequence token).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

__all__ = ["END_OF_THINKING_KEY", "end_of_thinking_ids", "official_spans", "official_text_parts"]

END_OF_THINKING_KEY = "poise.end_of_thinking_token"

# The official tag patterns (trainer.py _THINK_PATTERN, _ANSWER_PATTERN): the lazy group with \s* on both sides
# leaves the enclosed text's leading and trailing whitespace out of the span.
_TAGGED = {
    tag: re.compile(rf"<{tag}>\s*(.*?)\s*</{tag}>", flags=re.IGNORECASE | re.DOTALL) for tag in ("think", "answer")
}
_CLOSE_THINK = "</think>"


def end_of_thinking_ids(tokenizer, marker: str | None, where: str = END_OF_THINKING_KEY) -> tuple[int, ...]:
    """The token ids of the end-of-thinking marker: ``()`` for None, else what ``encode(marker)`` gives.

    Encoded without special tokens, as both official codes encode ``"</think>"`` (holi-lab/POISE
    ``trainer.py`` ``_set_estimator_runtime``; verl-recipe ``poise/trainer.py`` ``_compute_old_log_prob``).

    Raises:
        ValueError naming ``where``: the marker encodes to no token, or to the tokenizer's unknown token (it
        could never be generated, so the split and the pool cut would silently never happen).
    """
    if marker is None:
        return ()
    ids = tuple(int(token) for token in tokenizer.encode(str(marker), add_special_tokens=False))
    unknown = getattr(tokenizer, "unk_token_id", None)
    if not ids:
        raise ValueError(
            f"{where}={marker!r} encodes to no token: set it to the text the model writes to close its reasoning "
            "(Qwen3, DeepSeek-R1: '</think>'), or null to use the whole response as the answer part"
        )
    if unknown is not None and unknown in ids:
        raise ValueError(
            f"{where}={marker!r} encodes to the tokenizer's unknown token (ids {list(ids)}), so no response can "
            "contain it: set it to the text the model writes to close its reasoning (Qwen3, DeepSeek-R1: "
            "'</think>'), or null to use the whole response as the answer part"
        )
    return ids


def official_spans(text: str) -> tuple[tuple[int, int] | None, tuple[int, int] | None, str, str]:
    """Step 2 of the module docstring: ``(reasoning span, answer span, reasoning text, answer text)``.

    Spans are ``(start, end)`` character offsets into ``text`` (None when absent); the texts are what the
    fallback counts tokens of ("" when absent).
    """
    think = _TAGGED["think"].search(text)
    answer = _TAGGED["answer"].search(text)
    reasoning_span = think.span(1) if think else None
    reasoning_text = think.group(1) if think else ""
    if answer:
        return reasoning_span, answer.span(1), reasoning_text, answer.group(1)
    if _CLOSE_THINK not in text:
        return reasoning_span, None, reasoning_text, ""
    after = text.index(_CLOSE_THINK) + len(_CLOSE_THINK)
    start = len(text) - len(text[after:].lstrip())  # first non-space character after the first </think>
    answer_span = (start, len(text)) if start < len(text) else None
    return reasoning_span, answer_span, reasoning_text, text[after:].strip()


def _overlapping(offsets: Sequence[tuple[int, int]], span: tuple[int, int] | None) -> list[int]:
    """Indices of the tokens whose non-empty character range ``[start, end)`` overlaps ``span``."""
    if span is None:
        return []
    return [i for i, (start, end) in enumerate(offsets) if end > start and end > span[0] and start < span[1]]


def _row_parts(tokenizer, ids: list[int]) -> tuple[list[int], list[int]]:
    """Steps 1-3 for one response's real token ids: the real-token indices of its reasoning and answer parts."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    reasoning_span, answer_span, reasoning_text, answer_text = official_spans(text)
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = [(int(start), int(end)) for start, end in encoded["offset_mapping"]]
        aligned = len(encoded["input_ids"]) == len(ids)
    except Exception:  # noqa: BLE001 - the official code falls back on any failure to tokenize with offsets
        aligned = False
    if aligned:  # token i of the text's own tokenization stands for real token i
        return _overlapping(offsets, reasoning_span), _overlapping(offsets, answer_span)
    total = len(ids)
    reasoning_count = min(len(tokenizer.encode(reasoning_text, add_special_tokens=False)), total)
    answer_count = min(len(tokenizer.encode(answer_text, add_special_tokens=False)), total)
    return list(range(reasoning_count)), list(range(total - answer_count, total))


def official_text_parts(
    tokenizer, response_ids: torch.Tensor, response_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``poise.entropy_split=official_text``: ``(reasoning, answer)``, each ``(B, T)`` bool, for
    ``core.entropy.entropy_statistics(..., parts=...)``.

    Args:
        tokenizer: the policy's Hugging Face tokenizer (``decode``, ``encode``, and a call that returns
            ``offset_mapping``; without offsets every row takes the fallback, as in the official code).
        response_ids: ``(B, T)`` response token ids.
        response_mask: ``(B, T)``, 1 on real response tokens (the response is its real tokens in order).
    """
    if response_ids.shape != response_mask.shape or response_ids.dim() != 2:
        raise ValueError(
            f"response_ids {tuple(response_ids.shape)} and response_mask {tuple(response_mask.shape)} must both "
            "be (B, T)"
        )
    mask = (response_mask != 0).cpu()
    ids = response_ids.cpu()
    reasoning = torch.zeros_like(mask)
    answer = torch.zeros_like(mask)
    for row in range(mask.shape[0]):
        columns = mask[row].nonzero().squeeze(1)  # (n,) where the row's real tokens are, in order
        if columns.numel() == 0:
            continue
        reasoning_indices, answer_indices = _row_parts(tokenizer, ids[row, columns].tolist())
        reasoning[row, columns[reasoning_indices]] = True
        answer[row, columns[answer_indices]] = True
    return reasoning.to(response_mask.device), answer.to(response_mask.device)
