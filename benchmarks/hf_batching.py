"""How the CPU rollout server batches requests that arrive one after another, on the wall clock.

    python -m benchmarks.hf_batching [--requests 15] [--quiet-ms 50] [--gaps-ms 5,10,25,50,100] [--out FILE]

verl's agent loop sends a step's requests one after another; the ``hf`` rollout server
(``poise_verl.verl_ext.cpu.hf_server``) puts them into one ``generate`` while each next one arrives within its
quiet period (``batch_wait_s``). tests/verl_ext/test_hf_rollout_server.py checks that rule on a virtual clock,
where sleeps take no time and their order is exact; this runs it on the real one, with real ``asyncio.sleep``
gaps, on the shipped tiny policy: for each gap between requests, the generate calls' batch sizes and the time
from the first request to the last response. With gaps well under the quiet period one batch serves them all
(the tests used to ask for that at 10 ms gaps and a 50 ms quiet period); a loaded machine stretches the gaps and
can split the batch. The load average is printed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path


def make_server(quiet_s: float):
    from verl.workers.config import HFModelConfig, RolloutConfig
    from verl.workers.rollout.replica import RolloutMode

    import poise_verl.verl_ext.cpu  # noqa: F401  (registers platform and rollout)
    from poise_verl.tiny.build import ensure_tiny_assets
    from poise_verl.verl_ext.cpu.hf_server import HFRolloutServer

    config = RolloutConfig(
        name="hf", prompt_length=16, response_length=8, tensor_model_parallel_size=1, dtype="float32"
    )
    model_config = HFModelConfig(path=str(ensure_tiny_assets() / "model"))
    return HFRolloutServer(config, model_config, RolloutMode.HYBRID, replica_rank=0, batch_wait_s=quiet_s)


def staggered(server, requests: int, gap_s: float) -> dict:
    batch_sizes = []
    generate_batch = server.generate_batch

    def counting(prompts, *args):
        batch_sizes.append(len(prompts))
        return generate_batch(prompts, *args)

    server.generate_batch = counting
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(server.model_config.local_path or server.model_config.path)
    prompts = [
        tokenizer(f"<|im_start|>{i}+{i % 7}=", add_special_tokens=False)["input_ids"] for i in range(requests)
    ]
    greedy = {"temperature": 0.0, "max_tokens": 4}

    async def arriving(i):
        await asyncio.sleep(gap_s * i)
        return await server.generate(prompts[i], dict(greedy), request_id=str(i))

    async def run():
        return await asyncio.gather(*(arriving(i) for i in range(requests)))

    started = time.perf_counter()
    asyncio.run(run())
    elapsed = time.perf_counter() - started
    server.generate_batch = generate_batch
    server._batcher = None  # the next run makes its own in its own event loop
    return {"gap_ms": 1000 * gap_s, "batch_sizes": batch_sizes, "first_request_to_last_response_s": elapsed}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=15)
    parser.add_argument("--quiet-ms", type=float, default=50.0, help="the server's quiet period")
    parser.add_argument("--gaps-ms", default="5,10,25,50,100", help="gaps between requests to try")
    parser.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    server = make_server(args.quiet_ms / 1000)
    staggered(server, 2, 0.0)  # warm-up: the first generate pays one-off costs
    rows = [staggered(server, args.requests, float(g) / 1000) for g in args.gaps_ms.split(",")]
    result = {"quiet_ms": args.quiet_ms, "requests": args.requests, "runs": rows}
    result["load_average_before_after"] = [load_before, os.getloadavg()[0]]
    print(f"quiet period {args.quiet_ms:.0f} ms, {args.requests} requests")
    for row in rows:
        print(
            f"  gap {row['gap_ms']:6.1f} ms: batches {row['batch_sizes']}, "
            f"{row['first_request_to_last_response_s']:.3f} s first request to last response"
        )
    print(f"  load average before/after: {result['load_average_before_after']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
