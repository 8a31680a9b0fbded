"""avg@k and pass@k of a policy on verl-format parquet files, per data source.

    python -m poise_verl.eval CHECKPOINT --data FILE.parquet [FILE.parquet ...] [--k 8]
        [--temperature 0.6 --top-p 0.95] [--max-new-tokens 1024] [--output DIR] [--backend hf|vllm]

CHECKPOINT is a Hugging Face model directory or a verl checkpoint step folder ``.../global_step_N`` (FSDP,
world size 1; for more ranks merge first with ``python -m verl.model_merger merge --backend fsdp --local_dir
.../global_step_N/actor --target_dir MERGED`` and pass MERGED). Prompts are rendered with the tokenizer's
chat template as verl's rollout renders them, ``k`` responses are sampled per prompt and scored with
``poise_verl.data.scoring.default_compute_score`` (the reward the training used).

Writes DIR/summary.json, DIR/summary.csv (one row per data source and an ``all`` row) and
DIR/per_prompt.csv. avg@k is the mean correctness of the k samples; pass@j (j = 1, 2, 4, ..., k) is the
unbiased estimator of Chen et al. (2021) from the k samples. Defaults follow POISE's validation settings
(temperature 0.6, top_p 0.95); the paper reports avg@32 on its math benchmarks (--k 32).

Backends: ``hf`` (transformers ``generate``, CPU or one GPU; batched with left padding) and ``vllm``
(GPU; vLLM is imported only when chosen).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from poise_verl.analysis.passk import mean_pass_at_k, report_ks
from poise_verl.analysis.policy import CheckpointError, eos_token_ids, load_policy, resolve_checkpoint
from poise_verl.analysis.prompts import DataError, encode_prompt, read_prompts
from poise_verl.analysis.sampling import generate_vllm, score_responses
from poise_verl.generation import generate_hf

logger = logging.getLogger("poise_verl.eval")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m poise_verl.eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", help="HF model directory or verl checkpoint folder .../global_step_N")
    parser.add_argument("--data", nargs="+", required=True, help="verl-format parquet file(s)")
    parser.add_argument(
        "--k", type=int, default=8, help="samples per prompt: avg@k and pass@1..k (default 8)"
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.6,
        help="sampling temperature (POISE validation: 0.6; 0 = greedy)",
    )
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (POISE validation: 0.95)")
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=1024,
        help="response token limit (POISE trains with 8192; shortened to the model's position range)",
    )
    parser.add_argument("--output", default="eval_output", help="directory for summary.json/.csv (created)")
    parser.add_argument("--backend", choices=("hf", "vllm"), default="hf", help="hf: transformers; vllm: GPU")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N prompts of each file")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--batch-size", type=int, default=256, help="hf backend: rollouts per generate call")
    parser.add_argument(
        "--device", default=None, help="hf backend: cpu or cuda (default: cuda when available)"
    )
    parser.add_argument(
        "--dtype",
        choices=("auto", *DTYPES),
        default="auto",
        help="hf backend weights (auto: fp32 CPU, bf16 GPU)",
    )
    parser.add_argument(
        "--chat-template-kwargs",
        type=json.loads,
        default={},
        help="JSON passed to apply_chat_template, as verl's data.apply_chat_template_kwargs (e.g. '{\"enable_thinking\": true}')",
    )
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm backend")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85, help="vllm backend")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error("--k must be >= 1")
    if args.max_new_tokens < 1:
        parser.error("--max-new-tokens must be >= 1")
    return args


def summarise(rows, scores, correct, lengths, truncated, k: int) -> dict[str, dict]:
    """Per data source (and ``all``): prompts, avg@k, pass@j, mean score, response length, truncation."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[row.data_source].append(i)
    groups["all"] = list(range(len(rows)))
    summary = {}
    for name, members in groups.items():
        counts = [sum(correct[i]) for i in members]
        samples = sum(len(correct[i]) for i in members)
        entry = {
            "prompts": len(members),
            "samples_per_prompt": k,
            f"avg@{k}": sum(counts) / samples,
        }
        for j in report_ks(k):
            entry[f"pass@{j}"] = mean_pass_at_k(counts, k, j)
        entry["mean_score"] = sum(sum(scores[i]) for i in members) / samples
        entry["mean_response_tokens"] = sum(sum(lengths[i]) for i in members) / samples
        entry["truncated_fraction"] = sum(sum(truncated[i]) for i in members) / samples
        summary[name] = entry
    return summary


