"""Register with a verl registry when that registry's module is imported, not before.

verl loads every ``verl.plugins`` entry point in every process that imports verl: the trainer's, the actor
workers', and also the load balancer's, the reward workers' and the replay buffer's, which never look up an
advantage estimator, a trainer mode or an engine. Registering eagerly made each of them import verl's algorithm,
trainer and engine modules (``verl.trainer.ppo.core_algos``, ``verl.trainer.ppo.v1``, ``verl.workers.engine``),
about 4 s of CPU per process: a fifth of a tiny CPU run's start-up CPU (90 -> 71 s for POISE,
docs/PERFORMANCE.md). :func:`when_imported` runs a registration the
moment the registry's module has finished executing (at once, if it already has), so a process registers
exactly the pieces whose registry it loads, before anything in it can look them up.
"""

from __future__ import annotations

import importlib.abc
import sys
import threading
from collections.abc import Callable

_pending: dict[str, list[Callable[[], None]]] = {}
_lock = threading.Lock()


class _AfterImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a module with pending registrations, asks the finders after it for the module's
    spec and makes its loader run the registrations once the module has executed."""

    def find_spec(self, name, path, target=None):
        if name not in _pending:
            return None
        for finder in sys.meta_path[sys.meta_path.index(self) + 1 :]:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(name, path, target) if find_spec is not None else None
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        execute = spec.loader.exec_module  # a loader instance of this module's own (one per spec)

        def exec_module(module):
            execute(module)
            _run(name)

        spec.loader.exec_module = exec_module
        return spec


_finder = _AfterImportFinder()


def _run(name: str) -> None:
    with _lock:
        callbacks = _pending.pop(name, [])
    for callback in callbacks:
        callback()


def when_imported(module: str, callback: Callable[[], None]) -> None:
    """Call CALLBACK once MODULE has been imported in this process: now if it already is, else right after it
    finishes executing (before the import statement that loaded it returns). Errors propagate to that import."""
    with _lock:
        if module not in sys.modules:
            _pending.setdefault(module, []).append(callback)
            if _finder not in sys.meta_path:
                sys.meta_path.insert(0, _finder)
            return
    callback()
