"""verl modules a process on the CPU platform never loads: an accelerator's engine whose import costs every process.

``verl.checkpoint_engine`` imports each of its weight-sync engines in a ``try`` and records an ``ImportError``
as "not available" (``verl/checkpoint_engine/__init__.py``; asking for that backend then names the error). The
HCCL engine, the weight sync of Huawei's Ascend NPUs, imports vLLM at module level
(``verl/checkpoint_engine/hccl_checkpoint_engine.py:23``, ``from vllm.distributed.utils import ...``). Where
vLLM's CPU build is installed (``platform=cpu_vllm``, the test suite), every process that imports
``verl.checkpoint_engine`` imported vLLM for it: the trainer, the actor, the rollout server, the agent loop, about
1 CPU-second each (``python -X importtime -c "import verl.checkpoint_engine"``), on every launch.

On the CPU platform (``VERL_PLATFORM=cpu``) :func:`install` makes that import fail as it fails on a machine
without vLLM, with a reason: verl records the HCCL engine as not available, and the CPU platform's own weight
sync (``checkpoint_engine.backend=gloo``) and verl's ``naive`` one are unaffected. A process that needs vLLM
(verl's vLLM server under ``platform=cpu_vllm``) still imports it, for itself. Off the CPU platform nothing is
installed: a GPU or NPU run loads every engine as verl does.
"""

from __future__ import annotations

import importlib.abc
import sys

#: module -> why the CPU platform does not load it.
UNUSED = {
    "verl.checkpoint_engine.hccl_checkpoint_engine": (
        "the HCCL weight sync is for Ascend NPUs, and importing it imports vLLM"
    ),
}


class _UnusedEngineFinder(importlib.abc.MetaPathFinder):
    """Refuses the modules of :data:`UNUSED` with an ImportError that says why; finds nothing else."""

    def find_spec(self, name, path, target=None):
        reason = UNUSED.get(name)
        if reason is not None:
            raise ImportError(f"{name} is not loaded on the CPU platform (VERL_PLATFORM=cpu): {reason}", name=name)


_finder = _UnusedEngineFinder()


def install() -> None:
    """Refuse the modules of :data:`UNUSED` in this process (once; before any other finder)."""
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
