"""Run the real entry point (`python -m poise_verl.main`) as a user would: a subprocess with its own local
Ray cluster on loopback, verl's trainer and worker groups, the project's own tiny policy and task."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Small and fast: 16 rollouts per step, short responses, micro-batches that divide the batch.
SMALL = [
    "budget.rollouts_per_step=16",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=16",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16",
    "data.val_max_samples=16",
    "poise.bootstrap_steps=1",
    "poise.min_fit_rows=8",
    "trainer.test_freq=2",
    "trainer.logger=[console,file]",
]


@dataclass
class Run:
    returncode: int
    log: str
    checkpoint_dir: Path

    def metrics(self) -> dict[int, dict[str, float]]:
        """{step: metrics} merged over every metrics JSONL the runs in this folder wrote (one per launch)."""
        steps: dict[int, dict[str, float]] = {}
        for path in sorted((self.checkpoint_dir / "metrics").glob("*.jsonl")):
            for line in path.read_text().splitlines():
                row = json.loads(line)
                steps.setdefault(row["step"], {}).update(row["data"])
        return steps


# `python -m poise_verl.main` as a shell without job control starts a background command: SIGINT ignored.
_MAIN_WITH_SIGINT_IGNORED = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "runpy.run_module('poise_verl.main', run_name='__main__', alter_sys=True)"
)


def _main_command(sigint_ignored: bool) -> list[str]:
    if sigint_ignored:
        return [sys.executable, "-c", _MAIN_WITH_SIGINT_IGNORED]
    return [sys.executable, "-m", "poise_verl.main"]


def launch_env(temp_dir: str, **extra: str) -> dict[str, str]:
    """The environment of a launch: the test's own, unbuffered output, wandb offline, and a temp folder of the
    launch's own (``TMPDIR``: verl's checkpoint lock files, sockets), removed after it.

    torch's compile cache, which would follow ``TMPDIR`` there, is one for all the launches of the suite, in the
    suite's temp folder, as it is one per machine for a user: vLLM's CPU sampler compiles a few kernels with
    Inductor (C++ compiler runs) in every launch of ``platform=cpu_vllm`` that finds no cache."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="offline", TMPDIR=temp_dir, **extra)
    env.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), "torchinductor"))
    return env


def run_main(
    args: list[str],
    workdir: Path,
    timeout: int = 900,  # a hang guard: a launch takes ~80 s idle, over 420 s beside two busy processes
    small: list[str] = SMALL,
    sigint_ignored: bool = False,
    env: dict[str, str] | None = None,
) -> Run:
    """`python -m poise_verl.main ARGS` in WORKDIR, checkpoints under WORKDIR/ckpt.

    Ray starts its own cluster in a short temp dir, unless ARGS join a running one (ray_init.address); the same
    dir is the launch's TMPDIR, and goes when the launch ends. ``sigint_ignored``: start it as a shell without
    job control starts a background command, with SIGINT ignored (Python then installs no handler for it unless
    the entry point does). ``env``: more environment variables. A launch that lost a port to the launch running
    beside it (:func:`_lost_a_port_race`, a race in verl, not in the run) is launched once more.
    """
    return _launched_twice_if_a_port_was_lost(
        lambda: _run_main_once(args, workdir, timeout, small, sigint_ignored, env), workdir
    )


def run_verl_main(args: list[str], workdir: Path, platform: str = "cpu", timeout: int = 900) -> Run:
    """verl's own entry point, ``python -m verl.trainer.main_ppo --config-dir hydra_configs +platform=PLATFORM
    ARGS``, in WORKDIR: verl's config, with nothing of poise-verl but the CPU platform file and the plugins that
    ``import verl`` loads. Metrics go to WORKDIR/ckpt/metrics through verl's ``file`` logger, as for
    :func:`run_main`; no ``VERL_*`` variable of this process reaches it (the platform file sets its own)."""
    return _launched_twice_if_a_port_was_lost(lambda: _run_verl_main_once(args, workdir, platform, timeout), workdir)


