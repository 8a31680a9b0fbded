"""Planning: what each algorithm's composed config says, the runs in launch order, and the folder checks."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from poise_verl.ablate.algorithms import ALGORITHMS

# poise_verl/hydra_configs links to the top-level hydra_configs/ in a checkout; a wheel carries the files.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "hydra_configs"

# What seed S sets (each key only where the composed config has it). In verl 0.9.1:
SEED_KEYS = (
    # The training prompts' shuffle (torchdata RandomSampler generator) and the random subsets drawn for
    # data.train_max_samples / data.val_max_samples (numpy default_rng(seed)).
    "data.seed",
    # The rollout server's sampling seed (vLLM: rollout.seed + replica rank; the CPU `hf` server ignores it).
    "actor_rollout_ref.rollout.seed",
    # The order of mini-batches in the PPO update (used when actor.shuffle=true).
    "actor_rollout_ref.actor.data_loader_seed",
    # random/numpy/torch seeds set by the FSDP engine under full_determinism.
    "actor_rollout_ref.actor.fsdp_config.seed",
    # POISE's probe: randomized PCA and the logistic/MLP initialisation.
    "poise.probe.seed",
)

# A run folder's files (the layout in the package docstring).
DONE_MARKER = "ABLATE_DONE.json"
RUN_INFO = "ablate_run.json"
ATTEMPTS = "attempts.jsonl"
LOG = "log.txt"


@dataclass(frozen=True)
class AlgoConfig:
    """What the composed config of one algorithm says about the quantities the report needs."""

    rollouts_per_step: int
    n: int
    seed_keys: tuple[str, ...]
    experiment_name: str
    logger: tuple[str, ...]
    val_files: tuple[str, ...]
    val_max_samples: int
    val_samples_per_prompt: int
    shuffle: bool
    test_freq: int
    total_training_steps: int | None


@dataclass(frozen=True)
class Run:
    algo: str
    seed: int
    folder: Path
    overrides: tuple[str, ...]  # everything after `python -m poise_verl.main`, except the Ray temp dir
    config: AlgoConfig
    # What runs after the Python interpreter (tests substitute a stand-in script).
    program: tuple[str, ...] = ("-m", "poise_verl.main")

    @property
    def name(self) -> str:
        return f"{self.algo} seed {self.seed}"

    def command(self, ray_temp_dir: str | None) -> list[str]:
        extra = [f"+ray_kwargs.ray_init._temp_dir={ray_temp_dir}"] if ray_temp_dir else []
        return [sys.executable, *self.program, *self.overrides, *extra]

    def status(self) -> str:
        if (self.folder / DONE_MARKER).exists():
            return "done"
        return "partial" if (self.folder / RUN_INFO).exists() else "pending"


def compose(algo: str, extra_overrides: list[str]):
    """The composed (unresolved) config of ``algo`` plus the user's overrides, as the main job sees it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from poise_verl.config import register_resolvers

    register_resolvers()
    user = [o for o in extra_overrides if not o.lstrip("+~").startswith("hydra.")]
    overrides = [*ALGORITHMS[algo].overrides, *user]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return hydra_compose(config_name="poise_trainer", overrides=overrides)


def read_algo_config(algo: str, extra_overrides: list[str]) -> AlgoConfig:
    from omegaconf import OmegaConf

    config = compose(algo, extra_overrides)
    missing = object()
    seed_keys = tuple(k for k in SEED_KEYS if OmegaConf.select(config, k, default=missing) is not missing)
    int(config.data.train_batch_size)  # resolves ${poise_div:...}: a budget n does not divide fails here
    val_files = config.data.val_files
    val_files = list(val_files) if OmegaConf.is_list(val_files) else [val_files]
    total_steps = config.trainer.get("total_training_steps")
    return AlgoConfig(
        rollouts_per_step=int(config.budget.rollouts_per_step),
        n=int(config.actor_rollout_ref.rollout.n),
        seed_keys=seed_keys,
        experiment_name=str(config.trainer.experiment_name),
        logger=tuple(config.trainer.logger)
        if OmegaConf.is_list(config.trainer.logger)
        else (str(config.trainer.logger),),
        val_files=tuple(str(f) for f in val_files),
        val_max_samples=int(config.data.get("val_max_samples", -1) or -1),
        val_samples_per_prompt=int(config.actor_rollout_ref.rollout.val_kwargs.n),
        shuffle=bool(config.data.get("shuffle", False)),
        test_freq=int(config.trainer.test_freq),
        total_training_steps=None if total_steps is None else int(total_steps),
    )


def plan_runs(
    algos: list[str], seeds: list[int], output: Path, extra: list[str], configs: dict[str, AlgoConfig]
) -> list[Run]:
    """The runs in launch order (seed-major), each with its full list of overrides.

    A run's experiment name is its algorithm's composed ``trainer.experiment_name`` and the seed; where two
    algorithms compose the same name (a user's ``trainer.experiment_name``, or a recipe's without
    ``${algo_name}``), the algorithm's name is added, so no two runs share one.
    """
    names = [configs[algo].experiment_name for algo in algos]
    runs = []
    for seed in seeds:
        for algo in algos:
            config = configs[algo]
            experiment = config.experiment_name
            if names.count(experiment) > 1:
                experiment = f"{experiment}_{algo}"
            folder = output / "runs" / algo / f"seed_{seed}"
            overrides = [*ALGORITHMS[algo].overrides, *extra]
            overrides += [f"{key}={seed}" for key in config.seed_keys]
            overrides += [
                f"trainer.default_local_dir={folder}",
                f"trainer.experiment_name={experiment}_seed{seed}",
                f"hydra.run.dir={folder / 'hydra'}",
            ]
            if "file" not in config.logger:  # the report reads verl's `file` logger
                overrides.append(f"trainer.logger=[{','.join([*config.logger, 'file'])}]")
            runs.append(Run(algo, seed, folder, tuple(overrides), config))
    return runs


def check_extra_overrides(extra: list[str], algos: list[str] = ()) -> None:
    """Refuse overrides the ablation owns (seeds, folders, and what selects each algorithm of ``algos``),
    saying what to do instead."""
    owned = {key: "--seeds" for key in SEED_KEYS}
    owned.update({key: "--algos" for algo in algos for key in ALGORITHMS[algo].override_keys})
    owned.update({"trainer.default_local_dir": "--output", "algo": "--algos", "hydra.run.dir": "--output"})
    for override in extra:
        key = override.lstrip("+~").split("=", 1)[0]
        if key in owned:
            raise SystemExit(
                f"ablate: the override {override!r} is set per run by the ablation: drop it (use {owned[key]})"
            )


def check_folder(run: Run) -> None:
    """A folder made by an earlier invocation must have been made with the same overrides."""
    info_path = run.folder / RUN_INFO
    if not info_path.exists():
        return
    earlier = json.loads(info_path.read_text()).get("overrides")
    if earlier != list(run.overrides):
        raise SystemExit(
            f"ablate: {run.folder} holds a run made with other overrides:\n  earlier: {earlier}\n  now:     "
            f"{list(run.overrides)}\nUse another --output, or delete that folder to rerun it."
        )
