"""Sample responses (transformers ``generate`` or vLLM) and score them with the project's reward.

Responses are token lists ending at (and including) the first end-of-sequence token; a response without
one hit the token limit (``truncated``). Texts are decoded with ``skip_special_tokens=True``, as verl's
reward loop decodes them, and scored by ``poise_verl.data.scoring.default_compute_score``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from poise_verl.analysis.prompts import PromptRow

logger = logging.getLogger(__name__)


@dataclass
class Response:
    """One sampled response: ``token_ids`` up to and including the first EOS; ``truncated`` when none."""

    token_ids: list[int]
    truncated: bool


def _cut_at_eos(tokens: list[int], eos_ids: set[int]) -> Response:
    for position, token in enumerate(tokens):
        if token in eos_ids:
            return Response(tokens[: position + 1], truncated=False)
    return Response(tokens, truncated=True)


def _token_limit(model, prompt_length: int, max_new_tokens: int) -> int:
    """``max_new_tokens``, shortened so prompt + response stays within the model's position range."""
    positions = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if positions is None:
        return max_new_tokens
    room = positions - prompt_length
    if room < 1:
        raise ValueError(
            f"a prompt of {prompt_length} tokens leaves no room in the model's {positions} positions"
        )
    return min(max_new_tokens, room)


def sampling_kwargs(temperature: float, top_p: float) -> dict:
    """``generate`` arguments. transformers 5 leaves top_k unset (then 50 from defaults): pass top_k=0 so
    that temperature/top_p sampling is exactly that, as vLLM's SamplingParams(top_k=-1) is."""
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if temperature == 0:
        return {"do_sample": False, "top_k": None, "top_p": None, "temperature": None}
    return {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0}


@torch.no_grad()
def generate_hf(
    model,
    prompt_ids: Sequence[list[int]],
    n: int,
    eos_ids: Sequence[int],
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 1024,
    batch_rows: int = 256,
    progress: bool = True,
) -> list[list[Response]]:
    """``n`` responses per prompt with transformers ``generate``: ``out[prompt][sample]``.

    Rows are sorted by prompt length and batched ``batch_rows`` at a time with left padding and an
    attention mask (``generate`` derives the position ids from the mask, so a padded prompt sees the same
    positions as an unpadded one). Seed torch before calling for reproducible samples.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    eos = set(eos_ids)
    device = next(model.parameters()).device
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    rows = [i for i in order for _ in range(n)]
    out: list[list[Response]] = [[] for _ in prompt_ids]
    batches = math.ceil(len(rows) / batch_rows)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(rows), desc="generate", unit="rollout")
    for start in range(0, len(rows), batch_rows):
        chunk = rows[start : start + batch_rows]
        width = max(len(prompt_ids[i]) for i in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids = prompt_ids[i]
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=_token_limit(model, width, max_new_tokens),
            eos_token_id=list(eos),
            pad_token_id=pad_id,
            **sampling_kwargs(temperature, top_p),
        )[:, width:].tolist()
        for i, tokens in zip(chunk, generated, strict=True):
            out[i].append(_cut_at_eos(tokens, eos))
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    logger.debug("generated %d rollouts in %d batches", len(rows), batches)
    return out


def generate_vllm(
    model_dir: str,
    prompt_ids: Sequence[list[int]],
    n: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    eos_ids: Sequence[int],
    **llm_kwargs,
) -> list[list[Response]]:
    """``n`` responses per prompt with vLLM (GPU). ``model_dir`` must be a HF directory with weights."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError as error:
        raise RuntimeError(
            "--backend vllm needs vLLM, which is not installed in this environment; install the project's GPU "
            "extra (pip install -e '.[gpu]', vllm==0.24.0 as verl 0.9.1 pins) or use --backend hf"
        ) from error
    llm = LLM(model=model_dir, tokenizer=model_dir, seed=seed, **llm_kwargs)
    params = SamplingParams(
        n=n,
        temperature=temperature,
        top_p=top_p,
        top_k=-1,
        max_tokens=max_new_tokens,
        seed=seed,
        stop_token_ids=list(eos_ids),
    )
    outputs = llm.generate([{"prompt_token_ids": list(ids)} for ids in prompt_ids], params)
    eos = set(eos_ids)
    results = []
    for output in outputs:
        group = []
        for completion in output.outputs:
            response = _cut_at_eos(list(completion.token_ids), eos)
            # vLLM may stop on a stop token without returning it; "length" is the only truncation.
            response.truncated = completion.finish_reason == "length"
            group.append(response)
        results.append(group)
    return results


def score_text(row: PromptRow, text: str) -> tuple[float, bool]:
    """``(score, correct)`` of one decoded response.

    A dict result gives ``score`` and, when present, ``acc`` as correctness (POISE's and DAPO's scorers);
    otherwise a response is correct when its score reaches 1.0 (a full-credit rule-based reward).
    """
    from poise_verl.data.scoring import default_compute_score

    result = default_compute_score(row.data_source, text, row.ground_truth, row.extra_info)
    if isinstance(result, dict):
        if "score" not in result:
            raise ValueError(f"the scorer of data_source {row.data_source!r} returned a dict without 'score'")
        score = float(result["score"])
        correct = bool(result["acc"]) if "acc" in result else score >= 1.0 - 1e-6
    else:
        score = float(result)
        correct = score >= 1.0 - 1e-6
    if not math.isfinite(score):
        raise ValueError(f"{row.file}, row {row.row}: the scorer returned a non-finite score {score}")
    return score, correct


def score_responses(
    tokenizer, rows: Sequence[PromptRow], responses: Sequence[Sequence[Response]]
) -> tuple[list[list[float]], list[list[bool]]]:
    """Scores and correctness of every response: ``scores[prompt][sample]``, ``correct[prompt][sample]``."""
    scores, correct = [], []
    for row, group in zip(rows, responses, strict=True):
        texts = tokenizer.batch_decode([r.token_ids for r in group], skip_special_tokens=True)
        pairs = [score_text(row, text) for text in texts]
        scores.append([s for s, _ in pairs])
        correct.append([c for _, c in pairs])
    return scores, correct
