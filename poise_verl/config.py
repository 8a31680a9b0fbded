"""POISE's configuration: the names poise-verl registers with verl, the typed `poise` section and the Hydra
resolvers.

The one source of every default is the Hydra tree (``hydra_configs/poise_trainer.yaml``, the file users
read): the dataclasses below mirror its ``poise`` section without defaults of their own, and
``PoiseSettings.from_config`` refuses a missing or unknown key or a value out of range. The checks across keys
(combinations that cannot work) are ``poise_verl.startup.rules``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# The names poise-verl registers in verl's registries, each defined once.
POISE_ADV_ESTIMATOR = "poise"  # algorithm.adv_estimator: verl's register_adv_est
POISE_ENGINE_VENDOR = "poise"  # VERL_ENGINE_VENDOR: the feature-capture engine in verl's EngineRegistry
# POISE's part of a checkpoint (probes, replay buffer, selection history), in each global_step_N folder.
POISE_STATE_FILE = "poise_state.pt"
# Which algorithm wrote a checkpoint (every trainer mode of the project writes it), in each global_step_N folder.
RUN_IDENTITY_FILE = "run_identity.json"
# poise.* keys a resumed run may change: they touch only what the run writes out, not what it learns.
RESUMABLE_POISE_KEYS = ("feature_dump_dir",)


def algorithm_identity(config: DictConfig) -> str:
    """The algorithm a run trains, as far as a checkpoint's optimizer state and data position depend on it:
    ``poise``, ``dapo`` (verl's grpo estimator with dynamic sampling) or the name of verl's estimator.

    The trainer mode (sync or asynchronous) and ``algo_name`` (a label) are not part of it.
    """
    estimator = str(config.algorithm.adv_estimator)
    filter_groups = config.algorithm.get("filter_groups") or {}
    if estimator == "grpo" and bool(filter_groups.get("enable", False)):
        return "dapo"
    return estimator


def run_identity(config: DictConfig) -> dict[str, str]:
    """What :data:`RUN_IDENTITY_FILE` holds: the algorithm, and the names a message shows a user."""
    return {
        "algorithm": algorithm_identity(config),
        "algo_name": str(config.get("algo_name", "")),
        "trainer_mode": str(config.trainer.v1.trainer_mode),
    }


def flat_settings(settings: dict, prefix: str = "poise") -> dict[str, Any]:
    """``{"poise.probe.alpha": 100.0, ...}`` from ``asdict(PoiseSettings)`` (as saved in a checkpoint), with
    tuples as lists so that a saved and a configured value compare equal when they are."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict) and key != "capacity":
            flat.update(flat_settings(value, name))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


# ``poise.*`` keys added after checkpoints were written without them, each with the value that does what the runs
# before it did: a checkpoint that lacks the key resumes under that value, and only another value is a change.
ADDED_POISE_KEYS: dict[str, Any] = {"poise.entropy_split": "end_of_thinking"}


def changed_poise_settings(saved: dict, configured: dict) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, configured value)`` for every ``poise.*`` key whose value differs, but for the
    keys a resumed run may change (:data:`RESUMABLE_POISE_KEYS`); a key the checkpoint predates counts with its
    earlier behaviour (:data:`ADDED_POISE_KEYS`)."""
    old, new = {**ADDED_POISE_KEYS, **flat_settings(saved)}, flat_settings(configured)
    free = {f"poise.{key}" for key in RESUMABLE_POISE_KEYS}
    missing = object()
    return [
        (key, old.get(key, missing), new.get(key, missing))
        for key in sorted(set(old) | set(new))
        if key not in free and old.get(key, missing) != new.get(key, missing)
    ]


class TrainerMode:
    """``trainer.v1.trainer_mode`` values registered with verl's ``register_trainer``."""

    # verl's sync trainer plus reward checks and the shared advantage metric (GRPO and any verl estimator).
    CHECKED_SYNC = "checked_sync"
    # CHECKED_SYNC plus a bound on DAPO's dynamic sampling.
    DAPO = "dapo"
    # CHECKED_SYNC plus feature capture, probe baselines and probe state in checkpoints.
    POISE = "poise"
    # verl's colocated asynchronous trainer (partial rollouts across weight updates) plus the same checks.
    CHECKED_COLOCATE_ASYNC = "checked_colocate_async"
    # CHECKED_COLOCATE_ASYNC plus POISE.
    POISE_COLOCATE_ASYNC = "poise_colocate_async"
    # verl's fully asynchronous trainer (rollout on devices of its own, weights synced by a checkpoint engine) plus
    # the same checks and the overlap metrics.
    CHECKED_SEPARATE_ASYNC = "checked_separate_async"
    # CHECKED_SEPARATE_ASYNC plus POISE.
    POISE_SEPARATE_ASYNC = "poise_separate_async"
    # The modes that run POISE (feature capture, the poise estimator, the probe worker).
    POISE_MODES = (POISE, POISE_COLOCATE_ASYNC, POISE_SEPARATE_ASYNC)
    # The asynchronous modes: prompt selection scores candidates before generation, which these start ahead.
    ASYNC_MODES = (CHECKED_COLOCATE_ASYNC, POISE_COLOCATE_ASYNC, CHECKED_SEPARATE_ASYNC, POISE_SEPARATE_ASYNC)


