"""Recording and timing: the JSON report rewritten after every phase, and timed calls with their spread."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch


class Report:
    """Progress lines with elapsed time, and a JSON file rewritten (atomically) after every phase."""

    def __init__(self, path: Path):
        self.path = path
        self.start = time.perf_counter()
        self.data: dict[str, Any] = {"status": "running", "phases": {}, "errors": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def log(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.start:7.1f}s] {message}", flush=True)

    def save(self) -> None:
        self.data["elapsed_s"] = time.perf_counter() - self.start
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(finite(self.data), indent=2, sort_keys=False))
        os.replace(tmp, self.path)

    @contextlib.contextmanager
    def phase(self, name: str):
        """Run one phase; record its result dict, wall time and any error, and keep going."""
        self.log(f"phase {name} ...")
        record: dict[str, Any] = {}
        self.data["phases"][name] = record
        began = time.perf_counter()
        try:
            yield record
            record["ok"] = True
        except Exception as error:  # noqa: BLE001  (one phase failing must not lose the others)
            record["ok"] = False
            self.data["errors"][name] = f"{type(error).__name__}: {error}"
            self.log(f"phase {name} FAILED: {type(error).__name__}: {error}")
            traceback.print_exc()
        finally:
            record["phase_s"] = time.perf_counter() - began
            self.log(f"phase {name} done in {record['phase_s']:.1f}s")
            self.save()


def finite(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def describe(times: list[float]) -> dict[str, float]:
    values = np.asarray(times, dtype=np.float64)
    return {
        "n": int(values.size),
        "median": float(np.median(values)),
        "mean": float(values.mean()),
        "min": float(values.min()),
        "max": float(values.max()),
        "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
    }


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, reps: int, budget_s: float, min_reps: int = 1) -> list[float]:
    """Wall seconds of ``fn()`` per call (the device synchronised around each), up to ``reps`` calls,
    stopping early once ``budget_s`` is spent and ``min_reps`` are done."""
    times: list[float] = []
    began = time.perf_counter()
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
        if len(times) >= min_reps and time.perf_counter() - began > budget_s:
            break
    return times
