"""A GPU recipe's run on a real two-node Ray cluster (loopback), in one launch: the repo's multi-node scripts, the
GPU recipe's batch layout across two ranks, and a generation request that fails every step.

**The cluster.** `recipes/multinode/start_ray_head.sh` and `start_ray_worker.sh` each start a Ray node on 127.0.0.1
with one logical GPU (NUM_GPUS=1: Ray's GPU count is a label; on this CPU machine the CPU platform runs the work),
so the two nodes are separate raylets with separate resources on one machine. `python -m poise_verl.main` then
joins that cluster (`ray_kwargs.ray_init.address`) with `trainer.nnodes=2 trainer.n_gpus_per_node=1`: verl's
resource pool needs one GPU on each node, so the actor worker group has two ranks, one per node, and FSDP2
shards the policy over them (gloo). The checkpoint holds one shard per rank. Nothing here can stop other Ray
clusters on the machine: the nodes run with `--block` in their own process group, which is what the teardown
signals (never `ray stop`, which stops every cluster of the user).

**The batch layout.** A GPU run (`+recipe=qwen3_4b`) packs each micro-batch into one row
(`use_remove_padding=true`) and sizes micro-batches by tokens (`use_dynamic_bsz=true`), which reorders the rows
into micro-batches of different row counts and back, and splits the batch across the ranks. The CPU default
switches all of this off; this launch switches it on, on the tiny default with prompts padded by a random number
of leading spaces (prompt lengths vary as much as response lengths), a token budget of a few rows per micro-batch
on each rank, and `poise.feature_dump_dir`, which writes each step's rows as the trainer read them. For every row
of the first step (the shipped weights, before any update) the pooled prompt and response states and the entropy
statistics equal a plain transformers forward of that row's own tokens (`capture_reference.py`, no verl, no
packing); every uid has its two rows with the same prompt, and the advantages verl's stage wrote pair each row
with its sibling. A step's baselines come from probes fitted on earlier steps only (the advantages are fixed
before the probes see the batch), and the run logs to wandb in offline mode next to the metrics file. Ulysses
sequence parallelism is not among them: verl 0.9.1 makes its attention sequence-parallel by patching
flash-attention only, which does not run on a CPU; under sdpa each rank attends within its own slice, which the
start-up checks refuse (docs/FIDELITY.md, "Different on purpose").

**A failed generation costs its rollout, never the run** (issue 33, item 1). verl keeps a prompt group whose
other agent-loop sessions failed with the rollouts that did finish: a request the server could not serve (the
session raises; verl marks the group failed and, under the sync trainer, still trains what finished), or a
session with no output (verl's "Empty output"; the group finishes one rollout short). POISE used to stop the
whole run on such a group (``group uid=... has 1 rollout(s)``). A rollout left without a sibling gets advantage
0 and stays out of the replay buffer; ``poise/lone_rollouts`` counts them and the log says it once. The fault
comes from an agent loop plugged in through verl's own agent-loop config (``flaky_agent_loop.py``): the second
rollout of one prompt fails in every training step. test_async_trainer.py runs the same agent loop under the
colocated asynchronous trainer.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from capture_reference import reference_features
from e2e_runner import REPO, SMALL, assert_finite, composed_config, run_main, step_line, wandb_history
from flaky_agent_loop import failures, flaky_env
from flaky_agent_loop import overrides as flaky_overrides
from step_dumps import assert_rows_pair_with_their_siblings, replay_probe_predictions

from poise_verl.verl_ext.feature_dump import load_step_dumps

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # above run_main's hang guard and the cluster start

SCRIPTS = REPO / "recipes" / "multinode"
NODES = 2
# Tokens per micro-batch, per rank: a tiny row is 15-40 tokens (about 26 on average), so a rank's 16 rows fill 3
# or more micro-batches, a count that does not divide the rows: the micro-batches differ in row count. Not less
# than 128: the rows verl adds to pad a batch (verl/trainer/ppo/padding_utils.py) are 128 tokens long.
TOKENS = 128
ROLLOUTS = 32  # a step's rollouts: 16 per rank
LAYOUT = [
    "actor_rollout_ref.model.use_remove_padding=true",
    "actor_rollout_ref.actor.use_dynamic_bsz=true",
    f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu={TOKENS}",
    "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true",
    f"actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu={TOKENS}",
    "actor_rollout_ref.ref.log_prob_use_dynamic_bsz=true",
    f"actor_rollout_ref.ref.log_prob_max_token_len_per_gpu={TOKENS}",
]
STEPS = 3
FEATURE_TOLERANCE = 1e-5  # float32 on both sides; the pooled states are O(1) (mean |x| about 2)
ANNOUNCED = "came without a sibling"


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


def _wait_until_started(log: Path, process: subprocess.Popen, deadline: float) -> None:
    """Until `ray start` says the node runs ("Ray runtime started."), read from its log: no Ray driver per check."""
    while "Ray runtime started." not in log.read_text():
        assert time.monotonic() < deadline and process.poll() is None, log.read_text()[-3000:]
        time.sleep(0.5)


@contextlib.contextmanager
def two_node_cluster(tmp_path: Path):
    """A head and a worker node started with the repo's scripts; yields (address, the live nodes' resources).

    Ray 2.60's `ray start` turns token authentication on (token in ~/.ray/auth_token, made when missing); a driver
    joining with an explicit address must say so too: the caller sets RAY_AUTH_MODE=token, which reaches the nodes,
    the probe below and the trainer's driver (run_main passes this environment on). The nodes' workers import the
    flaky agent loop from this folder (flaky_env's PYTHONPATH)."""
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
        PYTHONUNBUFFERED="1",  # `ray start`'s lines reach its log as they are said (_wait_until_started)
        **flaky_env(),
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
        deadline = time.monotonic() + 300  # generous: a loaded 2-core machine starts Ray slowly
        start("start_ray_head.sh", *head_only, *_node_ports(head_ports))
        _wait_until_started(tmp_path / "start_ray_head.sh.log", processes[0], deadline)
        start("start_ray_worker.sh", address, *_node_ports(worker_ports))
        _wait_until_started(tmp_path / "start_ray_worker.sh.log", processes[1], deadline + 300)
        while len(nodes := _alive_nodes(address)) < NODES:  # each ask is a Ray driver process: asked once started
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
            try:  # a graceful stop can take Ray half a minute; the group's SIGKILL below ends the rest
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            try:  # whatever of the node outlived `ray start` (gcs, raylet, workers) goes with its group
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for log in logs:
            log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def spaced_data(tiny_assets, tmp_path_factory):
    """The tiny training prompts, every other one behind 1-8 leading spaces (a token each): prompts of 6 to 15
    tokens. The policy never saw spaces and gets almost every spaced prompt wrong; the unspaced half keeps the
    rewards varied, so the probe has something to fit."""
    frame = pd.read_parquet(tiny_assets / "data" / "train.parquet").head(4096).copy()
    rng = random.Random(0)
    frame["prompt"] = [
        [{**message, "content": " " * (rng.randint(1, 8) if row % 2 else 0) + message["content"]}
         for message in messages]
        for row, messages in enumerate(frame["prompt"])
    ]
    path = tmp_path_factory.mktemp("layout_data") / "spaced.parquet"
    frame.to_parquet(path)
    return path


@pytest.fixture(scope="module")
def launch(tiny_assets, spaced_data, tmp_path_factory):
    """The launch on the two-node cluster: (its config, its step dumps, the run, the cluster's nodes)."""
    workdir = tmp_path_factory.mktemp("two_nodes")
    # 32 rollouts per step over 2 ranks: 16 per rank (the per-GPU micro-batch sizes below only pass verl's checks;
    # the token budget sizes the micro-batches).
    small = [arg for arg in SMALL if "micro_batch_size_per_gpu" not in arg and "rollouts_per_step" not in arg] + [
        f"budget.rollouts_per_step={ROLLOUTS}",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=16",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=16",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=16",
    ]
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("RAY_AUTH_MODE", "token")
        with two_node_cluster(workdir) as (address, nodes):
            run = run_main(
                [
                    f"+ray_kwargs.ray_init.address={address}",
                    f"trainer.nnodes={NODES}",
                    "trainer.n_gpus_per_node=1",
                    *LAYOUT,
                    f"trainer.total_training_steps={STEPS}",
                    "trainer.save_freq=2",
                    "trainer.val_before_train=false",
                    "trainer.test_freq=-1",
                    f"data.train_files={spaced_data}",
                    f"poise.feature_dump_dir={workdir / 'dump'}",
                    "trainer.logger=[console,file,wandb]",
                    # The trainer runs on the cluster's nodes, which do not inherit this driver's environment:
                    # wandb's settings reach them as a cluster user sets them, through ray.init's runtime_env.
                    "+ray_kwargs.ray_init.runtime_env.env_vars.WANDB_MODE=offline",
                    f"+ray_kwargs.ray_init.runtime_env.env_vars.WANDB_DIR={workdir}",
                    *flaky_overrides(workdir),
                ],
                workdir,
                timeout=900,
                small=small,
                env=flaky_env(),
            )
    assert run.returncode == 0, run.log[-6000:]
    return composed_config(workdir), load_step_dumps(workdir / "dump"), run, nodes


@pytest.fixture(scope="module")
def policy(tiny_assets):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_assets / "model", dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_assets / "model")


