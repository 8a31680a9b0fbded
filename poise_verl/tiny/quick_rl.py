"""A plain-torch RL check of the tiny assets (no verl): is there room for RL to raise accuracy?

On-policy REINFORCE with n rollouts per prompt and a leave-one-out sibling baseline
(A_i = R_i - mean_{j != i} R_j; for n=2 simply R_i - R_j), token-mean loss, Adam, grad clip 1.0.
It prints validation accuracy (greedy and temperature 1) over time. A tuning tool for the task and the
warm-up, not a trainer:

    python -m poise_verl.tiny.quick_rl --assets DIR --seconds 300
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from poise_verl.tiny.reward import compute_score
from poise_verl.tiny.sampling import encode_prompts, pass_rates, sample
from poise_verl.tiny.task import DATA_SOURCE, Problem


def load_problems(path: Path) -> list[Problem]:
    frame = pd.read_parquet(path)
    return [
        Problem(
            prompt=row.prompt[0]["content"],
            answer=row.reward_model["ground_truth"],
            level=row.extra_info["level"],
        )
        for row in frame.itertuples()
    ]


def evaluate(model, tokenizer, val: list[Problem]) -> tuple[float, float]:
    greedy = pass_rates(model, tokenizer, val, n=1, temperature=0.0)
    sampled = pass_rates(model, tokenizer, val, n=1, temperature=1.0)
    return sum(greedy) / len(greedy), sum(sampled) / len(sampled)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--assets", required=True, help="a directory written by poise_verl.tiny.build")
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--prompts", type=int, default=64, help="prompts per step")
    parser.add_argument("--n", type=int, default=2, help="rollouts per prompt")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--eval-every", type=float, default=30, help="seconds between evaluations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 on a busy machine)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    assets = Path(args.assets)
    tokenizer = AutoTokenizer.from_pretrained(assets / "model")
    model = AutoModelForCausalLM.from_pretrained(assets / "model")
    train = load_problems(assets / "data" / "train.parquet")
    val = load_problems(assets / "data" / "val.parquet")
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    curve = []
    started = time.monotonic()
    rollouts = informative = pairs = 0
    train_time = 0.0  # seconds spent outside evaluation
    last_eval = -float("inf")
    while True:
        if train_time - last_eval >= args.eval_every or train_time >= args.seconds:
            model.eval()
            greedy, sampled = evaluate(model, tokenizer, val)
            point = {
                "train_seconds": round(train_time),
                "rollouts": rollouts,
                "val_greedy": round(greedy, 3),
                "val_temperature1": round(sampled, 3),
                "informative_groups": round(informative / max(pairs, 1), 3),
            }
            curve.append(point)
            print(json.dumps(point), flush=True)
            informative = pairs = 0
            last_eval = train_time
            if train_time >= args.seconds:
                break
        step_started = time.monotonic()
        batch = rng.sample(train, args.prompts)
        prompt_ids = encode_prompts(tokenizer, batch)
        model.eval()
        responses = sample(model, tokenizer, prompt_ids, n=args.n, temperature=1.0)

        sequences, response_starts, advantages = [], [], []
        for problem, prompt, group in zip(batch, prompt_ids, responses, strict=True):
            rewards = [
                compute_score(DATA_SOURCE, tokenizer.decode(r, skip_special_tokens=True), problem.answer)
                for r in group
            ]
            pairs += 1
            informative += len(set(rewards)) > 1
            for response, reward in zip(group, rewards, strict=True):
                # Leave-one-out baseline: the mean reward of this rollout's siblings.
                baseline = (sum(rewards) - reward) / (args.n - 1)
                sequences.append(prompt + response)
                response_starts.append(len(prompt))
                advantages.append(reward - baseline)
        rollouts += len(sequences)

        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), tokenizer.pad_token_id)
        response_mask = torch.zeros((len(sequences), width))
        for row, (ids, start) in enumerate(zip(sequences, response_starts, strict=True)):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            response_mask[row, start : len(ids)] = 1.0
        attention_mask = (
            torch.arange(width)[None, :] < torch.tensor([len(s) for s in sequences])[:, None]
        ).long()

        model.train()
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        # Position t's logits score token t+1, so the response tokens' log-probs come from one step earlier.
        log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        token_log_probs = log_probs.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        mask = response_mask[:, 1:]
        advantage = torch.tensor(advantages)[:, None]
        # Token-mean aggregation over the whole batch, as in DAPO/POISE.
        loss = -(advantage * token_log_probs * mask).sum() / mask.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        train_time += time.monotonic() - step_started
    print(f"done in {time.monotonic() - started:.0f}s wall; curve: {json.dumps(curve)}")


if __name__ == "__main__":
    main()
