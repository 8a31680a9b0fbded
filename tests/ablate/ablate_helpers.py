"""Helpers of the ablation tests: synthetic runs, written as verl's `file` logger and the driver would."""

from __future__ import annotations

import json
from pathlib import Path

from poise_verl.ablate.plan import DONE_MARKER, RUN_INFO, AlgoConfig

REPO = Path(__file__).resolve().parents[2]
BUDGET = 16


def algo_config(n: int, **changes) -> AlgoConfig:
    """What read_algo_config would say for the small setting (16 rollouts/step, validation every 2 steps)."""
    fields = {
        "rollouts_per_step": BUDGET,
        "n": n,
        "seed_keys": ("data.seed", "actor_rollout_ref.rollout.seed", "poise.probe.seed"),
        "experiment_name": "tiny",
        "logger": ("console", "file"),
        "val_files": (),
        "val_max_samples": 16,
        "val_samples_per_prompt": 1,
        "shuffle": True,
        "test_freq": 2,
        "total_training_steps": 4,
    }
    fields.update(changes)
    return AlgoConfig(**fields)


def write_launch(folder: Path, name: str, rows: dict[int, dict[str, float]]) -> None:
    """One launch's metrics file: one JSON row per step, as verl's FileLogger writes them."""
    (folder / "metrics").mkdir(parents=True, exist_ok=True)
    with open(folder / "metrics" / f"{name}.jsonl", "w") as out:
        out.writelines(json.dumps({"step": step, "data": rows[step]}) + "\n" for step in sorted(rows))


def mark_done(run, wall_clock_s: float) -> None:
    """What a finished launch leaves beside its metrics."""
    run.folder.mkdir(parents=True, exist_ok=True)
    (run.folder / RUN_INFO).write_text(json.dumps({"overrides": list(run.overrides)}))
    (run.folder / "attempts.jsonl").write_text(
        json.dumps({"started_at": "t", "wall_clock_s": wall_clock_s, "returncode": 0, "command": []}) + "\n"
    )
    (run.folder / DONE_MARKER).write_text(json.dumps({"wall_clock_s": wall_clock_s}))


def launch_config(folder: Path):
    """The resolved config a run's launch ran with: the driver sets ``hydra.run.dir=<run folder>/hydra``, so
    Hydra saves it as ``<run folder>/hydra/.hydra/config.yaml`` (not under ``outputs/``)."""
    from omegaconf import OmegaConf

    from poise_verl.config import register_resolvers

    saved = folder / "hydra" / ".hydra" / "config.yaml"
    assert saved.is_file(), f"no Hydra config at {saved}"
    register_resolvers()
    config = OmegaConf.load(saved)
    OmegaConf.resolve(config)
    return config


def raw_metrics(folder: Path) -> dict[int, dict[str, float]]:
    """{step: metrics} straight from a run's metrics JSONL files (one launch each), without the report's code."""
    steps: dict[int, dict[str, float]] = {}
    for path in sorted((folder / "metrics").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                steps.setdefault(int(row["step"]), {}).update(row["data"])
    return steps