def test_poise_trains_across_two_nodes(launch):
    config, _, run, nodes = launch
    assert len(nodes) == NODES and all(n.get("GPU") == 1.0 for n in nodes), nodes
    assert (config.trainer.nnodes, config.trainer.n_gpus_per_node) == (NODES, 1)
    assert "joining the Ray cluster at" in run.log
    metrics = run.metrics()
    assert sorted(metrics) == list(range(1, STEPS + 1))
    for step in metrics:
        assert_finite(metrics[step], ["actor/pg_loss", "actor/grad_norm", "poise/buffer_rows", "timing_s/gen"])
    # The probe, fitted on step 1, gave the baselines of step 2's rollouts, all but the lone one (which has none).
    assert metrics[2]["poise/phase_probe"] == pytest.approx((ROLLOUTS - 2) / (ROLLOUTS - 1))
    # One FSDP shard per rank: the actor ran as two ranks, one on each node's GPU slot.
    shards = sorted(p.name for p in (run.checkpoint_dir / "global_step_2" / "actor").glob("model_world_size_*.pt"))
    assert shards == ["model_world_size_2_rank_0.pt", "model_world_size_2_rank_1.pt"], shards


def test_every_row_gets_the_features_of_its_own_tokens(launch, policy):
    config, steps, _, _ = launch
    model, tokenizer = policy
    think = tokenizer.convert_tokens_to_ids(config.poise.end_of_thinking_token)
    record = steps[1]  # the old-log-prob pass of step 1 runs the shipped weights
    assert list(record["entropy_feature_names"]) == [
        "entropy_mean", "entropy_reasoning_mean", "entropy_answer_mean"
    ]
    rollouts = (record["valid"] | record["lone"]).nonzero()[:, 0].tolist()  # every row but verl's padding
    assert len(rollouts) == ROLLOUTS - 1  # less the request that failed
    prompt_lengths = {len(record["prompt_ids"][row]) for row in rollouts}
    response_lengths = {len(record["response_ids"][row]) for row in rollouts}
    assert len(prompt_lengths) >= 4 and len(response_lengths) >= 3, (prompt_lengths, response_lengths)
    assert any(think in record["response_ids"][row].tolist() for row in rollouts)  # the </think> cut is exercised
    worst = dict.fromkeys(("prompt", "response", "entropy"), 0.0)
    for row in rollouts:
        expected = reference_features(
            model, record["prompt_ids"][row], record["response_ids"][row], int(config.poise.probe_layer),
            int(config.poise.pool_last_k), think, float(config.actor_rollout_ref.rollout.temperature),
        )
        for part, got in (
            ("prompt", record["prompt_features"][row]),
            ("response", record["response_features"][row]),
            ("entropy", record["entropy_features"][row]),
        ):
            worst[part] = max(worst[part], float((getattr(expected, part) - got).abs().max()))
    assert max(worst.values()) < FEATURE_TOLERANCE, worst


