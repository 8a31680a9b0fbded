"""Sample responses with vLLM and score responses with the project's reward (the evidence commands' and the
evaluation command's).

Generation with transformers is :mod:`poise_verl.generation`. Texts are decoded with ``skip_special_tokens=True``,
as verl's reward loop decodes them, and scored by ``poise_verl.data.scoring.default_compute_score``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from poise_verl.analysis.prompts import PromptRow
from poise_verl.generation import Response, cut_response


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
            tokens = list(completion.token_ids)
            length, _ = cut_response(tokens, eos, len(tokens))
            # vLLM may stop on a stop token without returning it; "length" is the only truncation.
            group.append(Response(tokens[:length], truncated=completion.finish_reason == "length"))
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
