"""The order the suite runs in: the modules with the most launches of the real entry point first.

A launch takes about a minute of both cores, most tests a fraction of a second. `make test` runs two pytest
workers that take whole modules from one queue as they finish (pytest-xdist's ``--dist loadscope`` in the
order collected, ``--no-loadscope-reorder``), so a module's fixtures, a launch shared by its tests among them,
run once. With the launches at the front, the short modules fill the gaps at the end instead of one worker
waiting while the other runs a last launch. ``@pytest.mark.slow(launches=N)`` on a module (its ``pytestmark``) or on
a test says how many launches it runs; ``slow`` without a count is one.
"""

from __future__ import annotations

from collections import defaultdict

import pytest


def _launches(markers) -> int:
    return sum(int(marker.kwargs.get("launches", 1)) for marker in markers if marker.name == "slow")


def pytest_collection_modifyitems(session, config, items) -> None:
    # A module's launches: its own mark (pytestmark, once) plus its tests' own marks. Modules with the most go
    # first; the order is stable otherwise (every worker must collect the same order).
    per_module: dict[str, int] = defaultdict(int)
    for item in items:
        module = item.getparent(pytest.Module)
        if module.nodeid not in per_module:
            per_module[module.nodeid] = _launches(module.own_markers)
        per_module[module.nodeid] += _launches(item.own_markers)
    items.sort(key=lambda item: -per_module[item.getparent(pytest.Module).nodeid])
