"""The ``cpu`` platform and the registrations made by importing ``poise_verl.verl_ext.cpu``.

Each check runs in a fresh interpreter, as a Ray worker would: verl resolves its platform once per process,
loads the plugin modules at ``import verl`` and reads ``VERL_PLATFORM`` (from ``platform/cpu.yaml``, through
:func:`cpu_env`) then.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

from cpu_env import cpu_env


def run_python(code: str, **extra_env: str) -> str:
    env = cpu_env()
    env.update(extra_env)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_import_verl_selects_cpu_platform_and_registers_everything():
    out = run_python(
        """
        import verl  # imports poise_verl.verl_ext.cpu through the package's verl.plugins entry point
        from verl.utils.device import get_device_id, get_device_name, get_nccl_backend, get_torch_device
        from verl.workers.engine.base import EngineRegistry
        from verl.workers.rollout.base import get_rollout_class
        from verl.workers.rollout.replica import get_rollout_replica_class

        device = get_torch_device()
        device.empty_cache(); device.synchronize(); device.manual_seed(0)
        assert device.memory_allocated() == 0 and device.mem_get_info()[1] > 0
        state = device.get_rng_state(); device.set_rng_state(state)
        print(get_device_name(), get_device_id(), get_nccl_backend())
        print(EngineRegistry.get_engine_cls("language_model", "fsdp2").__name__)
        print(get_rollout_class("hf", "async").__name__, get_rollout_replica_class("hf").__name__)
        """
    ).split()
    assert out == ["cpu", "cpu", "gloo", "FSDPEngineWithLMHead", "HFServerAdapter", "HFReplica"]


def test_verl_process_group_starts_with_plain_gloo():
    out = run_python(
        """
        import torch.distributed as dist
        import verl
        from verl.utils.distributed import initialize_global_process_group_ray

        initialize_global_process_group_ray(timeout_second=None)  # would ask torch for "cpu:gloo,cpu:gloo"
        print(dist.get_backend(), dist.get_world_size())
        dist.destroy_process_group()
        """,
        RANK="0",
        WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
    ).split()
    assert out == ["gloo", "1"]


def test_vendor_keyed_engine_wins_on_cpu_when_selected():
    out = run_python(
        """
        import os
        import verl
        from verl.workers.engine.base import EngineRegistry
        from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

        # A vendor of its own: the entry points already registered poise's capture engine under "poise".
        @EngineRegistry.register(model_type="language_model", backend=["fsdp", "fsdp2"], device="cpu", vendor="other")
        class OtherEngine(FSDPEngineWithLMHead):
            pass

        print(EngineRegistry.get_engine_cls("language_model", "fsdp2").__name__)
        os.environ["VERL_ENGINE_VENDOR"] = "other"  # read at each lookup
        print(EngineRegistry.get_engine_cls("language_model", "fsdp2").__name__)
        """
    ).split()
    assert out == ["FSDPEngineWithLMHead", "OtherEngine"]
