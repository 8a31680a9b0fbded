"""CPU seconds per process of a launched run (the driver and every Ray process under it), by window.

A background thread samples the process tree every ``interval`` seconds with psutil and keeps each
process's last cumulative CPU time (user + system) and a label: a Ray worker's process title names its actor
class (``ray::HFRolloutServer.generate`` -> ``HFRolloutServer``), other processes are named by their
executable or script (``raylet``, ``gcs_server``, ``dashboard.py``, the driver). ``mark(name)`` freezes a
snapshot; :func:`cpu_between` gives CPU seconds per label between two marks, so a window of steady-state
steps shows which process did the work and, against the window's wall-clock x cores, how much of the
machine sat idle waiting.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, defaultdict

import psutil


def process_label(process: psutil.Process) -> str:
    """A short, stable name for a process of the run."""
    try:
        cmdline = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "?"
    if not cmdline:
        return process.name()
    first = cmdline[0]
    if first.startswith("ray::"):
        name = first[len("ray::") :].split()[0]
        return "ray::" + name.split(".")[0]
    if "python" in os.path.basename(first):
        for arg in cmdline[1:]:
            if arg == "-m":
                continue
            if not arg.startswith("-"):
                return os.path.basename(arg)
    return os.path.basename(first)


class ProcessWatch:
    """Samples the CPU time of ``root_pid`` and all its descendants until :meth:`stop`."""

    def __init__(self, root_pid: int, interval: float = 0.25):
        self.root = psutil.Process(root_pid)
        self.interval = interval
        self.cpu: dict[int, float] = {}
        self.labels: dict[int, Counter] = defaultdict(Counter)
        self.marks: dict[str, tuple[float, dict[int, float]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for process in processes:
            try:
                times = process.cpu_times()
                label = process_label(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            with self._lock:
                self.cpu[process.pid] = times.user + times.system
                self.labels[process.pid][label] += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def mark(self, name: str) -> None:
        self._sample()
        with self._lock:
            self.marks[name] = (time.perf_counter(), dict(self.cpu))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def label(self, pid: int) -> str:
        counts = self.labels.get(pid)
        if not counts:
            return "?"
        # Ray workers start as "ray::IDLE" before they become an actor: prefer any other name.
        named = [(n, c) for n, c in counts.most_common() if n != "ray::IDLE"]
        return (named or counts.most_common())[0][0]

    def cpu_between(self, start: str, end: str) -> tuple[float, dict[str, float]]:
        """(wall seconds, {label: CPU seconds}) between two marks; processes born inside count from zero."""
        (t0, before), (t1, after) = self.marks[start], self.marks[end]
        per_label: dict[str, float] = defaultdict(float)
        for pid, seconds in after.items():
            delta = seconds - before.get(pid, 0.0)
            if delta > 0:
                per_label[self.label(pid)] += delta
        return t1 - t0, dict(sorted(per_label.items(), key=lambda item: -item[1]))