def _launched_twice_if_a_port_was_lost(launch, workdir: Path) -> Run:
    """LAUNCH(), and once more if it lost a port to the launch running beside it (:func:`_lost_a_port_race`)."""
    run = launch()
    if _lost_a_port_race(run):
        print(f"a port verl had picked was taken before it bound it; launching again ({workdir})")
        run = launch()
    return run


def _lost_a_port_race(run: Run) -> bool:
    """verl picks a free port for a worker group's rendezvous and binds it later; a launch running beside it (the
    suite runs two) can take it meanwhile. The launch then fails at start-up with EADDRINUSE, before any step."""
    return run.returncode != 0 and "EADDRINUSE" in run.log and not re.search(r"(?<![\w/])step:1 - ", run.log)


def _run_main_once(args, workdir, timeout, small, sigint_ignored, env) -> Run:
    ray_dir = tempfile.mkdtemp(prefix="ray")  # under TMPDIR, short: Ray's socket paths
    command = [*_main_command(sigint_ignored), *small, *args, f"trainer.default_local_dir={workdir / 'ckpt'}"]
    if not any("ray_init.address=" in arg for arg in args):
        command.append(f"+ray_kwargs.ray_init._temp_dir={ray_dir}")
    return _run(command, workdir, launch_env(ray_dir, **(env or {})), timeout, ray_dir)


def _run_verl_main_once(args, workdir, platform, timeout) -> Run:
    ray_dir = tempfile.mkdtemp(prefix="ray")  # under TMPDIR, short: Ray's socket paths
    checkpoint_dir = workdir / "ckpt"
    command = [
        sys.executable, "-m", "verl.trainer.main_ppo", f"--config-dir={REPO / 'hydra_configs'}", f"+platform={platform}",
        *args, "trainer.logger=[console,file]", f"trainer.default_local_dir={checkpoint_dir}",
        f"+ray_kwargs.ray_init._temp_dir={ray_dir}",
    ]
    env = {key: value for key, value in launch_env(ray_dir).items() if not key.startswith("VERL_")}
    env["VERL_FILE_LOGGER_PATH"] = str(checkpoint_dir / "metrics" / "verl_main_ppo.jsonl")
    (checkpoint_dir / "metrics").mkdir(parents=True, exist_ok=True)  # verl's file logger opens the file only
    # verl's entry point starts Ray itself: its workers at the niceness of other work (as the project's launcher
    # sets them from runtime.ray_worker_niceness), or they starve on a busy machine.
    env.setdefault("RAY_worker_niceness", "0")
    return _run(command, workdir, env, timeout, ray_dir)


def _run(command: list[str], workdir: Path, env: dict[str, str], timeout: int, ray_dir: str) -> Run:
    """COMMAND in WORKDIR to its end; its output saved as WORKDIR/log-N.txt; the launch's Ray folder removed."""
    try:
        out = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout,
                             check=False)
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)
    log = out.stdout + out.stderr
    (workdir / f"log-{len(list(workdir.glob('log-*')))}.txt").write_text(log)
    return Run(out.returncode, log, workdir / "ckpt")


