"""POISE's configuration: the names poise-verl registers with verl, the typed `poise` section, the Hydra
resolvers, and start-up validation.

The one source of every default is the Hydra tree (``hydra_configs/poise_trainer.yaml``, the file users
read): the dataclasses below mirror its ``poise`` section without defaults of their own, and
``PoiseSettings.from_config`` refuses a missing or unknown key. Validation runs once, in the driver, before
Ray starts: every combination that would fail (or silently do the wrong thing) later is refused here with
a message that names the key and what to change.
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


def _check_separate_async(config: DictConfig) -> None:
    """What verl's fully asynchronous trainer asserts inside Ray (``trainer_separate_async.py``), said before it."""
    rollout = config.actor_rollout_ref.rollout
    sync_step = int(config.trainer.v1.separate_async.parameter_sync_step)
    mini_batch = int(config.actor_rollout_ref.actor.ppo_mini_batch_size)
    train_batch = int(config.data.train_batch_size)
    if train_batch != sync_step * mini_batch:
        raise ValueError(
            f"data.train_batch_size={train_batch} must equal trainer.v1.separate_async.parameter_sync_step="
            f"{sync_step} x actor_rollout_ref.actor.ppo_mini_batch_size={mini_batch} under the fully asynchronous "
            "trainer (the weights reach the rollout after each step, one optimizer step per mini-batch): set "
            f"parameter_sync_step={train_batch // mini_batch if mini_batch and train_batch % mini_batch == 0 else '?'}"
        )
    if int(rollout.nnodes) <= 0 or int(rollout.n_gpus_per_node) <= 0:
        raise ValueError(
            f"actor_rollout_ref.rollout.nnodes={rollout.nnodes} and n_gpus_per_node={rollout.n_gpus_per_node}: the "
            "fully asynchronous trainer runs the rollout on devices of its own; set both above 0"
        )
    if rollout.checkpoint_engine.backend == "naive":
        raise ValueError(
            "actor_rollout_ref.rollout.checkpoint_engine.backend=naive cannot reach rollout devices of their own: "
            "set it to nccl on GPUs or gloo on the CPU (runtime.weight_sync_backend, set by the platform file)"
        )
    if config.runtime.platform == "cpu" and config.actor_rollout_ref.get("hybrid_engine", True):
        raise ValueError(
            "actor_rollout_ref.hybrid_engine=true under the fully asynchronous trainer on the CPU: the trainer would "
            "also lend its own device to generation; set it to false (algo=poise_fully_async does)"
        )
    ray_init = config.ray_kwargs.get("ray_init", {})
    declared = ray_init.get("num_gpus")
    needed = int(config.trainer.nnodes) * int(config.trainer.n_gpus_per_node) + int(rollout.nnodes) * int(
        rollout.n_gpus_per_node
    )
    if config.runtime.platform == "cpu" and declared is not None and int(declared) < needed:
        raise ValueError(
            f"ray_kwargs.ray_init.num_gpus={declared}: the fully asynchronous trainer needs {needed} logical devices "
            f"on the CPU (trainer {config.trainer.nnodes} x {config.trainer.n_gpus_per_node}, rollout "
            f"{rollout.nnodes} x {rollout.n_gpus_per_node}); set ray_kwargs.ray_init.num_gpus={needed}"
        )