def _typed(cls, raw: Any, where: str):
    """Build dataclass ``cls`` from a mapping, refusing missing and unknown keys (named with ``where``)."""
    if not isinstance(raw, dict):
        raise TypeError(f"{where} must be a mapping, got {raw!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown, missing = sorted(set(raw) - names), sorted(names - set(raw))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
    if missing:
        raise ValueError(
            f"{where}: missing key(s) {missing} (hydra_configs/poise_trainer.yaml declares them)"
        )
    return cls(**raw)


@dataclass(frozen=True)
class RidgeHead:
    """``poise.probe.ridge``."""

    alpha: float


@dataclass(frozen=True)
class LogisticHead:
    """``poise.probe.logistic``."""

    l2: float
    max_iter: int


@dataclass(frozen=True)
class MLPHead:
    """``poise.probe.mlp``."""

    hidden: int
    lr: float
    epochs: int
    batch_size: int
    l2: float


@dataclass(frozen=True)
class ProbeSettings:
    """``poise.probe``: which probe, the shared PCA sizes and seed, and each head's hyperparameters."""

    name: str
    feature_order: str
    prompt_pca_dim: int
    response_pca_dim: int
    seed: int
    ridge: RidgeHead
    logistic: LogisticHead
    mlp: MLPHead

    @classmethod
    def from_dict(cls, raw: dict) -> ProbeSettings:
        heads = {"ridge": RidgeHead, "logistic": LogisticHead, "mlp": MLPHead}
        raw = dict(raw)
        for head, head_cls in heads.items():
            raw[head] = _typed(head_cls, raw.get(head, {}), f"poise.probe.{head}")
        settings = _typed(cls, raw, "poise.probe")
        if settings.name not in heads:
            raise ValueError(f"poise.probe.name={settings.name!r}: choose one of {sorted(heads)}")
        from poise_verl.core.probe_features import FEATURE_ORDERS

        if settings.feature_order not in FEATURE_ORDERS:
            raise ValueError(
                f"poise.probe.feature_order={settings.feature_order!r}: choose one of {list(FEATURE_ORDERS)}"
            )
        return settings


def build_value_probe(settings: ProbeSettings, prompt_only: bool = False):
    """A fresh, unfitted probe of ``poise.probe`` (``poise_verl.core.probe.build_probe``).

    ``prompt_only``: the probe's prompt part (no response components; fitted with empty response and scalar
    blocks), the prompt-only value estimate that ``poise.selection.mode=probe`` scores candidates with.
    """
    from poise_verl.core.probe import build_probe

    return build_probe(
        settings.name,
        prompt_components=settings.prompt_pca_dim,
        response_components=0 if prompt_only else settings.response_pca_dim,
        seed=settings.seed,
        feature_order=settings.feature_order,
        **dataclasses.asdict(getattr(settings, settings.name)),
    )


@dataclass(frozen=True)
class HistorySettings:
    """``poise.selection.history``."""

    base_skip: float
    max_skip: float


@dataclass(frozen=True)
class SelectionSettings:
    """``poise.selection``: which prompts a step generates for (``poise_verl.core.selection``)."""

    MODES = ("none", "probe", "history")

    mode: str
    candidates_per_prompt: int
    exploration_share: float
    history: HistorySettings

    @classmethod
    def from_dict(cls, raw: dict) -> SelectionSettings:
        raw = dict(raw)
        raw["history"] = _typed(HistorySettings, raw.get("history", {}), "poise.selection.history")
        settings = _typed(cls, raw, "poise.selection")
        if settings.mode not in cls.MODES:
            raise ValueError(f"poise.selection.mode={settings.mode!r}: choose one of {list(cls.MODES)}")
        if settings.mode != "none" and settings.candidates_per_prompt < 2:
            raise ValueError(
                f"poise.selection.mode={settings.mode} needs poise.selection.candidates_per_prompt >= 2 (candidates "
                f"drawn per kept prompt), got {settings.candidates_per_prompt}"
            )
        if not 0.0 <= settings.exploration_share <= 1.0:
            raise ValueError(
                f"poise.selection.exploration_share must be in [0, 1], got {settings.exploration_share}"
            )
        if not 0.0 <= settings.history.base_skip <= settings.history.max_skip < 1.0:
            raise ValueError(
                "poise.selection.history needs 0 <= base_skip <= max_skip < 1 (a skip probability of 1 would make "
                f"a prompt unreachable), got {settings.history}"
            )
        return settings


@dataclass(frozen=True)
class BufferSettings:
    """``poise.buffer``: per-domain row capacity and the dataset column naming the domain."""

    capacity: dict[str, int]
    domain_key: str


@dataclass(frozen=True)
class PoiseSettings:
    """The ``poise`` section, typed. hydra_configs/poise_trainer.yaml says what each key means."""

    probe_layer: int
    pool_last_k: int
    entropy_features: tuple[str, ...]
    entropy_split: str
    end_of_thinking_token: str | None
    response_pool_until_end_of_thinking: bool
    bootstrap_steps: int
    min_fit_rows: int
    feature_dump_dir: str | None
    probe: ProbeSettings
    buffer: BufferSettings
    selection: SelectionSettings

    @classmethod
    def from_config(cls, section: DictConfig | dict) -> PoiseSettings:
        raw: dict[str, Any] = (
            OmegaConf.to_container(section, resolve=True)
            if isinstance(section, DictConfig)
            else dict(section)
        )
        raw["probe"] = ProbeSettings.from_dict(raw.get("probe", {}))
        raw["buffer"] = _typed(BufferSettings, raw.get("buffer", {}), "poise.buffer")
        raw["selection"] = SelectionSettings.from_dict(raw.get("selection", {}))
        raw["entropy_features"] = tuple(raw.get("entropy_features", ()))
        settings = _typed(cls, raw, "poise")
        settings.check()
        return settings

    def check(self) -> None:
        problem = probe_layer_problem(self.probe_layer)
        if problem:
            raise ValueError(problem)
        if self.pool_last_k < 1:
            raise ValueError(f"poise.pool_last_k must be >= 1, got {self.pool_last_k}")
        if self.bootstrap_steps < 0:
            raise ValueError(f"poise.bootstrap_steps must be >= 0, got {self.bootstrap_steps}")
        from poise_verl.core.entropy import ENTROPY_FEATURE_NAMES, ENTROPY_SPLITS

        unknown = [name for name in self.entropy_features if name not in ENTROPY_FEATURE_NAMES]
        if unknown:
            raise ValueError(
                f"poise.entropy_features: unknown statistic(s) {unknown}; choose from {list(ENTROPY_FEATURE_NAMES)}"
            )
        if self.entropy_split not in ENTROPY_SPLITS:
            raise ValueError(f"poise.entropy_split={self.entropy_split!r}: choose one of {list(ENTROPY_SPLITS)}")
        if self.end_of_thinking_token == "":
            raise ValueError(
                "poise.end_of_thinking_token is empty: set it to the text the model writes to close its reasoning "
                "(Qwen3, DeepSeek-R1: '</think>'), or null to use the whole response as the answer part"
            )
        if self.min_fit_rows < 2:
            raise ValueError(f"poise.min_fit_rows must be >= 2, got {self.min_fit_rows}")
        if not self.buffer.capacity or any(int(v) <= 0 for v in self.buffer.capacity.values()):
            raise ValueError(
                f"poise.buffer.capacity must map domains to positive row counts, got {self.buffer.capacity}"
            )
        from poise_verl.core.buffer import FALLBACK_DOMAIN

        if FALLBACK_DOMAIN not in self.buffer.capacity:
            raise ValueError(
                f"poise.buffer.capacity must have a row count for {FALLBACK_DOMAIN!r} (rows of any domain it does "
                f"not list go there), got {sorted(self.buffer.capacity)}"
            )


# poise_verl/hydra_configs links to the top-level hydra_configs/ in a checkout; a wheel carries the files.
CONFIG_DIR = Path(__file__).resolve().parent / "hydra_configs"


def default_poise_settings() -> PoiseSettings:
    """The ``poise`` section of the base config (the tiny CPU default), for code outside a Hydra run
    (analysis, benchmarks): read from the yaml itself, so its defaults stay the only ones."""
    return PoiseSettings.from_config(OmegaConf.load(CONFIG_DIR / "poise_trainer.yaml").poise)


def _div(a: Any, b: Any) -> int:
    """``${poise_div:a,b}``: exact integer division, an error when b does not divide a."""
    a, b = int(a), int(b)
    if b <= 0 or a % b:
        raise ValueError(
            f"budget.rollouts_per_step={a} is not a multiple of actor_rollout_ref.rollout.n={b}: "
            "choose a budget divisible by n so every prompt gets its n rollouts"
        )
    return a // b


def probe_layer_problem(layer: int, layers: int | None = None, model: str = "the model") -> str | None:
    """What is wrong with ``poise.probe_layer=LAYER`` for a model of LAYERS decoder layers (None: not known yet), or
    None. The one rule for the layer, applied where the config is read, where the launch reads the model's
    config.json (before Ray), and in the actor's engine, which holds the model itself (a hub model, say)."""
    if layer < 0:
        return f"poise.probe_layer must be >= 0, got {layer}"
    if layers is not None and layer >= layers:
        return (
            f"poise.probe_layer={layer}, but {model} has {layers} decoder layers: choose a layer in 0..{layers - 1} "
            f"(the paper takes one about halfway, e.g. {layers // 2})"
        )
    return None


def _tiny(relative: str) -> str:
    """``${poise_tiny:model}``: a path inside the tiny assets' folder (shipped, or ``$POISE_VERL_CACHE``'s).

    Only the path: Hydra dereferences an interpolated value whenever a recipe merges over it, so building here
    would train a tiny model on GPU launches. ``launch.prepare`` builds a cache's assets when a run uses them.
    """
    from poise_verl.tiny.paths import tiny_assets_dir

    return str(tiny_assets_dir() / relative)


def _module_file(module: str) -> str:
    """``${poise_module_file:pkg.mod}``: the file of an importable module (verl wants reward functions by path)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ValueError(f"cannot find module {module!r} for reward.custom_reward_function.path")
    return spec.origin


def register_resolvers() -> None:
    """Register poise-verl's OmegaConf resolvers (idempotent). Only the driver resolves the config."""
    resolvers = (
        ("poise_div", _div),
        ("poise_tiny", _tiny),
        ("poise_module_file", _module_file),
        ("poise_micro_batch", _micro_batch),
    )
    for name, fn in resolvers:
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


# The most rollouts one forward pass takes by default (the tiny default's value; GPU recipes use dynamic sizes).
MAX_MICRO_BATCH = 64


def _micro_batch(rollouts: Any, nnodes: Any, gpus_per_node: Any) -> int:
    """``${poise_micro_batch:rollouts,nnodes,gpus}``: the largest divisor of the rollouts per rank up to 64.

    The micro-batch sizes follow the budget, so every budget that splits evenly over the ranks runs; a size
    set by hand is checked at start (``poise_verl.startup.rules``).
    """
    rollouts, world = int(rollouts), int(nnodes) * int(gpus_per_node)
    if world <= 0 or rollouts <= 0 or rollouts % world:
        raise ValueError(
            f"{rollouts} rollouts (budget.rollouts_per_step or budget.rollouts_per_minibatch) do not split evenly "
            f"over {world} rank(s) (trainer.nnodes x trainer.n_gpus_per_node): choose a budget that is a "
            "multiple of the number of ranks"
        )
    per_rank = rollouts // world
    return next(d for d in range(min(per_rank, MAX_MICRO_BATCH), 0, -1) if per_rank % d == 0)