def write_outputs(output: Path, summary: dict, settings: dict, rows, correct, scores) -> None:
    output.mkdir(parents=True, exist_ok=True)
    (output / "summary.json").write_text(
        json.dumps({"settings": settings, "results": summary}, indent=2) + "\n"
    )
    columns = ["data_source", *next(iter(summary.values())).keys()]
    with open(output / "summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for name, entry in summary.items():
            writer.writerow({"data_source": name, **{key: _round(value) for key, value in entry.items()}})
    with open(output / "per_prompt.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "row", "data_source", "samples", "correct", "mean_score"])
        for row, group_correct, group_scores in zip(rows, correct, scores, strict=True):
            writer.writerow(
                [
                    row.file,
                    row.row,
                    row.data_source,
                    len(group_correct),
                    sum(group_correct),
                    _round(sum(group_scores) / len(group_scores)),
                ]
            )


def _round(value):
    return round(value, 6) if isinstance(value, float) else value


def _device(requested: str | None) -> torch.device:
    return torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def run(args: argparse.Namespace) -> dict:
    started = time.monotonic()
    rows = read_prompts(args.data, limit=args.limit)
    layout = resolve_checkpoint(args.checkpoint)
    if args.backend == "hf":
        device = _device(args.device)
        model, tokenizer, layout = load_policy(
            args.checkpoint, dtype=_dtype(args.dtype, device), device=device
        )
        prompt_ids = [encode_prompt(tokenizer, row.messages, args.chat_template_kwargs) for row in rows]
        logger.info("%d prompts x %d samples with transformers on %s", len(rows), args.k, device)
        # Seed after loading: building a model from a verl checkpoint's config draws random initial weights.
        torch.manual_seed(args.seed)
        generation_started = time.monotonic()
        responses = generate_hf(
            model,
            prompt_ids,
            n=args.k,
            eos_ids=eos_token_ids(model, tokenizer),
            pad_id=tokenizer.pad_token_id,
            temperature=args.temperature,
            top_p=args.top_p,
            max_new_tokens=args.max_new_tokens,
            batch_rows=args.batch_size,
            progress=not args.no_progress,
        )
    else:
        from transformers import AutoTokenizer, GenerationConfig

        model_dir = layout.hf_dir
        if layout.kind == "verl":  # vLLM reads HF directories: write the merged weights once
            model, tokenizer, _ = load_policy(args.checkpoint, dtype=torch.bfloat16)
            model_dir = Path(args.output) / "merged_hf"
            model.save_pretrained(model_dir)
            tokenizer.save_pretrained(model_dir)
            eos_ids = eos_token_ids(model, tokenizer)
            del model
        else:
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            config_eos = (
                GenerationConfig.from_pretrained(model_dir).eos_token_id
                if (model_dir / "generation_config.json").is_file()
                else None
            )
            eos_ids = [config_eos] if isinstance(config_eos, int) else list(config_eos or [])
            if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
                eos_ids.append(tokenizer.eos_token_id)
        prompt_ids = [encode_prompt(tokenizer, row.messages, args.chat_template_kwargs) for row in rows]
        generation_started = time.monotonic()
        responses = generate_vllm(
            str(model_dir),
            prompt_ids,
            n=args.k,
            temperature=args.temperature,
            top_p=args.top_p,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
            eos_ids=eos_ids,
            tensor_parallel_size=args.tensor_parallel_size,
            gpu_memory_utilization=args.gpu_memory_utilization,
        )
    generation_seconds = time.monotonic() - generation_started
    scores, correct = score_responses(tokenizer, rows, responses)
    lengths = [[len(r.token_ids) for r in group] for group in responses]
    truncated = [[r.truncated for r in group] for group in responses]
    summary = summarise(rows, scores, correct, lengths, truncated, args.k)
    settings = {
        "checkpoint": str(args.checkpoint),
        "checkpoint_kind": layout.kind,
        "data": [str(p) for p in args.data],
        "k": args.k,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_new_tokens": args.max_new_tokens,
        "backend": args.backend,
        "seed": args.seed,
        "limit": args.limit,
        "chat_template_kwargs": args.chat_template_kwargs,
        "generation_seconds": round(generation_seconds, 2),
        "total_seconds": round(time.monotonic() - started, 2),
    }
    write_outputs(Path(args.output), summary, settings, rows, correct, scores)
    return {"settings": settings, "results": summary}


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        report = run(args)
    except (CheckpointError, DataError) as error:
        sys.exit(f"error: {error}")
    k = args.k
    for name, entry in report["results"].items():
        passes = "  ".join(f"pass@{j} {entry[f'pass@{j}']:.3f}" for j in report_ks(k))
        print(f"{name:>20}: {entry['prompts']} prompts  avg@{k} {entry[f'avg@{k}']:.3f}  {passes}")
    print(f"wrote {Path(args.output) / 'summary.json'} and summary.csv")


if __name__ == "__main__":
    main()
