"""POISE's configuration: the typed `poise` section, the Hydra resolvers, and start-up validation.

Validation runs once, in the driver, before Ray starts: every combination that would fail (or silently do
the wrong thing) later is refused here with a message that names the key and what to change.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

# POISE needs a partner rollout per prompt; verl's trainer modes that POISE's estimator runs under.
POISE_TRAINER_MODE = "poise"
DAPO_TRAINER_MODE = "dapo"


@dataclass(frozen=True)
class ProbeSettings:
    """``poise.probe``: which probe and its hyperparameters (official defaults)."""

    name: str = "ridge"
    prompt_pca_dim: int = 32
    response_pca_dim: int = 64
    ridge_alpha: float = 100.0
    seed: int = 0


@dataclass(frozen=True)
class BufferSettings:
    """``poise.buffer``: per-domain row capacity and the dataset column naming the domain."""

    capacity: dict[str, int] = field(default_factory=lambda: {"math": 4096, "code": 3072, "other": 3072})
    domain_key: str = "ability"


@dataclass(frozen=True)
class PoiseSettings:
    """The ``poise`` section, typed. See hydra_configs/poise_trainer.yaml for the meaning of each key."""

    probe_layer: int = 19
    pool_last_k: int = 10
    entropy_features: tuple[str, ...] = ("entropy_mean", "entropy_reasoning_mean", "entropy_answer_mean")
    end_of_thinking_token: str | None = "</think>"
    response_pool_until_end_of_thinking: bool = True
    bootstrap_steps: int = 16
    min_fit_rows: int = 64
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    buffer: BufferSettings = field(default_factory=BufferSettings)

    @classmethod
    def from_config(cls, section: DictConfig | dict) -> PoiseSettings:
        raw: dict[str, Any] = (
            OmegaConf.to_container(section, resolve=True)
            if isinstance(section, DictConfig)
            else dict(section)
        )
        known = set(cls.__dataclass_fields__)
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"poise: unknown key(s) {sorted(unknown)}; valid keys are {sorted(known)}")
        probe = ProbeSettings(**raw.pop("probe", {}))
        buffer = BufferSettings(**raw.pop("buffer", {}))
        raw["entropy_features"] = tuple(raw.get("entropy_features", ()))
        settings = cls(probe=probe, buffer=buffer, **raw)
        settings.check()
        return settings

    def check(self) -> None:
        if self.probe_layer < 0:
            raise ValueError(f"poise.probe_layer must be >= 0, got {self.probe_layer}")
        if self.pool_last_k < 1:
            raise ValueError(f"poise.pool_last_k must be >= 1, got {self.pool_last_k}")
        if self.bootstrap_steps < 0:
            raise ValueError(f"poise.bootstrap_steps must be >= 0, got {self.bootstrap_steps}")
        if self.min_fit_rows < 2:
            raise ValueError(f"poise.min_fit_rows must be >= 2, got {self.min_fit_rows}")
        if not self.buffer.capacity or any(int(v) <= 0 for v in self.buffer.capacity.values()):
            raise ValueError(
                f"poise.buffer.capacity must map domains to positive row counts, got {self.buffer.capacity}"
            )


def _div(a: Any, b: Any) -> int:
    """``${poise_div:a,b}``: exact integer division, an error when b does not divide a."""
    a, b = int(a), int(b)
    if b <= 0 or a % b:
        raise ValueError(
            f"budget.rollouts_per_step={a} is not a multiple of actor_rollout_ref.rollout.n={b}: "
            "choose a budget divisible by n so every prompt gets its n rollouts"
        )
    return a // b


def _tiny(relative: str) -> str:
    """``${poise_tiny:model}``: a path inside the tiny assets' cache folder.

    Only the path: Hydra dereferences an interpolated value whenever a recipe merges over it, so building here
    would train the tiny model on every GPU launch. ``launch.prepare`` builds the assets when a run uses them.
    """
    from poise_verl.tiny.build import default_cache_dir

    return str(default_cache_dir() / relative)


def _module_file(module: str) -> str:
    """``${poise_module_file:pkg.mod}``: the file of an importable module (verl wants reward functions by path)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ValueError(f"cannot find module {module!r} for reward.custom_reward_function.path")
    return spec.origin


def register_resolvers() -> None:
    """Register poise-verl's OmegaConf resolvers (idempotent). Only the driver resolves the config."""
    for name, fn in (("poise_div", _div), ("poise_tiny", _tiny), ("poise_module_file", _module_file)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def validate(config: DictConfig) -> None:
    """Refuse combinations that cannot work, naming the key and what to change. Runs once, in the driver."""
    mode = config.trainer.v1.trainer_mode
    estimator = config.algorithm.adv_estimator
    n = int(config.actor_rollout_ref.rollout.n)
    if estimator == "poise" and mode != POISE_TRAINER_MODE:
        raise ValueError(
            f"algorithm.adv_estimator=poise needs the POISE trainer (it writes the probe's predictions): set "
            f"trainer.v1.trainer_mode={POISE_TRAINER_MODE} (got {mode!r}), or use algo=poise"
        )
    if mode == POISE_TRAINER_MODE:
        settings = PoiseSettings.from_config(config.poise)
        if estimator != "poise":
            raise ValueError(
                f"trainer.v1.trainer_mode=poise expects algorithm.adv_estimator=poise, got {estimator!r}"
            )
        if n < 2:
            raise ValueError(
                f"POISE needs >= 2 rollouts per prompt (cross-rollout baseline): got rollout.n={n}"
            )
        if config.algorithm.use_kl_in_reward:
            raise ValueError("POISE runs without a KL reward penalty: set algorithm.use_kl_in_reward=false")
        if config.algorithm.filter_groups.enable:
            raise ValueError("POISE does not use dynamic sampling: set algorithm.filter_groups.enable=false")
        correction = config.algorithm.get("rollout_correction", None)
        if correction is not None and correction.get("bypass_mode", False):
            raise ValueError(
                "POISE reads its features from the old-log-prob forward pass, which "
                "algorithm.rollout_correction.bypass_mode=true skips: set it to false"
            )
        del settings
    _check_micro_batches(config, n)
    platform = config.runtime.platform
    if platform not in ("cpu", "gpu"):
        raise ValueError(f"runtime.platform must be 'cpu' or 'gpu', got {platform!r}")


def _check_micro_batches(config: DictConfig, n: int) -> None:
    """verl asserts deep inside a worker when a micro-batch does not divide its batch; say it here instead."""
    if config.actor_rollout_ref.actor.get("use_dynamic_bsz", False):
        return
    world = int(config.trainer.nnodes) * int(config.trainer.n_gpus_per_node)
    rollouts_per_rank = int(config.data.train_batch_size) * n // world
    minibatch_per_rank = int(config.actor_rollout_ref.actor.ppo_mini_batch_size) * n // world
    checks = [
        (
            "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu",
            rollouts_per_rank,
            "rollouts per rank",
        ),
        ("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu", rollouts_per_rank, "rollouts per rank"),
        (
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu",
            minibatch_per_rank,
            "mini-batch rollouts per rank",
        ),
    ]
    for key, total, what in checks:
        micro = OmegaConf.select(config, key)
        if micro and total % int(micro):
            raise ValueError(
                f"{key}={micro} does not divide the {total} {what} (budget.rollouts_per_step="
                f"{OmegaConf.select(config, 'budget.rollouts_per_step')}, n={n}, {world} rank(s)): choose a divisor"
            )
