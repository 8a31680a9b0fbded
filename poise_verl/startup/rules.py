"""Start-up rules on the composed config alone: every combination that would fail inside Ray, or silently do the
wrong thing, is refused with a message that names the key and what to change. Runs once, in the driver, before Ray.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from poise_verl.config import MAX_MICRO_BATCH, POISE_ADV_ESTIMATOR, PoiseSettings, TrainerMode


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
