"""The command line: ``python -m benchmarks.gpu_check [--quick] [--out FILE] [--path auto|verl|hand-written]``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from benchmarks import gpu_check
from benchmarks.gpu_check import verl_engine
from benchmarks.gpu_check.settings import Settings


def default_out() -> str:
    out = os.environ.get("OUT")
    return str(Path(out) / "gpu_check.json") if out else "gpu_check.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check",
        description=gpu_check.__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny model and batch on the CPU (smoke test)")
    parser.add_argument(
        "--out", default=default_out(), help="JSON result path (default: $OUT/gpu_check.json)"
    )
    parser.add_argument("--device", default=None, help="default: cuda when available (cpu with --quick)")
    parser.add_argument(
        "--dtype",
        choices=["bfloat16", "float32"],
        default=None,
        help="model dtype (default: bfloat16, float32 with --quick)",
    )
    parser.add_argument("--timing-pairs", type=int, default=None, help="alternating with/without pairs")
    parser.add_argument("--micro-batch-sequences", type=int, default=None)
    parser.add_argument("--logprob-chunk", type=int, default=None)
    parser.add_argument("--skip-probe", action="store_true", help="skip the CPU probe phase")
    parser.add_argument(
        "--path",
        choices=["auto", "verl", "hand-written"],
        default="auto",
        help="the forward to time: verl's engine where it imports (auto), verl's engine or fail, or the "
        "hand-written packed forward",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    device = args.device or ("cpu" if args.quick or not torch.cuda.is_available() else "cuda")
    # Before anything imports verl (importing poise_verl does, where verl is installed).
    verl_unavailable = "--path hand-written" if args.path == "hand-written" else verl_engine.prepare(device)
    if args.path == "verl" and verl_unavailable:
        print(f"error: --path verl, but {verl_unavailable}", file=sys.stderr, flush=True)
        return 2
    from benchmarks.gpu_check.check import run
    settings = Settings.quick(device) if args.quick else Settings.full(device)
    if args.dtype:
        settings.dtype = getattr(torch, args.dtype)
    if args.timing_pairs:
        settings.timing_pairs = args.timing_pairs
    if args.micro_batch_sequences:
        settings.micro_batch_sequences = args.micro_batch_sequences
    if args.logprob_chunk:
        settings.logprob_chunk = args.logprob_chunk
    if not args.quick and not device.startswith("cuda"):
        print("warning: the full check on a CPU takes hours; use --quick", file=sys.stderr, flush=True)
    return run(settings, Path(args.out), args.quick, args.skip_probe, verl_unavailable)