def validate(config: DictConfig) -> None:
    """Refuse combinations that cannot work, naming the key and what to change. Runs once, in the driver."""
    mode = config.trainer.v1.trainer_mode
    estimator = config.algorithm.adv_estimator
    n = int(config.actor_rollout_ref.rollout.n)
    if estimator == POISE_ADV_ESTIMATOR and mode not in TrainerMode.POISE_MODES:
        raise ValueError(
            f"algorithm.adv_estimator={POISE_ADV_ESTIMATOR} needs the POISE trainer (it computes the probe's "
            f"predictions): set trainer.v1.trainer_mode={TrainerMode.POISE} (got {mode!r}), or use algo=poise"
        )
    if mode in TrainerMode.POISE_MODES:
        settings = PoiseSettings.from_config(config.poise)
        if estimator != POISE_ADV_ESTIMATOR:
            raise ValueError(
                f"trainer.v1.trainer_mode={mode} expects algorithm.adv_estimator="
                f"{POISE_ADV_ESTIMATOR}, got {estimator!r}"
            )
        if mode in TrainerMode.ASYNC_MODES and settings.selection.mode != "none":
            # Selection scores a step's candidate prompts just before they generate and trains on them at once;
            # the asynchronous trainers submit prompts a step or more before the batch that trains on them, so
            # the pass rates it targets would be another policy's.
            raise ValueError(
                f"poise.selection.mode={settings.selection.mode} is not built for the asynchronous trainers "
                f"(trainer.v1.trainer_mode={mode}): set poise.selection.mode=none, or use algo=poise"
            )
        if n < 2:
            raise ValueError(
                f"actor_rollout_ref.rollout.n={n}: POISE needs at least 2 rollouts per prompt (each rollout's "
                "baseline is its sibling's prediction). Set actor_rollout_ref.rollout.n=2 (algo=poise does)"
            )
        _check_algorithm_keys_under_poise(config.algorithm)
    _check_micro_batches(config, n)
    _check_token_budgets(config)
    _check_sequence_parallel_attention(config)
    if mode in (TrainerMode.CHECKED_SEPARATE_ASYNC, TrainerMode.POISE_SEPARATE_ASYNC):
        _check_separate_async(config)
    platform = config.runtime.platform
    if platform not in ("cpu", "gpu"):
        raise ValueError(f"runtime.platform must be 'cpu' or 'gpu', got {platform!r}")
    niceness = config.runtime.get("ray_worker_niceness")
    whole = isinstance(niceness, int) and not isinstance(niceness, bool)
    if niceness is not None and not (whole and -20 <= niceness <= 19):
        raise ValueError(
            f"runtime.ray_worker_niceness must be null (Ray's default, 15) or a whole number from -20 to 19 "
            f"(a Unix niceness), got {niceness!r}"
        )


def _check_algorithm_keys_under_poise(algorithm: DictConfig) -> None:
    """The ``algorithm.*`` keys verl honours under GRPO that POISE cannot: refused, never silently ignored.

    Honoured under POISE as under GRPO (verl's own advantage stage runs around the ``poise`` estimator):
    ``use_kl_in_reward``, ``kl_penalty``, ``kl_ctrl`` and ``rollout_correction`` (importance weights and
    rejection sampling) except its bypass mode. ``gamma``, ``lam`` and ``use_pf_ppo`` act on GAE only, under
    GRPO too.
    """
    if algorithm.get("norm_adv_by_std_in_grpo", False):
        raise ValueError(
            "algorithm.norm_adv_by_std_in_grpo=true: POISE's advantages A_i = R_i - b_i are not divided by a "
            "group std (the official code does not; with two rollouts the std is that of a pair). Set "
            "algorithm.norm_adv_by_std_in_grpo=false (algo=poise does)"
        )
    if algorithm.filter_groups.get("enable", False):
        raise ValueError(
            "algorithm.filter_groups.enable=true: POISE does not discard groups whose rewards agree (its probe "
            "baseline gives them non-zero advantages, and its budget buys prompts, not refills). Set "
            "algorithm.filter_groups.enable=false, or use algo=dapo for dynamic sampling"
        )
    correction = algorithm.get("rollout_correction", None)
    if correction is not None and correction.get("bypass_mode", False):
        raise ValueError(
            "algorithm.rollout_correction.bypass_mode=true skips the old-log-prob forward pass, which is where "
            "POISE reads its features: set it to false (importance weights and rejection sampling still apply)"
        )


# The attention implementations verl 0.9.1 makes sequence-parallel (models/transformers/monkey_patch.py).
SEQUENCE_PARALLEL_ATTENTION = ("flash_attention_2", "flash_attention_3")