def test_the_layout_spans_micro_batches_of_different_row_counts(launch):
    """verl's own split of each rank's rows at this token budget: several micro-batches, rows reordered."""
    from tensordict import TensorDict
    from verl.utils.seqlen_balancing import rearrange_micro_batches

    config, steps, _, _ = launch
    ranks = int(config.trainer.nnodes) * int(config.trainer.n_gpus_per_node)
    assert ranks == 2
    record = steps[1]
    lengths = [len(p) + len(r) for p, r in zip(record["prompt_ids"], record["response_ids"], strict=True)]
    per_rank = len(lengths) // ranks  # verl's dispatch gives each rank a contiguous share of the batch
    sizes = {}
    for rank in range(ranks):
        ids = [torch.zeros(n, dtype=torch.long) for n in lengths[rank * per_rank : (rank + 1) * per_rank]]
        rows = TensorDict({"input_ids": torch.nested.as_nested_tensor(ids, layout=torch.jagged)}, batch_size=len(ids))
        _, order = rearrange_micro_batches(rows, max_token_len=TOKENS)
        sizes[rank] = [len(indices) for indices in order]
        assert len(sizes[rank]) >= 3, sizes
        assert [i for indices in order for i in indices] != list(range(len(ids))), (rank, order)
    assert any(len(set(counts)) >= 2 for counts in sizes.values()), sizes  # micro-batches of different row counts


