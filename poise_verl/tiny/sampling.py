"""Batched sampling and pass-rate measurement for the tiny policy, in plain torch (no verl).

Used by the build (to measure the warmed-up policy) and by ``quick_rl``. Prompts are grouped by token
length so no batch needs padding: the model then sees exactly the positions it will see under verl.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from poise_verl.tiny.reward import compute_score
from poise_verl.tiny.task import DATA_SOURCE, Problem
from poise_verl.tiny.tokenizer import prompt_text

MAX_NEW_TOKENS = 24  # the longest reference response (add_4x4 / mul_3x1) is 21 tokens with EOS


def encode_prompts(tokenizer, problems: list[Problem]) -> list[list[int]]:
    return [tokenizer(prompt_text(p.prompt), add_special_tokens=False)["input_ids"] for p in problems]


@torch.no_grad()
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
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(prompt_ids):
        by_length[len(ids)].append(i)
    out: list[list[list[int]]] = [[] for _ in prompt_ids]
    rows = [(i, k) for length in sorted(by_length) for i in by_length[length] for k in range(n)]
    start = 0
    while start < len(rows):
        length = len(prompt_ids[rows[start][0]])
        chunk = []
        while start < len(rows) and len(chunk) < batch_rows and len(prompt_ids[rows[start][0]]) == length:
            chunk.append(rows[start])
            start += 1
        input_ids = torch.tensor([prompt_ids[i] for i, _ in chunk])
        sampling = (
            {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
            if temperature > 0
            else {"do_sample": False}
        )
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            eos_token_id=eos,
            pad_token_id=pad,
            **sampling,
        )[:, length:].tolist()
        for (i, _), response in zip(chunk, generated, strict=True):
            if eos in response:
                response = response[: response.index(eos) + 1]
            out[i].append(response)
    return out


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
