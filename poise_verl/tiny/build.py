"""Build the tiny CPU policy and its task: tokenizer, supervised warm-up, parquet data, measurements.

    python -m poise_verl.tiny.build --out DIR --seed 0

writes

    DIR/model/             Qwen3ForCausalLM (safetensors) + tokenizer files: actor_rollout_ref.model.path
    DIR/data/train.parquet DIR/data/val.parquet: verl RLHFDataset rows (see poise_verl.tiny.task)
    DIR/build_info.json    seed, versions, recipe, measured accuracy and pass-rate spread, build time

The warm-up is deliberately short: it stops while the policy is right on some samples and wrong on
others for most prompts, which is where RL with a baseline has something to learn.

The package ships the assets this recipe built (``poise_verl/tiny/assets``, about 5 MB), and runs use them: the
warm-up's floating point differs between CPUs, so a rebuild elsewhere gives a slightly different policy (the
same machine reproduces its own build bit for bit), and every figure in the docs is measured on the shipped
one. Set ``POISE_VERL_CACHE=DIR`` to run on a build of your own instead: ``ensure_tiny_assets`` builds into
``DIR/tiny-v<RECIPE_VERSION>`` on first use.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import platform
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from poise_verl.tiny.model import count_parameters, make_model
from poise_verl.tiny.paths import RECIPE_VERSION, tiny_assets_dir
from poise_verl.tiny.sampling import pass_rates
from poise_verl.tiny.task import LEVELS, Problem, make_splits, sample_problems, write_parquet
from poise_verl.tiny.tokenizer import build_tokenizer, prompt_text

logger = logging.getLogger(__name__)

TRAIN_PROMPTS = 32768
# 2048 greedy validation prompts: one validation's binomial standard error is at most 1.1 points (at 50%).
VAL_PROMPTS = 2048
WARMUP_MAX_STEPS = 2000
WARMUP_BATCH = 64
WARMUP_LR = 3e-3
# The warm-up stops once greedy accuracy on CHECK_PROMPTS train prompts reaches TARGET_ACCURACY,
# checked every CHECK_EVERY steps.
TARGET_ACCURACY = 0.4
CHECK_PROMPTS = 256
CHECK_EVERY = 50
# Measurement after the warm-up: greedy accuracy on the whole validation set and temperature-1 pass
# rates of MEASURE_PROMPTS validation prompts with MEASURE_SAMPLES samples each.
MEASURE_PROMPTS = 200
MEASURE_SAMPLES = 16


def _encode_example(tokenizer, problem: Problem) -> tuple[list[int], int]:
    """Token ids of prompt + reference response + EOS, and the prompt length."""
    prompt = tokenizer(prompt_text(problem.prompt), add_special_tokens=False)["input_ids"]
    response = tokenizer(problem.solution, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt + response, len(prompt)


def _collate(tokenizer, problems: list[Problem]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) ids, attention mask and labels (-100 on prompt and padding)."""
    encoded = [_encode_example(tokenizer, p) for p in problems]
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
    labels = torch.full((len(encoded), width), -100)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, (ids, prompt_length) in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
        labels[row, prompt_length : len(ids)] = torch.tensor(ids[prompt_length:])
    return input_ids, mask, labels


def warm_up(
    model,
    tokenizer,
    max_steps: int,
    seed: int,
    exclude: set[str],
    check: list[Problem],
    target_accuracy: float = TARGET_ACCURACY,
    batch_size: int = WARMUP_BATCH,
    lr: float = WARMUP_LR,
    check_every: int = CHECK_EVERY,
) -> list[dict]:
    """Supervised training on reference solutions until greedy accuracy on ``check`` reaches the target.

    Why stop on accuracy rather than after a fixed number of steps: a model this small learns each
    level's digit alignment in a sudden jump, so a fixed step count lands either before the jumps (almost
    every prompt at 0%) or after them (almost every prompt at 100%). Stopping in the middle of the jumps
    leaves many prompts partly solved, and the stop point does not depend on the machine's speed.
    Constant learning rate after a short linear warm-up. Returns the log.
    """
    rng = random.Random(seed * 1000 + 3)
    stream = sample_problems(rng, exclude=exclude)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 30))
    history = []
    started = time.monotonic()
    for step in range(1, max_steps + 1):
        model.train()
        input_ids, mask, labels = _collate(tokenizer, [next(stream) for _ in range(batch_size)])
        logits = model(input_ids=input_ids, attention_mask=mask).logits
        # logits at position t predict token t+1.
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % check_every == 0 or step == max_steps:
            model.eval()
            accuracy = sum(pass_rates(model, tokenizer, check, n=1, temperature=0.0)) / len(check)
            entry = {
                "step": step,
                "loss": round(loss.item(), 4),
                "check_greedy_accuracy": round(accuracy, 4),
                "seconds": round(time.monotonic() - started, 1),
            }
            history.append(entry)
            logger.info(
                "warm-up step %d loss %.4f greedy accuracy %.3f (target %.2f, %.0fs)",
                step,
                loss.item(),
                accuracy,
                target_accuracy,
                entry["seconds"],
            )
            if accuracy >= target_accuracy:
                break
    model.eval()
    return history


