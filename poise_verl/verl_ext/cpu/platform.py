"""A ``cpu`` platform for verl 0.9.1's platform manager, and the FSDP engine registered for it.

verl 0.9.1 ships platforms for NVIDIA, ROCm and Ascend only; with no accelerator its auto-detection falls
back to ``nvidia`` and the first ``init_process_group`` asks for NCCL. This platform is selected with
``VERL_PLATFORM=cpu`` (read once per process by ``verl.plugin.platform.get_platform``) and answers every
device question the way a CPU-only torch build can:

- the device is ``"cpu"`` and ``current_device()`` is ``"cpu"`` (verl passes it to ``module.to(...)``);
- the collective backend is plain ``gloo`` (see :meth:`PlatformCPU.communication_backend_name`);
- device memory, device RNG, streams and profiler calls are no-ops.

The Ray resource stays ``"GPU"``: verl's resource pools always ask Ray for accelerators
(``use_gpu=True``), so a CPU run declares logical GPUs with ``+ray_kwargs.ray_init.num_gpus=N``; each one
is a worker slot, not a device.
"""

from __future__ import annotations

import logging
import os
import types
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.distributed
from verl.plugin.platform import PlatformBase, PlatformRegistry

logger = logging.getLogger(__name__)

PLATFORM_NAME = "cpu"


def _no_op(*args, **kwargs) -> None:
    return None


def _zero(*args, **kwargs) -> int:
    return 0


def _host_mem_get_info(*args, **kwargs) -> tuple[int, int]:
    """(free, total) bytes of host memory, standing in for ``torch.cuda.mem_get_info``."""
    import psutil

    memory = psutil.virtual_memory()
    return memory.available, memory.total


def _make_device_module() -> types.ModuleType:
    """``torch.cpu`` plus the ``torch.cuda`` calls verl makes on ``get_torch_device()``.

    verl calls ``empty_cache``, ``mem_get_info``, ``memory_allocated``, ``get_rng_state`` and friends on the
    device module; ``torch.cpu`` lacks most of them. Memory queries report zero device memory in use, the
    "device" RNG state is the CPU generator's (so checkpoints that save and restore it round-trip), and
    cache/IPC calls do nothing.
    """
    module = types.ModuleType("poise_verl_cpu_device", "torch.cpu with no-op device-memory calls")
    for name in dir(torch.cpu):
        if not name.startswith("_"):
            setattr(module, name, getattr(torch.cpu, name))
    module.empty_cache = _no_op
    module.ipc_collect = _no_op
    module.reset_peak_memory_stats = _no_op
    module.set_per_process_memory_fraction = _no_op
    module.manual_seed = _no_op
    module.manual_seed_all = _no_op
    module.memory_allocated = _zero
    module.memory_reserved = _zero
    module.max_memory_allocated = _zero
    module.max_memory_reserved = _zero
    module.mem_get_info = _host_mem_get_info
    module.get_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    module.set_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)
    module.get_device_name = lambda *args, **kwargs: PLATFORM_NAME
    module.set_device = _no_op
    module.current_device = lambda: PLATFORM_NAME
    return module


_DEVICE_MODULE = _make_device_module()


