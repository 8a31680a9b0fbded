"""A plain single-process GRPO trainer on the tiny CPU default's model and batch: the yardstick for a step.

One step does the arithmetic a step of the tiny default's GRPO does, in one Python process with no Ray,
no worker groups, no rollout server and no FSDP:

1. takes the next 8 prompts of the tiny task's training parquet, rendered with the chat template as verl
   renders them;
2. samples 16 responses per prompt (128 rows) with transformers ``generate`` (temperature 1, no top-k/top-p,
   at most ``data.max_response_length`` = 24 new tokens, cut at the first EOS) through
   :func:`poise_verl.generation.generate_hf`, the project's one batched-generation routine;
3. scores each response with the project's reward (:func:`poise_verl.tiny.reward.compute_score`);
4. group-normalised advantages as verl's GRPO computes them: ``(R - mean_group) / (std_group + 1e-6)``
   (unbiased std);
5. one clipped token-mean policy-gradient loss (clip 0.2 / 0.28, old log-probs = the same forward detached,
   since there is one optimizer step per batch), one forward/backward over the 128 prompt+response rows,
   gradient clipping at 1.0 and one AdamW step (lr 1e-4, weight decay 0.01: verl's actor defaults with the
   tiny default's lr).

It reports each step's wall-clock and its split into generate / reward / update. No reference model, no
KL, no validation: the tiny default has none of them inside a step either.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

PROMPTS_PER_STEP = 8
SAMPLES_PER_PROMPT = 16
MAX_NEW_TOKENS = 24
LR = 1e-4
WEIGHT_DECAY = 0.01
CLIP_LOW, CLIP_HIGH = 0.2, 0.28
GRAD_CLIP = 1.0


@dataclass
class PlainStep:
    seconds: float
    phases: dict[str, float]
    reward_mean: float
    loss: float
    grad_norm: float


@dataclass
class PlainRun:
    steps: list[PlainStep] = field(default_factory=list)
    startup_s: float = 0.0


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """GRPO's outcome advantage per row of ``rewards`` ``(groups, n)``: (R - group mean) / (group std + 1e-6)."""
    return (rewards - rewards.mean(-1, keepdim=True)) / (rewards.std(-1, keepdim=True) + 1e-6)


def clipped_token_mean_loss(
    log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """PPO's clipped surrogate (asymmetric clip), averaged over every response token of the batch.

    ``log_probs``, ``old_log_probs``, ``mask``: ``(B, T)``; ``advantages``: ``(B,)`` broadcast over tokens.
    """
    ratio = torch.exp(log_probs - old_log_probs)
    advantages = advantages[:, None]
    loss = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - CLIP_LOW, 1 + CLIP_HIGH))
    return (loss * mask).sum() / mask.sum().clamp(min=1)


def training_batch(
    prompts: list[list[int]], responses: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``prompt + response`` rows: ``input_ids``, ``attention_mask`` and the response-token mask
    aligned with the next-token log-probs (position t predicts token t + 1), all ``(B, L)`` / ``(B, L - 1)``."""
    width = max(len(p) + len(r) for p, r in zip(prompts, responses, strict=True))
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    response_mask = torch.zeros((len(prompts), width - 1))
    for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        ids = prompt + response
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
        response_mask[row, len(prompt) - 1 : len(ids) - 1] = 1
    return input_ids, attention_mask, response_mask


def train_step(model, optimizer, prompts, responses, advantages, pad_id) -> tuple[float, float]:
    """One clipped token-mean forward/backward and one optimizer step; returns (loss, grad norm)."""
    model.train()
    input_ids, attention_mask, mask = training_batch(prompts, responses, pad_id)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    loss = clipped_token_mean_loss(log_probs, log_probs.detach(), advantages, mask)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach()), float(grad_norm)


def run_plain(assets: Path, steps: int, seed: int = 0) -> PlainRun:
    """``steps`` steps of the plain loop on the tiny assets at ``assets`` (a ``tiny-v1`` directory)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from poise_verl.analysis.prompts import encode_prompt, read_prompts
    from poise_verl.generation import generate_hf
    from poise_verl.tiny.reward import compute_score

    start = time.perf_counter()
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(assets / "model")
    model = AutoModelForCausalLM.from_pretrained(
        assets / "model", dtype=torch.float32, attn_implementation="sdpa"
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    rows = read_prompts([assets / "data" / "train.parquet"], limit=steps * PROMPTS_PER_STEP)
    eos_ids = [tokenizer.eos_token_id]
    run = PlainRun(startup_s=time.perf_counter() - start)

    for step in range(steps):
        t0 = time.perf_counter()
        batch = rows[step * PROMPTS_PER_STEP : (step + 1) * PROMPTS_PER_STEP]
        prompt_ids = [encode_prompt(tokenizer, row.messages) for row in batch]
        model.eval()
        groups = generate_hf(
            model,
            prompt_ids,
            n=SAMPLES_PER_PROMPT,
            eos_ids=eos_ids,
            pad_id=tokenizer.pad_token_id,
            temperature=1.0,
            max_new_tokens=MAX_NEW_TOKENS,
            batch_rows=PROMPTS_PER_STEP * SAMPLES_PER_PROMPT,
            progress=False,
        )
        t1 = time.perf_counter()
        rewards = torch.tensor(
            [
                [
                    compute_score(row.data_source, text, row.ground_truth, row.extra_info)
                    for text in tokenizer.batch_decode([r.token_ids for r in group], skip_special_tokens=True)
                ]
                for row, group in zip(batch, groups, strict=True)
            ]
        )
        advantages = group_advantages(rewards).flatten()
        t2 = time.perf_counter()
        prompts = [ids for ids in prompt_ids for _ in range(SAMPLES_PER_PROMPT)]
        responses = [response.token_ids for group in groups for response in group]
        loss, grad_norm = train_step(model, optimizer, prompts, responses, advantages, tokenizer.pad_token_id)
        t3 = time.perf_counter()
        run.steps.append(
            PlainStep(
                seconds=t3 - t0,
                phases={"generate": t1 - t0, "reward": t2 - t1, "update": t3 - t2},
                reward_mean=float(rewards.mean()),
                loss=loss,
                grad_norm=grad_norm,
            )
        )
    return run
