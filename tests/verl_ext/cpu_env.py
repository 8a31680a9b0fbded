"""The environment of a subprocess that runs verl on the CPU outside Ray (a module, not a conftest helper: two
test folders importing helpers from "conftest" would each get whichever conftest Python loaded first)."""

from __future__ import annotations

import os


def cpu_env() -> dict[str, str]:
    """This process's environment plus what ``platform/cpu.yaml`` gives every Ray process."""
    from poise_verl.verl_ext.cpu import platform_env_vars

    return {**os.environ, **platform_env_vars()}
