"""Sampling and pass-rate measurement for the tiny policy, in plain torch (no verl).

Used by the build (to measure the warmed-up policy). Generation is the project's one batched routine,
:func:`poise_verl.generation.generate_hf`, with batches that never mix prompt lengths, so no prompt
is padded: the model sees exactly the positions it sees under verl.
"""

from __future__ import annotations

from poise_verl.generation import generate_hf
from poise_verl.tiny.reward import compute_score
from poise_verl.tiny.task import DATA_SOURCE, Problem
from poise_verl.tiny.tokenizer import prompt_text

MAX_NEW_TOKENS = 24  # the longest reference response (add_4x4 / mul_3x1) is 21 tokens with EOS


def encode_prompts(tokenizer, problems: list[Problem]) -> list[list[int]]:
    return [tokenizer(prompt_text(p.prompt), add_special_tokens=False)["input_ids"] for p in problems]


def sample(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    n: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = MAX_NEW_TOKENS,
    batch_rows: int = 512,
) -> list[list[list[int]]]:
    """``n`` responses per prompt, each a token list ending at (and including) the first EOS if any.

    ``temperature=0`` is greedy. Returns ``out[prompt][k]``.
    """
    responses = generate_hf(
        model,
        prompt_ids,
        n=n,
        eos_ids=[tokenizer.eos_token_id],
        pad_id=tokenizer.pad_token_id,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        batch_rows=batch_rows,
        progress=False,
        same_length_batches=True,
    )
    return [[response.token_ids for response in group] for group in responses]


def pass_rates(
    model, tokenizer, problems: list[Problem], n: int, temperature: float, batch_rows: int = 512
) -> list[float]:
    """Per-prompt fraction of ``n`` responses that the task's reward scores 1."""
    responses = sample(
        model,
        tokenizer,
        encode_prompts(tokenizer, problems),
        n=n,
        temperature=temperature,
        batch_rows=batch_rows,
    )
    rates = []
    for problem, group in zip(problems, responses, strict=True):
        texts = tokenizer.batch_decode(group, skip_special_tokens=True)
        rates.append(sum(compute_score(DATA_SOURCE, t, problem.answer) for t in texts) / n)
    return rates
