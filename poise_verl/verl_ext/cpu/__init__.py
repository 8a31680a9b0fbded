"""Run verl 0.9.1's own trainer on a machine without a GPU.

Importing this module registers, in the importing process:

- the verl platform ``cpu`` (:mod:`.platform`): device ``"cpu"``, plain ``gloo`` collectives, no-op
  device-memory and device-RNG calls; chosen with ``VERL_PLATFORM=cpu``;
- verl's FSDP engines for device ``"cpu"``, so ``EngineRegistry`` finds them there (a vendor-keyed subclass
  selected with ``VERL_ENGINE_VENDOR`` still takes precedence);
- the rollout ``hf`` (:mod:`.hf_rollout`): a transformers ``generate`` server that batches concurrent
  requests, its replica, and the actor-side adapter that syncs weights from the actor every step; chosen
  with ``actor_rollout_ref.rollout.name=hf``.

verl looks these names up in the driver and in every Ray worker, so the module must be imported in each:
verl's ``__init__`` imports every module named in ``VERL_USE_EXTERNAL_MODULES`` (``verl/__init__.py:49``),
before anything asks for the platform. Nothing here is imported on a GPU run unless named there.

Launch (:data:`CPU_OVERRIDES` also carries both variables to the workers through Ray's ``runtime_env``)::

    VERL_PLATFORM=cpu VERL_USE_EXTERNAL_MODULES=poise_verl.verl_ext.cpu \\
    python -m verl.trainer.main_ppo <CPU_OVERRIDES...> <model, data, batch sizes...>

What each override is for (the numbered obstacles of the shared notes ``VERL_ON_CPU.md``):

- ``+ray_kwargs.ray_init.num_gpus=1``: verl's resource pools always ask Ray for GPUs; one logical GPU is
  one worker slot (obstacle 3). ``num_cpus=32``: the pools also reserve logical CPUs per worker.
- ``trainer.n_gpus_per_node=1 trainer.nnodes=1 trainer.device=cpu``: one actor worker.
- ``+ray_kwargs.ray_init.runtime_env.env_vars.*``: the two variables above for every Ray worker. A local
  cluster inherits the shell's environment anyway, but ``runtime_env`` values replace inherited ones, so
  other modules for ``VERL_USE_EXTERNAL_MODULES`` must go through :func:`cpu_overrides`.
- ``actor_rollout_ref.{actor,ref}.strategy=fsdp2``: FSDP1 needs an accelerator (obstacle 8).
- ``+actor_rollout_ref.{actor,ref}.fsdp_config.mixed_precision={param_dtype:fp32,...}``: FSDP's default
  bf16 compute puts actor and rollout log-probs about 1e-3 apart; in fp32 they agree to 3e-8.
- ``+actor_rollout_ref.model.override_config.attn_implementation=sdpa``: verl defaults to
  FlashAttention 2 (obstacle 7); the hf server reads the same key.
- ``actor_rollout_ref.rollout.name=hf``, ``tensor_model_parallel_size=1``, ``dtype=float32``: the rollout of
  this module, one model copy per replica, in the same fp32 as the actor.
- ``actor_rollout_ref.rollout.agent.num_workers=1 reward.num_workers=1 data.dataloader_num_workers=0``:
  each extra worker is a process on a 2-core machine; one agent-loop worker also sends all of a step's
  requests to the server together, so they are generated as one batch.
- ``transfer_queue.backend.SimpleStorage.num_data_storage_units=1``: verl's default of 8 storage actors
  costs about 30 s of start-up on 2 cores.

Left at verl's defaults: ``use_remove_padding=True`` (packed rows work with sdpa on CPU) and the rollout's
``calculate_log_probs=False`` (set it to True to get the server's log-probs as ``rollout_log_probs``).
``POISE_HF_ROLLOUT_NUM_THREADS`` sets the server's torch thread count (Ray otherwise gives it one).

The v1 trainer's replay buffer polls for finished rollouts every 2 s (``ReplayBuffer(poll_interval=2.0)``,
not in the config), which is most of a CPU step; a trainer subclass can set ``poll_interval`` on the buffer
returned by ``super()._build_replay_buffer()``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

# The platform module first: it registers "cpu" before any verl import below can ask for the platform.
from poise_verl.verl_ext.cpu.platform import PLATFORM_NAME, PlatformCPU, register_fsdp_engines_for_cpu  # isort: skip
from poise_verl.verl_ext.cpu import hf_rollout  # isort: skip

__all__ = ["CPU_ENV", "CPU_OVERRIDES", "MODULE_NAME", "PlatformCPU", "cpu_env", "cpu_overrides", "hf_rollout"]

#: The module verl must import in every process (``VERL_USE_EXTERNAL_MODULES``).
MODULE_NAME = __name__

_FP32 = "{param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}"


def _external_modules(extra_modules: Iterable[str]) -> str:
    return ",".join(dict.fromkeys([MODULE_NAME, *extra_modules]))


def cpu_env(base: dict[str, str] | None = None, extra_modules: Iterable[str] = ()) -> dict[str, str]:
    """``base`` (default ``os.environ``) plus the variables a CPU run needs, for launching a subprocess.

    ``extra_modules`` are more modules for ``VERL_USE_EXTERNAL_MODULES``, imported after this one.
    """
    env = dict(os.environ if base is None else base)
    env["VERL_PLATFORM"] = PLATFORM_NAME
    env["VERL_USE_EXTERNAL_MODULES"] = _external_modules(extra_modules)
    return env


def cpu_overrides(extra_modules: Iterable[str] = ()) -> list[str]:
    """Hydra overrides for verl's ``ppo_trainer.yaml`` that make a run CPU-only (see the module docstring)."""
    # Hydra reads an unquoted comma as a list or a sweep.
    modules = _external_modules(extra_modules)
    return [
        "trainer.device=cpu",
        "trainer.n_gpus_per_node=1",
        "trainer.nnodes=1",
        "+ray_kwargs.ray_init.num_gpus=1",
        "ray_kwargs.ray_init.num_cpus=32",
        f"+ray_kwargs.ray_init.runtime_env.env_vars.VERL_PLATFORM={PLATFORM_NAME}",
        f"+ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES='{modules}'",
        "actor_rollout_ref.actor.strategy=fsdp2",
        "actor_rollout_ref.ref.strategy=fsdp2",
        f"+actor_rollout_ref.actor.fsdp_config.mixed_precision={_FP32}",
        f"+actor_rollout_ref.ref.fsdp_config.mixed_precision={_FP32}",
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        "actor_rollout_ref.rollout.name=hf",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        "actor_rollout_ref.rollout.dtype=float32",
        "actor_rollout_ref.rollout.agent.num_workers=1",
        "reward.num_workers=1",
        "data.dataloader_num_workers=0",
        "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
    ]


#: Environment variables of a CPU run (the driver's; workers get them through :data:`CPU_OVERRIDES`).
CPU_ENV: dict[str, str] = {"VERL_PLATFORM": PLATFORM_NAME, "VERL_USE_EXTERNAL_MODULES": MODULE_NAME}

#: :func:`cpu_overrides` with no extra modules.
CPU_OVERRIDES: list[str] = cpu_overrides()

register_fsdp_engines_for_cpu()
hf_rollout.register()
