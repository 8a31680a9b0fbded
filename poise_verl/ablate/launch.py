"""Launching: one ``python -m poise_verl.main`` subprocess per unfinished run, one attempt logged per launch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass

from poise_verl.ablate.metrics import attempts, describe_progress, load_metrics
from poise_verl.ablate.plan import ATTEMPTS, DONE_MARKER, LOG, RUN_INFO, Run


def log(message: str) -> None:
    print(f"ablate: {message}", flush=True)


@dataclass
class Attempt:
    started_at: str
    wall_clock_s: float
    returncode: int | None
    command: list[str]


def launch(run: Run, use_ray_temp_dir: bool = True) -> Attempt:
    """One launch of the main job for ``run``, output appended to its log. Ctrl-C stops it and is re-raised."""
    run.folder.mkdir(parents=True, exist_ok=True)
    info = {"algo": run.algo, "seed": run.seed, "overrides": list(run.overrides), **run.config.__dict__}
    (run.folder / RUN_INFO).write_text(json.dumps(info, indent=2, default=list) + "\n")
    # Each launch has a temp dir of its own, removed when it ends: its TMPDIR (verl's checkpoint lock files, torch's
    # compile cache, so no run reuses an earlier run's compiled kernels) and Ray's temp dir, under /tmp because
    # Ray's socket paths must stay short.
    temp_dir = tempfile.mkdtemp(prefix="ablate", dir="/tmp")
    command = run.command(temp_dir if use_ray_temp_dir else None)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TMPDIR=temp_dir)
    env.pop("VERL_FILE_LOGGER_PATH", None)  # else every run would write the same metrics file
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    start = time.monotonic()
    returncode: int | None = None
    try:
        with open(run.folder / LOG, "a") as out:
            out.write(f"\n===== ablate launch at {started}: {' '.join(command)}\n")
            out.flush()
            process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            try:
                returncode = process.wait()
            except BaseException:
                _stop(process)
                raise
    finally:
        attempt = Attempt(started, round(time.monotonic() - start, 3), returncode, command)
        with open(run.folder / ATTEMPTS, "a") as out:
            out.write(json.dumps(attempt.__dict__) + "\n")
        shutil.rmtree(temp_dir, ignore_errors=True)
    if returncode == 0:
        history = attempts(run.folder)
        marker = {
            "command": command,
            "overrides": list(run.overrides),
            "wall_clock_s": round(sum(a["wall_clock_s"] for a in history), 3),
            "launches": len(history),
            "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        (run.folder / DONE_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return attempt


def _stop(process: subprocess.Popen) -> None:
    """Stop the main job we started (its whole session: the Ray driver and the local Ray processes)."""
    for sig, wait_s in ((signal.SIGINT, 30), (signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_all(runs: list[Run], use_ray_temp_dir: bool = True) -> list[Run]:
    """Launch every unfinished run, sequentially; returns the runs that failed."""
    failed = []
    for index, run in enumerate(runs, start=1):
        prefix = f"[{index}/{len(runs)}] {run.name}"
        if run.status() == "done":
            log(f"{prefix}: finished earlier, skipped ({run.folder / DONE_MARKER})")
            continue
        resumed = " (resuming)" if run.status() == "partial" else ""
        log(f"{prefix}: launching{resumed}; log: {run.folder / LOG}")
        attempt = launch(run, use_ray_temp_dir)
        progress = describe_progress(load_metrics(run.folder), run.config)
        if attempt.returncode == 0:
            log(f"{prefix}: done in {attempt.wall_clock_s:.0f} s (process); {progress}")
        else:
            failed.append(run)
            log(
                f"{prefix}: FAILED with exit code {attempt.returncode} after {attempt.wall_clock_s:.0f} s; "
                f"{progress}; see {run.folder / LOG}"
            )
    return failed
