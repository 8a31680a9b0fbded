"""Ctrl-C or SIGTERM (what a cluster sends before it kills a job) to `python -m poise_verl.ablate` stops the main
job it is running, removes that launch's temporary folder and says how to resume.

The main job here is a stand-in (a script that records its pid and TMPDIR, then waits): what is under test is the
ablation driver's handling of the signal and of its child, which needs no training. The real main job's own
Ctrl-C and SIGTERM handling is tested in tests/e2e.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

STAND_IN = textwrap.dedent('''
    import os, signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as the main job does, even when SIGINT came ignored
    folder = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("trainer.default_local_dir="))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "child.txt"), "w") as out:
        out.write(f"{os.getpid()} {os.environ['TMPDIR']}")
    time.sleep(600)
''')

DRIVER = textwrap.dedent('''
    import dataclasses, sys
    from poise_verl.ablate import cli
    planned = cli.plan_from_args
    def with_stand_in(args, extra):
        algos, runs, output = planned(args, extra)
        return algos, [dataclasses.replace(r, program=(sys.argv[1],)) for r in runs], output
    cli.plan_from_args = with_stand_in
    sys.exit(cli.main(sys.argv[2:]))
''')


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT to a background job"])
def test_a_signal_stops_the_run_in_progress_and_removes_its_temp_folder(tmp_path, stop):
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    output = tmp_path / "abl"
    command = [sys.executable, "-c", DRIVER, str(tmp_path / "stand_in.py"),
               "--algos", "poise", "--seeds", "0", "--output", str(output), "--no-ray-temp-dir"]
    if stop != "SIGTERM":  # a shell without job control starts a background command with SIGINT ignored
        command = ["sh", "-c", 'trap "" INT; exec "$@"', "sh", *command]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _signal_and_check(driver, output, stop)
    finally:  # whatever failed, nothing of the test is left running
        for process in [driver, *_children(driver.pid)]:
            with contextlib.suppress(Exception):
                process.kill()


def _children(pid: int) -> list:
    with contextlib.suppress(psutil.NoSuchProcess):
        return psutil.Process(pid).children(recursive=True)
    return []


def _signal_and_check(driver: subprocess.Popen, output: Path, stop: str) -> None:
    child_file = output / "runs" / "poise" / "seed_0" / "child.txt"
    deadline = time.monotonic() + 120  # a hang guard: composing the algorithm's config takes a few seconds
    while not child_file.exists() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert child_file.exists(), driver.communicate(timeout=30)[0][-3000:]
    time.sleep(0.5)  # the stand-in wrote its file before it waits; let it reach the wait
    pid, temp_dir = child_file.read_text().split()

    driver.send_signal(signal.SIGTERM if stop == "SIGTERM" else signal.SIGINT)
    out, _ = driver.communicate(timeout=90)

    assert driver.returncode == (143 if stop == "SIGTERM" else 130), out[-3000:]
    how = "terminated (SIGTERM)" if stop == "SIGTERM" else "interrupted (Ctrl-C)"
    last = out.strip().splitlines()[-1]
    assert f"{how}: the run in progress was stopped; rerun the same command to resume it" in last, out[-2000:]
    assert not psutil.pid_exists(int(pid)) or psutil.Process(int(pid)).status() == psutil.STATUS_ZOMBIE
    assert not Path(temp_dir).exists() and Path(temp_dir) != Path(os.environ.get("TMPDIR", "/tmp"))