def _check_sequence_parallel_attention(config: DictConfig) -> None:
    """Ulysses sequence parallelism with an attention verl does not patch gives wrong log-probs, silently.

    verl 0.9.1 splits the packed row across the sequence-parallel ranks and makes attention see the whole
    sequence by patching flash-attention only; under sdpa or eager each rank attends within its own slice, so
    the tokens of a sequence cut by a slice boundary lose their prefix (on the CPU platform the old-log-prob
    entropies were off by 0.1 against a plain forward while verl ran on without a word).
    """
    attention = OmegaConf.select(config, "actor_rollout_ref.model.override_config.attn_implementation")
    for role in ("actor", "ref"):
        key = f"actor_rollout_ref.{role}.ulysses_sequence_parallel_size"
        size = OmegaConf.select(config, key) or 1
        if int(size) > 1 and attention not in SEQUENCE_PARALLEL_ATTENTION:
            raise ValueError(
                f"{key}={size} with actor_rollout_ref.model.override_config.attn_implementation={attention}: verl "
                "makes only flash-attention sequence-parallel, so each rank would attend within its own slice of "
                f"the sequence and the log-probs would be wrong. Set {key}=1, or use flash_attention_2 (GPU)"
            )


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
            divisors = [d for d in range(min(total, MAX_MICRO_BATCH), 0, -1) if total % d == 0][:4]
            raise ValueError(
                f"{key}={micro} does not divide the {total} {what} (budget.rollouts_per_step="
                f"{OmegaConf.select(config, 'budget.rollouts_per_step')}, n={n}, {world} rank(s)): set it to a "
                f"divisor such as {', '.join(map(str, divisors))}, or drop the override (the default follows the "
                "budget)"
            )


# The length of the rows verl adds to pad a batch to a size its ranks and mini-batches divide
# (verl/trainer/ppo/padding_utils.py, SYNTHETIC_PADDING_SEQ_LEN).
VERL_PADDING_ROW_TOKENS = 128
TOKEN_BUDGETS = [  # (the switch, the budget it sizes micro-batches by)
    ("actor_rollout_ref.actor.use_dynamic_bsz", "actor_rollout_ref.actor.ppo_max_token_len_per_gpu"),
    ("actor_rollout_ref.rollout.log_prob_use_dynamic_bsz", "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu"),
    ("actor_rollout_ref.ref.log_prob_use_dynamic_bsz", "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu"),
]


def _check_token_budgets(config: DictConfig) -> None:
    """With dynamic batch sizes verl packs rows into micro-batches of at most N tokens per GPU and asserts, mid-run,
    when one row is longer ("max_token_len must be greater than the sequence length"): at the first long response,
    or the first time it pads a batch (a failed generation, a batch its ranks do not divide). Say it here."""
    longest = int(config.data.max_prompt_length) + int(config.data.max_response_length)
    needed = max(longest, VERL_PADDING_ROW_TOKENS)
    sequence_parallel = int(OmegaConf.select(config, "actor_rollout_ref.actor.ulysses_sequence_parallel_size") or 1)
    for switch, key in TOKEN_BUDGETS:
        budget = OmegaConf.select(config, key)
        if not OmegaConf.select(config, switch) or budget is None:
            continue
        if int(budget) * sequence_parallel < needed:
            raise ValueError(
                f"{key}={budget} tokens is less than the longest row verl may put in one micro-batch ({needed}: "
                f"data.max_prompt_length + data.max_response_length = {longest}, and verl's padding rows are "
                f"{VERL_PADDING_ROW_TOKENS} tokens) with {switch}=true: set it to at least {needed}"
            )


# The most rollouts one forward pass takes by default (the tiny default's value; GPU recipes use dynamic sizes).
MAX_MICRO_BATCH = 64


def _micro_batch(rollouts: Any, nnodes: Any, gpus_per_node: Any) -> int:
    """``${poise_micro_batch:rollouts,nnodes,gpus}``: the largest divisor of the rollouts per rank up to 64.

    The micro-batch sizes follow the budget, so every budget that splits evenly over the ranks runs; a size
    set by hand is checked by ``_check_micro_batches``.
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
