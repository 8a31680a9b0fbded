"""The real trainer across a two-node Ray cluster on loopback, started with the repo's multi-node scripts (and, in
the same launch, the official code's entropy split, ``poise.entropy_split=official_text``, through full steps).

`recipes/multinode/start_ray_head.sh` and `start_ray_worker.sh` each start a Ray node on 127.0.0.1 with one
logical GPU (NUM_GPUS=1: Ray's GPU count is a label; on this CPU machine the CPU platform runs the work), so
the two nodes are separate raylets with separate resources on one machine. `python -m poise_verl.main` then
joins that cluster (`ray_kwargs.ray_init.address`) with `trainer.nnodes=2 trainer.n_gpus_per_node=1`: verl's
resource pool needs one GPU on each node, so the actor worker group has two ranks, one per node, and FSDP2
shards the policy over them (gloo). The checkpoint holds one shard per rank.

Nothing here can stop other Ray clusters on the machine: the nodes run with `--block` in their own process
group, which is what the teardown signals (never `ray stop`, which stops every cluster of the user).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from e2e_runner import REPO, SMALL, assert_finite, run_main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]  # above run_main's 900 s hang guard and the cluster start

SCRIPTS = REPO / "recipes" / "multinode"
NODES = 2


_GIVEN: set[int] = set()


def _free_port() -> int:
    """A port free now and not handed out before in this process (the cluster needs about 15 distinct ones)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port


def _node_ports(worker_ports: tuple[int, int]) -> list[str]:
    """Ports of one node. Two raylets on one machine must not share Ray's fixed defaults (agent 52365,
    client server 10001, ...), nor share them with another Ray cluster running on the machine."""
    args = [
        f"--{name}={_free_port()}"
        for name in (
            "node-manager-port",
            "object-manager-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "metrics-export-port",
            "runtime-env-agent-port",
        )
    ]
    return [*args, f"--min-worker-port={worker_ports[0]}", f"--max-worker-port={worker_ports[1]}"]


