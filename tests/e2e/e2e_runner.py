"""Run the real entry point (`python -m poise_verl.main`) as a user would: a subprocess with its own local
Ray cluster on loopback, verl's trainer and worker groups, the project's own tiny policy and task."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Small and fast: 16 rollouts per step, short responses, micro-batches that divide the batch.
SMALL = [
    "budget.rollouts_per_step=16",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=16",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16",
    "data.val_max_samples=16",
    "poise.bootstrap_steps=1",
    "poise.min_fit_rows=8",
    "trainer.test_freq=2",
    "trainer.logger=[console,file]",
]


@dataclass
class Run:
    returncode: int
    log: str
    checkpoint_dir: Path

    def metrics(self) -> dict[int, dict[str, float]]:
        """{step: metrics} merged over every metrics JSONL the runs in this folder wrote (one per launch)."""
        steps: dict[int, dict[str, float]] = {}
        for path in sorted((self.checkpoint_dir / "metrics").glob("*.jsonl")):
            for line in path.read_text().splitlines():
                row = json.loads(line)
                steps.setdefault(row["step"], {}).update(row["data"])
        return steps


def run_main(args: list[str], workdir: Path, timeout: int = 420, small: list[str] = SMALL) -> Run:
    """`python -m poise_verl.main ARGS` in WORKDIR, checkpoints under WORKDIR/ckpt.

    Ray starts its own cluster in a short temp dir, unless ARGS join a running one (ray_init.address).
    """
    ray_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    checkpoint_dir = workdir / "ckpt"
    command = [
        sys.executable, "-m", "poise_verl.main", *small, *args,
        f"trainer.default_local_dir={checkpoint_dir}",
    ]
    if not any("ray_init.address=" in arg for arg in args):
        command.append(f"+ray_kwargs.ray_init._temp_dir={ray_dir}")
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline")
    try:
        out = subprocess.run(
            command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    log = out.stdout + out.stderr
    (workdir / f"log-{len(list(workdir.glob('log-*')))}.txt").write_text(log)
    return Run(out.returncode, log, checkpoint_dir)


def assert_finite(metrics: dict[str, float], keys: list[str]) -> None:
    missing = [k for k in keys if k not in metrics]
    assert not missing, f"missing metric keys {missing}; have {sorted(metrics)}"
    bad = {k: metrics[k] for k in keys if not math.isfinite(float(metrics[k]))}
    assert not bad, f"non-finite metrics {bad}"
