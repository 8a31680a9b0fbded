"""Batched generation with transformers ``generate``: the project's one routine for it.

:func:`generate_padded` (one left-padded ``generate`` call, optionally recording each sampled token's
log-probability, stoppable mid-way) and :func:`generate_hf` (``n`` samples per prompt in batches of rows). The CPU
rollout server (``poise_verl.verl_ext.cpu.hf_server``), the tiny build (``poise_verl.tiny.sampling``), the
evaluation command and the evidence commands (``poise_verl.analysis``) all generate through them.

Responses are token lists ending at (and including) the first stop token; a response without one hit the
token limit (``truncated``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, StoppingCriteria

logger = logging.getLogger(__name__)


@dataclass
class Response:
    """One sampled response: ``token_ids`` up to and including the first stop token; ``truncated`` when none.

    ``log_probs`` (when asked for) holds log p(token) of each of ``token_ids`` under the sampling distribution.
    """

    token_ids: list[int]
    truncated: bool
    log_probs: list[float] | None = None
    # Cut short by ``generate_padded``'s ``stop``: neither a stop token nor the budget ended it (a partial rollout).
    aborted: bool = False


def cut_response(tokens: list[int], stop_ids: set[int], budget: int) -> tuple[int, bool]:
    """(length, truncated) of a response: up to its first stop token (inclusive) within ``budget`` tokens."""
    for position, token in enumerate(tokens[:budget]):
        if token in stop_ids:
            return position + 1, False
    return min(budget, len(tokens)), True


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


def sampling_kwargs(temperature: float, top_p: float, top_k: int = 0) -> dict:
    """``generate`` arguments. transformers 5 leaves top_k unset (then 50 from defaults): pass top_k=0 so
    that temperature/top_p sampling is exactly that, as vLLM's SamplingParams(top_k=-1) is."""
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(
            f"need temperature >= 0, 0 < top_p <= 1 and top_k >= 0, got {temperature}, {top_p}, {top_k}"
        )
    if temperature == 0:
        return {"do_sample": False, "top_k": None, "top_p": None, "temperature": None}
    return {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k}


class TokenLogProbRecorder(LogitsProcessor, StoppingCriteria):
    """Records log p(token) of each sampled token during ``generate`` without keeping the logits.

    As a logits processor (transformers runs it ahead of its temperature/top-k/top-p warpers) it sees each
    step's raw logits and keeps ``log softmax(logits / T)`` for that step (raw logits when greedy); as a
    stopping criterion (called after the sampled token is appended) it picks out the sampled token's entry.
    Memory is one ``(B, V)`` row, not the ``(B, T, V)`` that ``output_logits=True`` would hold. These are
    the log-probs verl's actor computes for ``old_log_prob``; top-k/top-p only decide which token is drawn.
    """

    def __init__(self, temperature: float):
        self.temperature = temperature if temperature > 0 else 1.0
        self.step_log_probs: torch.Tensor | None = None
        self.sampled_log_probs: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor):
        if self.step_log_probs is None:  # logits-processor call: scores are this step's logits, (B, V)
            self.step_log_probs = torch.log_softmax(scores.float() / self.temperature, dim=-1)
            return scores
        # stopping-criterion call: input_ids now ends with the token just sampled, (B, L + t)
        self.sampled_log_probs.append(self.step_log_probs.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.step_log_probs = None
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class StopWhenSet(StoppingCriteria):
    """Stops every row of a ``generate`` call once ``event`` is set (checked after each generated token)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def generate_padded(
    model,
    prompts: Sequence[list[int]],
    max_new_tokens: int | Sequence[int],
    stop_ids: Sequence[int],
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    log_probs: bool = False,
    stop: threading.Event | None = None,
) -> list[Response]:
    """One response per prompt from a single left-padded ``generate`` call.

    Prompts of different lengths are left-padded with an attention mask (``generate`` derives the position
    ids from the mask, so a padded prompt sees the positions it would see alone). ``max_new_tokens`` is one
    budget or one per prompt: the call runs to the largest and each response is cut at its own budget and at
    its first stop token (inclusive), which is exact because a sampled token never depends on later ones.
    ``temperature=0`` is greedy. Sampling draws from torch's global generator: seed it for repeatable samples.
    ``stop``: once set (from another thread), generation ends after the current token; a response that had not
    ended by then is returned as far as it got, ``aborted`` (the partial rollout an RL server resumes later).
    """
    budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(budgets) != len(prompts) or not prompts:
        raise ValueError(f"need one budget per prompt and at least one prompt, got {len(budgets)}, {len(prompts)}")
    stops = set(stop_ids)
    device = next(model.parameters()).device
    width = max(len(ids) for ids in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    recorder = TokenLogProbRecorder(temperature) if log_probs else None
    criteria = ([recorder] if recorder else []) + ([StopWhenSet(stop)] if stop is not None else [])
    generated = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        max_new_tokens=_token_limit(model, width, max(budgets)),
        min_new_tokens=0,
        eos_token_id=sorted(stops) or None,
        pad_token_id=pad_id,
        repetition_penalty=1.0,
        use_cache=True,
        logits_processor=[recorder] if recorder else None,
        stopping_criteria=criteria or None,
        **sampling_kwargs(temperature, top_p, top_k),
    )[:, width:].tolist()
    stopped = stop is not None and stop.is_set()
    token_log_probs = torch.stack(recorder.sampled_log_probs, dim=1).tolist() if recorder else None
    responses = []
    for row, tokens in enumerate(generated):
        length, truncated = cut_response(tokens, stops, budgets[row])
        # Ended by ``stop`` rather than by a stop token or its budget: generated is then shorter than the budget.
        aborted = stopped and truncated and length < budgets[row]
        responses.append(
            Response(
                token_ids=tokens[:length],
                truncated=truncated and not aborted,
                log_probs=token_log_probs[row][:length] if token_log_probs is not None else None,
                aborted=aborted,
            )
        )
    return responses


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
    same_length_batches: bool = False,
) -> list[list[Response]]:
    """``n`` responses per prompt with transformers ``generate``: ``out[prompt][sample]``.

    Rows (each prompt ``n`` times) are sorted by prompt length (stable) and generated ``batch_rows`` at a
    time by :func:`generate_padded`. With ``same_length_batches`` a batch also ends where the prompt length
    changes, so no prompt is ever padded. Seed torch before calling for reproducible samples.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    rows = [i for i in order for _ in range(n)]
    out: list[list[Response]] = [[] for _ in prompt_ids]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(rows), desc="generate", unit="rollout")
    start, batches = 0, 0
    while start < len(rows):
        chunk = rows[start : start + batch_rows]
        if same_length_batches:
            length = len(prompt_ids[chunk[0]])
            chunk = [i for i in chunk if len(prompt_ids[i]) == length]  # rows are sorted: a prefix
        start += len(chunk)
        batches += 1
        responses = generate_padded(
            model, [prompt_ids[i] for i in chunk], max_new_tokens, eos_ids, pad_id, temperature, top_p
        )
        for i, response in zip(chunk, responses, strict=True):
            out[i].append(response)
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    logger.debug("generated %d rollouts in %d batches", len(rows), batches)
    return out