def _worker_port_ranges() -> list[tuple[int, int]]:
    """One range per node for Ray's worker processes, just below the kernel's ephemeral ports: the other ports
    come from _free_port (ephemeral), so a range inside that space can collide with them."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            low = int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default lower bound
    return [(low - 1000 * (NODES - i), low - 1000 * (NODES - i - 1) - 1) for i in range(NODES)]


def _alive_nodes(address: str) -> list[dict]:
    """The cluster's live nodes, asked from a separate driver process (this one stays Ray-free)."""
    code = (
        f"import json, ray; ray.init(address={address!r}, logging_level='ERROR');"
        "print(json.dumps([n['Resources'] for n in ray.nodes() if n['Alive']]))"
    )
    host, port = address.rsplit(":", 1)
    try:  # the GCS port first: a driver started before the GCS listens waits a minute or more
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return []
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, check=False)
    except subprocess.TimeoutExpired:
        return []
    if out.returncode != 0:
        return []
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def two_node_cluster(tmp_path, monkeypatch):
    # Ray 2.60's `ray start` turns token authentication on (token in ~/.ray/auth_token, made when missing); a
    # driver joining with an explicit address must say so too. Set here, it reaches the nodes, the probe
    # below and the trainer's driver (run_main passes this environment on).
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    temp_dir = tempfile.mkdtemp(prefix="ray")  # under TMPDIR, short: Ray's socket paths
    port = _free_port()
    address = f"127.0.0.1:{port}"
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",  # the venv's `ray`
        NODE_IP="127.0.0.1",
        NUM_GPUS="1",
        NUM_CPUS="16",  # logical: verl's pools reserve CPUs per worker
        RAY_PORT=str(port),
        RAY_DASHBOARD_PORT=str(_free_port()),
        RAY_USAGE_STATS_ENABLED="0",
    )
    common = ["--block", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    processes = []
    logs = []

    def start(script: str, *args: str) -> None:
        log = open(tmp_path / f"{script}.log", "w")  # noqa: SIM115 (closed at teardown)
        logs.append(log)
        processes.append(
            subprocess.Popen(
                ["bash", str(SCRIPTS / script), *args, *common],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the teardown signals only this cluster
            )
        )

    try:
        head_ports, worker_ports = _worker_port_ranges()
        head_only = ["--include-dashboard=false", f"--ray-client-server-port={_free_port()}"]
        start("start_ray_head.sh", *head_only, *_node_ports(head_ports))
        deadline = time.monotonic() + 300  # generous: a loaded 2-core machine starts Ray slowly
        while not _alive_nodes(address):
            assert time.monotonic() < deadline, (tmp_path / "start_ray_head.sh.log").read_text()[-3000:]
            assert processes[0].poll() is None, (tmp_path / "start_ray_head.sh.log").read_text()[-3000:]
            time.sleep(2)
        start("start_ray_worker.sh", address, *_node_ports(worker_ports))
        while len(nodes := _alive_nodes(address)) < NODES:
            assert time.monotonic() < deadline + 300, (tmp_path / "start_ray_worker.sh.log").read_text()[-3000:]
            assert processes[1].poll() is None, (tmp_path / "start_ray_worker.sh.log").read_text()[-3000:]
            time.sleep(2)
        yield address, nodes
    finally:
        for process in reversed(processes):
            try:
                os.killpg(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        for process in reversed(processes):
            try:  # a graceful stop takes Ray up to half a minute; the group's SIGKILL below ends the rest
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            try:  # whatever of the node outlived `ray start` (gcs, raylet, workers) goes with its group
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for log in logs:
            log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_poise_trains_across_two_nodes(tiny_assets, tmp_path, two_node_cluster):
    address, nodes = two_node_cluster
    assert len(nodes) == NODES and all(n.get("GPU") == 1.0 for n in nodes), nodes

    # 16 rollouts per step over 2 ranks: 8 per rank, so the per-GPU micro-batches are 8.
    small = [arg for arg in SMALL if "micro_batch_size_per_gpu" not in arg] + [
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=8",
    ]
    run = run_main(
        [
            f"+ray_kwargs.ray_init.address={address}",
            f"trainer.nnodes={NODES}",
            "trainer.n_gpus_per_node=1",
            "trainer.total_training_steps=2",
            "trainer.save_freq=2",
            # The official code's entropy split on decoded text (the R1 recipe's), in a full step of the trainer.
            "poise.entropy_split=official_text",
            f"poise.feature_dump_dir={tmp_path / 'dump'}",
        ],
        tmp_path,
        timeout=840,
        small=small,
    )
    assert run.returncode == 0, run.log[-6000:]
    assert "joining the Ray cluster at" in run.log
    metrics = run.metrics()
    for step in (1, 2):
        assert_finite(metrics[step], ["actor/pg_loss", "actor/grad_norm", "poise/buffer_rows", "timing_s/gen"])
    assert metrics[2]["poise/phase_probe"] == 1.0  # the probe, fitted on step 1, gave step 2's baselines
    assert metrics[2]["poise/buffer_rows"] == 2 * 16
    # The tiny task's responses carry </think> but no <think>: under the official rule on decoded text the
    # reasoning part is empty (its mean 0), where the token-id rule would average the tokens up to </think>.
    from poise_verl.tiny.tokenizer import THINK_END, build_tokenizer
    from poise_verl.verl_ext.feature_dump import load_step_dumps

    think_end = build_tokenizer().convert_tokens_to_ids(THINK_END)
    for step, dump in load_step_dumps(tmp_path / "dump").items():
        reasoning = dump["entropy_features"][:, list(dump["entropy_feature_names"]).index("entropy_reasoning_mean")]
        assert bool((reasoning[dump["valid"]] == 0).all()), (step, reasoning)
        assert any(think_end in ids.tolist() for ids in dump["response_ids"]), step
    # One FSDP shard per rank: the actor ran as two ranks, one on each node's GPU slot.
    shards = sorted(p.name for p in (run.checkpoint_dir / "global_step_2" / "actor").glob("model_world_size_*.pt"))
    assert shards == ["model_world_size_2_rank_0.pt", "model_world_size_2_rank_1.pt"], shards