def compose_config(*overrides: str, resolve: bool = True):
    """The main job's config for OVERRIDES, as `python -m poise_verl.main` composes it (no launch)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from poise_verl.config import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "hydra_configs"), version_base=None):
        config = compose("poise_trainer", overrides=list(overrides))
    if resolve:
        OmegaConf.resolve(config)
    return config


def composed_config(workdir: Path):
    """The config the newest launch in WORKDIR ran with (Hydra's ``.hydra/config.yaml``), resolved."""
    from omegaconf import OmegaConf

    from poise_verl.config import register_resolvers

    saved = sorted(workdir.glob("outputs/*/*/.hydra/config.yaml"))
    assert saved, f"no Hydra config under {workdir}/outputs"
    register_resolvers()
    config = OmegaConf.load(saved[-1])
    OmegaConf.resolve(config)
    return config


def assert_finite(metrics: dict[str, float], keys: list[str]) -> None:
    missing = [k for k in keys if k not in metrics]
    assert not missing, f"missing metric keys {missing}; have {sorted(metrics)}"
    bad = {k: metrics[k] for k in keys if not math.isfinite(float(metrics[k]))}
    assert not bad, f"non-finite metrics {bad}"


# SMALL without the micro-batch sizes: the defaults follow budget.rollouts_per_step (hydra_configs).
SMALL_DEFAULT_MICRO_BATCHES = [arg for arg in SMALL if "micro_batch_size" not in arg]
LAUNCH_MARKER = "POISE_VERL_TEST_LAUNCH"


@dataclass
class Launch:
    """A running `python -m poise_verl.main` in its own process group, its output going to a file.

    Every process of the launch (the driver, its Ray cluster, every Ray worker) inherits the environment
    variable LAUNCH_MARKER=<id>, which is how `processes()` finds them, including workers started late.
    """

    process: subprocess.Popen
    log_path: Path
    checkpoint_dir: Path
    marker: str
    ray_dir: str
    command: list[str]
    env: dict[str, str]
    launched_again: bool = False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_until(self, condition, timeout: float) -> bool:
        """True once CONDITION() holds; False if the launch ended or TIMEOUT passed first (a bound, not a
        measurement: nothing is asserted about how long it took). A launch that lost a port to the launch running
        beside it (:func:`_lost_a_port_race`) is launched once more, as :func:`run_main` does."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            if self.process.poll() is not None:
                if self._launched_again_after_a_lost_port():
                    continue
                return bool(condition())
            time.sleep(0.5)
        return False

    def _launched_again_after_a_lost_port(self) -> bool:
        if self.launched_again or not _lost_a_port_race(Run(self.process.returncode, self.log(), self.checkpoint_dir)):
            return False
        workdir = self.log_path.parent
        print(f"a port verl had picked was taken before it bound it; launching again ({workdir})")
        for proc in self.processes():  # what is left of the first attempt
            with contextlib.suppress(Exception):
                proc.kill()
        for path in (self.checkpoint_dir / "metrics").glob("*.jsonl"):  # the first attempt's, with no step in it
            if not path.read_text().strip():
                path.unlink()
        self.process, self.log_path = _popen(self.command, workdir, self.env)
        self.launched_again = True
        return True

    def wait_for(self, pattern: str, timeout: float) -> bool:
        """True once PATTERN (a regex) is in the output; False if the launch ended or TIMEOUT passed first."""
        import re

        return self.wait_until(lambda: re.search(pattern, self.log()) is not None, timeout)

    def processes(self) -> list:
        """The live processes of this launch (psutil.Process), found by the marker in their environment."""
        import psutil

        found = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get(LAUNCH_MARKER) == self.marker and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def finish(self, timeout: float) -> Run:
        """Wait for the driver to exit (SIGKILL to its group past TIMEOUT), then kill what is left of it."""
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait()
        self.kill_all()
        log = self.log()
        return Run(self.process.returncode, log, self.checkpoint_dir)

    def interrupt(self, timeout: float, terminate: bool = False) -> tuple[int, set[str], str]:
        """Ctrl-C as a terminal sends it: SIGINT to the launch's process group; with ``terminate``, SIGTERM to the
        driver alone, as ``docker stop``, Kubernetes and systemd send it to a job's main process. Waits up to
        TIMEOUT for the driver and for every process of the launch; returns (the driver's exit code, the processes
        still alive, output)."""
        import signal

        import psutil

        launched = self.processes()
        assert len(launched) > 3, "expected the driver, its Ray cluster and the Ray workers"
        if terminate:
            self.process.send_signal(signal.SIGTERM)
        else:
            os.killpg(self.process.pid, signal.SIGINT)
        returncode = self.process.wait(timeout=timeout)
        _, alive = psutil.wait_procs(launched, timeout=timeout)
        left = {f"{p.pid} {p.name()}" for p in alive} | {f"{p.pid} {p.name()}" for p in self.processes()}
        return returncode, left, self.log()

    def kill_all(self) -> None:
        """SIGKILL every remaining process of this launch and remove its Ray temp folder."""
        import psutil

        for proc in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):  # it ended by itself meanwhile
                proc.kill()
        shutil.rmtree(self.ray_dir, ignore_errors=True)


def start_main(args: list[str], workdir: Path, small: list[str] = SMALL, sigint_ignored: bool = False) -> Launch:
    """Start `python -m poise_verl.main ARGS` in WORKDIR without waiting (checkpoints under WORKDIR/ckpt);
    ``sigint_ignored`` as in :func:`run_main`."""
    import uuid

    ray_dir = tempfile.mkdtemp(prefix="ray")  # under TMPDIR, short: Ray's socket paths
    checkpoint_dir = workdir / "ckpt"
    command = [
        *_main_command(sigint_ignored), *small, *args,
        f"trainer.default_local_dir={checkpoint_dir}", f"+ray_kwargs.ray_init._temp_dir={ray_dir}",
    ]
    marker = uuid.uuid4().hex
    env = launch_env(ray_dir, **{LAUNCH_MARKER: marker})
    process, log_path = _popen(command, workdir, env)
    return Launch(process, log_path, checkpoint_dir, marker, ray_dir, command, env)


def _popen(command: list[str], workdir: Path, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    """COMMAND started in WORKDIR in a process group of its own, its output going to WORKDIR/log-N.txt."""
    log_path = workdir / f"log-{len(list(workdir.glob('log-*')))}.txt"
    with open(log_path, "w") as out:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return process, log_path


def assert_stopped_by_ctrl_c(
    returncode: int, left: set[str], log: str, resume_from: Path, terminated: bool = False
) -> None:
    """What Ctrl-C (or, ``terminated``, SIGTERM) must leave (:meth:`Launch.interrupt`): exit code 130 (143), no
    process of the run, and a last line naming the checkpoint the same command resumes from."""
    assert returncode == (143 if terminated else 130), last_lines(log, 20)
    assert not left, f"processes of the interrupted run still alive: {sorted(left)}"
    how = "terminated (SIGTERM)" if terminated else "interrupted (Ctrl-C)"
    assert last_lines(log, 1) == (
        f"poise-verl: {how}; the run and its Ray processes are stopped; the same command resumes from {resume_from}."
    ), last_lines(log, 10)


def step_line(n: int) -> str:
    """A regex for verl's console line of training step N ("step:N - ..."; not "global_step:N")."""
    return rf"(?<![\w/])step:{n} - "


def last_lines(log: str, count: int = 8) -> str:
    """The last COUNT non-empty lines of an output: what a user reads when a run stops."""
    return "\n".join([line for line in log.splitlines() if line.strip()][-count:])


def wandb_history(run_dir: Path) -> dict[int, dict[str, float]]:
    """``{step: {key: value}}`` of the history rows in an offline wandb run folder (``wandb/offline-run-*``).

    The run file is wandb's record log (leveldb's log format: 32 KiB blocks of records, each a CRC, a length, a
    type, and a protobuf ``Record``); read with wandb's own protobuf classes, no network and no wandb service.
    """
    import struct

    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    records, pending, position, block = [], b"", 7, 32768
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a record header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        position += 7
        if kind == 0:  # zero padding to the end of the block
            position += left - 7
            continue
        chunk = data[position : position + length]
        position += length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
    history: dict[int, dict[str, float]] = {}
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") != "history":
            continue
        row = {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in record.history.item}
        history.setdefault(int(row.get("_step", -1)), {}).update(row)
    return history