def _init_default_process_group_with_gloo() -> None:
    """Start the default process group with plain ``gloo`` if this is a verl worker that has none yet.

    verl 0.9.1 starts each worker's group with
    ``backend = f"cpu:gloo,{get_device_name()}:{get_nccl_backend()}"`` (``utils/distributed.py:89``), which
    on this platform reads ``"cpu:gloo,cpu:gloo"`` and torch rejects as a duplicate device. That call is
    guarded by ``if not torch.distributed.is_initialized()``, and ``get_nccl_backend()`` is evaluated just
    before the guard, so the platform starts the group itself at that moment, from the same environment
    verl would use (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` set by verl's worker group).
    """
    if not torch.distributed.is_available() or torch.distributed.is_initialized():
        return
    if not all(key in os.environ for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        return
    torch.distributed.init_process_group(
        backend="gloo",
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        init_method=os.environ.get("DIST_INIT_METHOD", None),
    )


@PlatformRegistry.register(platform=PLATFORM_NAME)
class PlatformCPU(PlatformBase):
    """verl platform for a machine without an accelerator: torch's CPU device and the gloo backend."""

    @property
    def device_name(self) -> str:
        return PLATFORM_NAME

    @property
    def vendor_name(self) -> str:
        # The engine registry looks engines up by (device, vendor) first, then by device alone; "cpu" has
        # no vendor-specific engines, so this falls through to the engine registered for device "cpu"
        # unless VERL_ENGINE_VENDOR names another vendor key.
        return PLATFORM_NAME

    @property
    def device_module(self) -> types.ModuleType:
        return _DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # Never auto-detected: a CPU run is chosen explicitly with VERL_PLATFORM=cpu.
        return False

    def current_device(self) -> str:  # type: ignore[override]
        # verl passes this straight to ``module.to(device=...)`` / ``to_empty(device=...)``.
        return PLATFORM_NAME

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: int | None = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        # torch.manual_seed already seeds the CPU generator; there is no device generator.
        return None

    def manual_seed_all(self, seed: int) -> None:
        return None

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[int | None, int | None]:
        return None, None

    def communication_backend_name(self) -> str:
        _init_default_process_group_with_gloo()
        return "gloo"

    def visible_devices_envvar(self) -> str:
        # Ray sets CUDA_VISIBLE_DEVICES for actors holding a logical GPU; the CPU build of torch ignores it.
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        with nullcontext():
            yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None


def register_fsdp_engines_for_cpu() -> None:
    """Register verl's own FSDP engines (actor/ref and critic) for device ``"cpu"``.

    verl registers them for ``cuda`` and ``npu`` only (``workers/engine/fsdp/transformer_impl.py:1143``).
    Registering the same classes under the device-only key ``"cpu"`` leaves the ``(device, vendor)`` keys
    free, so a subclass registered with ``EngineRegistry.register(..., device="cpu", vendor="poise")`` and
    selected with ``VERL_ENGINE_VENDOR=poise`` takes precedence on CPU exactly as it would on CUDA.
    """
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead, FSDPEngineWithValueHead

    _never_pin_offloaded_parameters()
    engines = {"language_model": FSDPEngineWithLMHead, "value_model": FSDPEngineWithValueHead}
    for model_type, engine_cls in engines.items():
        # EngineRegistry.register asserts on a key that is taken; skip backends a later verl may already
        # register for "cpu" itself.
        taken = EngineRegistry._engines.get(model_type, {})
        backends = [backend for backend in ("fsdp", "fsdp2") if PLATFORM_NAME not in taken.get(backend, {})]
        if backends:
            EngineRegistry.register(model_type=model_type, backend=backends, device=PLATFORM_NAME)(engine_cls)


def _unpinned_cpu_offload_policy(pin_memory: bool = True):
    """FSDP2's ``CPUOffloadPolicy`` that never pins: pinning host memory needs an accelerator."""
    from torch.distributed.fsdp import CPUOffloadPolicy

    return CPUOffloadPolicy(pin_memory=False)


def _never_pin_offloaded_parameters() -> None:
    """Let verl build forward-only FSDP2 engines (the reference policy) on a machine without an accelerator.

    verl 0.9.1 gives every forward-only FSDP2 engine ``CPUOffloadPolicy(pin_memory=True)``
    (``workers/engine/fsdp/transformer_impl.py:462``), so any KL setting (``use_kl_in_reward`` or
    ``use_kl_loss``, both build a reference model) fails at start with "Cannot access accelerator device when
    none is available" from ``Tensor.pin_memory``. On the CPU the parameters already live in host memory and
    offloading them is only placement, so in a process that loaded this platform the name that module builds
    the policy from makes one that does not pin. Nothing else of the engine changes, and a GPU process never
    runs this: ``poise_verl.verl_ext.cpu`` registers the CPU engines only where ``VERL_PLATFORM=cpu``.
    """
    from verl.workers.engine.fsdp import transformer_impl

    transformer_impl.CPUOffloadPolicy = _unpinned_cpu_offload_policy