def measure(
    model,
    tokenizer,
    val: list[Problem],
    seed: int,
    prompts: int = MEASURE_PROMPTS,
    samples: int = MEASURE_SAMPLES,
) -> dict:
    """Greedy validation accuracy, temperature-1 accuracy and the spread of per-prompt pass rates."""
    torch.manual_seed(seed)
    greedy = pass_rates(model, tokenizer, val, n=1, temperature=0.0)
    subset = val[:prompts]
    rates = pass_rates(model, tokenizer, subset, n=samples, temperature=1.0)
    histogram = [0] * 11  # bins of width 0.1, the last one holding exactly 1.0
    for r in rates:
        histogram[min(int(r * 10 + 1e-9), 10)] += 1
    by_level: dict[str, list[float]] = {}
    for problem, rate in zip(subset, rates, strict=True):
        by_level.setdefault(LEVELS[problem.level].name, []).append(rate)
    return {
        "val_greedy_accuracy": sum(greedy) / len(greedy),
        "val_temperature1_accuracy": sum(rates) / len(rates),
        "pass_rate_fraction_in_0.1_0.9": sum(0.1 <= r <= 0.9 for r in rates) / len(rates),
        "pass_rate_fraction_0": sum(r == 0 for r in rates) / len(rates),
        "pass_rate_fraction_1": sum(r == 1 for r in rates) / len(rates),
        "pass_rate_histogram_bins_of_0.1": histogram,
        "temperature1_accuracy_by_level": {k: round(sum(v) / len(v), 3) for k, v in by_level.items()},
        "measured_on": f"greedy: {len(val)} val prompts; pass rates: {len(subset)} x {samples} samples",
    }


def build(
    out: str | Path,
    seed: int = 0,
    steps: int = WARMUP_MAX_STEPS,
    train_prompts: int = TRAIN_PROMPTS,
    val_prompts: int = VAL_PROMPTS,
    measure_prompts: int = MEASURE_PROMPTS,
    measure_samples: int = MEASURE_SAMPLES,
    threads: int = 2,
) -> Path:
    """Build everything into ``out`` (created; existing files overwritten).

    Tests pass small ``steps``, split sizes and measurement sizes; ``measure_prompts=0`` skips measuring.
    """
    started = time.monotonic()
    out = Path(out)
    # Two threads are 1.5x faster than one on an idle 2-core machine, but when other processes compete
    # for the cores, two threads were 60x slower (measured: 191 s vs 3 s for the test-sized build).
    torch.set_num_threads(threads)
    tokenizer = build_tokenizer()
    train, val = make_splits(train_prompts, val_prompts, seed)
    write_parquet(train, out / "data" / "train.parquet", split="train")
    write_parquet(val, out / "data" / "val.parquet", split="val")
    logger.info("wrote %d train and %d val prompts to %s", len(train), len(val), out / "data")

    model = make_model(tokenizer, seed)
    # Warm-up problems are drawn fresh, avoiding validation prompts only: the RL train prompts are
    # ordinary in-distribution prompts, so seeing some of them here is like pre-training data overlap.
    history = warm_up(
        model, tokenizer, steps, seed, exclude={p.prompt for p in val}, check=train[:CHECK_PROMPTS]
    )
    model.save_pretrained(out / "model", safe_serialization=True)
    tokenizer.save_pretrained(out / "model")

    info = {
        "recipe_version": RECIPE_VERSION,
        "seed": seed,
        "torch_threads": threads,
        "warm_up": {
            "max_steps": steps,
            "steps": history[-1]["step"],
            "target_accuracy": TARGET_ACCURACY,
            "batch_size": WARMUP_BATCH,
            "lr": WARMUP_LR,
            "log": history,
        },
        "train_prompts": len(train),
        "val_prompts": len(val),
        "parameters": count_parameters(model),
        "levels": [level.name for level in LEVELS],
        "versions": _versions(),
    }
    if measure_prompts > 0:
        logger.info("measuring the warmed-up policy")
        info["measured"] = measure(model, tokenizer, val, seed, measure_prompts, measure_samples)
        logger.info("measured %s", json.dumps(info["measured"]))
    info["build_seconds"] = round(time.monotonic() - started, 1)
    (out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    logger.info("built %s in %.0fs", out, info["build_seconds"])
    return out


def _versions() -> dict:
    import tokenizers
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }


def ensure_tiny_assets(cache_dir: str | Path | None = None, seed: int = 0) -> Path:
    """The tiny assets (``cache_dir``, else :func:`tiny_assets_dir`), built there first if they are not
    (about a minute on an idle 2-core machine; the shipped ones are always there).

    Safe across processes: a lock file serialises builders, the build happens in a temporary directory
    beside the target and is renamed into place, so a reader never sees a half-built directory.
    """
    target = Path(cache_dir) if cache_dir is not None else tiny_assets_dir()
    if (target / "build_info.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock, _locked(lock):
        if (target / "build_info.json").exists():  # another process built it while we waited
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            logger.info("building tiny assets into %s (first use)", target)
            build(staging, seed=seed)
            if target.exists():  # a leftover without build_info.json: incomplete, replace it
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


@contextlib.contextmanager
def _locked(handle):
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="directory to write model/, data/ and build_info.json")
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the data splits, initialisation and warm-up"
    )
    parser.add_argument("--steps", type=int, default=WARMUP_MAX_STEPS, help="at most this many warm-up steps")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 on a busy machine)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    build(args.out, seed=args.seed, steps=args.steps, threads=args.threads)


if __name__ == "__main__":
    main()