def test_rows_are_matched_to_their_uid_and_sibling(launch):
    config, steps, _, _ = launch
    assert_rows_pair_with_their_siblings(config, steps)
    # After the bootstrap step the probe baselines every paired row.
    assert all(bool(record["from_probe"][record["valid"]].all()) for step, record in steps.items() if step > 1)


def test_each_steps_predictions_come_from_probes_fitted_on_earlier_steps_only(launch):
    """Step t's predictions equal a probe refit, offline, on the replay buffer as it stood after step t - 1:
    the probes had not seen step t's rewards when its advantages were fixed. A probe that had (the refit moved
    ahead of the prediction) predicts measurably differently, which the second comparison shows."""
    config, steps, _, _ = launch
    compared, largest_peeking_difference = replay_probe_predictions(config, steps)
    assert compared == STEPS - 1  # every step after the first had a fitted probe
    # The comparison can tell the two orders apart: a probe that had seen the step predicts measurably otherwise.
    assert largest_peeking_difference > 1e-3, largest_peeking_difference


def test_wandb_holds_the_metrics_the_metrics_file_holds(launch):
    """`trainer.logger=[console,file,wandb]` with `WANDB_MODE=offline` (as the README says it works without a
    network) writes an offline run with the same POISE metrics as the metrics file."""
    _, _, run, _ = launch
    (wandb_run,) = (run.checkpoint_dir.parent / "wandb").glob("offline-run-*")
    logged, metrics = wandb_history(wandb_run), run.metrics()
    for step in range(2, STEPS + 1):
        for key in ("poise/probe_pearson", "poise/buffer_rows", "poise/phase_probe", "poise/lone_rollouts"):
            assert logged[step][key] == pytest.approx(metrics[step][key]), (step, key)


def test_a_failed_generation_costs_its_rollout_not_the_run(launch):
    """Each step loses one rollout (a request that raised on odd steps, an empty output on even ones): the run
    trains on; the rollout left without its sibling gets advantage 0 and stays out of the replay buffer."""
    _, steps, run, _ = launch
    failed = failures(run.log)
    assert {1: "raised", 2: "returned nothing", 3: "raised"}.items() <= failed.items(), failed
    assert "injected generation failure (step 1)" in run.log  # verl logged the session's error and carried on
    # Said once: as often as the line of step 1 (both nodes' log monitors read the one session folder the two
    # nodes share on this machine, so the driver may print a worker's line twice).
    assert run.log.count(ANNOUNCED) == len(re.findall(step_line(1), run.log)) >= 1, run.log.count(ANNOUNCED)
    metrics = run.metrics()
    for step in range(1, STEPS + 1):
        assert_finite(metrics[step], ["actor/pg_loss", "training/adv_std", "poise/lone_rollouts", "poise/buffer_rows"])
        assert metrics[step]["poise/lone_rollouts"] == 1.0, (step, metrics[step]["poise/lone_rollouts"])
        # The step's rollouts, less the one that failed (verl pads the batch back with a padding row) and the lone
        # one it left: the paired rows reach the buffer.
        assert metrics[step]["poise/buffer_rows"] == step * (ROLLOUTS - 2)
    for step, record in steps.items():
        lone = record["lone"]
        assert int(lone.sum()) == 1, step
        row = int(lone.nonzero()[0, 0])
        assert not bool(record["valid"][row])  # out of the probe's rows and of every group
        assert torch.count_nonzero(record["advantages"][row]) == 0  # no policy gradient
        assert int(record["valid"].sum()) == ROLLOUTS - 2, step  # the paired rows train as before (checked above)
        assert sum(1 for uid in record["uids"] if uid == record["uids"][row]) == 1  # its sibling never arrived
