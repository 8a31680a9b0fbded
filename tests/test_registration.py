"""`algorithm.adv_estimator=poise` resolves through verl's own registry, in the driver and in Ray workers,
and the registered estimator is POISE's cross-rollout construction."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from verl.trainer.ppo.core_algos import compute_rloo_outcome_advantage, get_adv_estimator_fn

import poise_verl  # noqa: F401  (the import under test)
from poise_verl.core.cross_rollout import cross_rollout_advantages
from poise_verl.verl_ext.step_predictions import StepPredictions, step_predictions


def _estimate(token_rewards, mask, uids, predictions, from_probe=None, valid=None):
    """The registered estimator as verl's stage calls it, with the step's predictions handed over as the POISE
    trainer hands them (every row from the probe and valid unless said otherwise)."""
    rows = len(uids)
    step = StepPredictions(
        np.asarray(uids), predictions,
        torch.ones(rows, dtype=torch.bool) if from_probe is None else from_probe,
        torch.ones(rows, dtype=torch.bool) if valid is None else valid,
    )
    with step_predictions(step):
        return get_adv_estimator_fn("poise")(
            token_level_rewards=token_rewards, response_mask=mask, config=None, index=uids
        )


def _loop_reference(rewards, predictions, uids):
    out = []
    for i in range(len(uids)):
        siblings = [predictions[j] for j in range(len(uids)) if j != i and uids[j] == uids[i]]
        out.append(rewards[i] - sum(siblings) / len(siblings))
    return torch.tensor(out)


def _random_batch(seed, num_groups=7, max_n=4, length=5):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, max_n + 1, size=num_groups)
    uids = np.array([f"u{g}" for g, n in enumerate(sizes) for _ in range(n)], dtype=object)
    perm = rng.permutation(len(uids))  # siblings anywhere in the batch
    uids = uids[perm]
    bs = len(uids)
    rewards = torch.tensor(rng.integers(0, 2, size=bs), dtype=torch.float32)
    lengths = rng.integers(1, length + 1, size=bs)
    mask = torch.tensor(np.arange(length)[None, :] < lengths[:, None], dtype=torch.float32)
    token_rewards = torch.zeros(bs, length)
    token_rewards[torch.arange(bs), torch.tensor(lengths - 1)] = rewards  # outcome reward on the last token
    predictions = torch.tensor(rng.uniform(0, 1, size=bs), dtype=torch.float32)
    return uids, rewards, token_rewards, mask, predictions


@pytest.mark.parametrize("seed", range(5))
def test_registered_estimator_is_the_cross_rollout_construction(seed):
    uids, rewards, token_rewards, mask, predictions = _random_batch(seed)
    advantages, returns = _estimate(token_rewards, mask, uids, predictions)
    expected = _loop_reference(rewards.tolist(), predictions.tolist(), uids.tolist())
    assert advantages.shape == token_rewards.shape
    torch.testing.assert_close(advantages, expected.unsqueeze(-1) * mask, atol=1e-6, rtol=0)
    torch.testing.assert_close(returns, advantages)
    # The pure-torch core gives the same thing.
    core = cross_rollout_advantages(rewards, predictions, uids, mask)
    torch.testing.assert_close(advantages, core, atol=1e-6, rtol=0)


def test_rewards_as_baselines_is_verls_rloo():
    """Where the trainer does not use the probe (bootstrap steps, a domain without a fitted probe), the estimator
    puts each row's own reward in its place: RLOO, as verl computes it."""
    uids, _, token_rewards, mask, predictions = _random_batch(11)
    advantages, _ = _estimate(token_rewards, mask, uids, predictions, from_probe=torch.zeros(len(uids), dtype=bool))
    rloo, _ = compute_rloo_outcome_advantage(token_level_rewards=token_rewards, response_mask=mask, index=uids)
    torch.testing.assert_close(advantages, rloo, atol=1e-6, rtol=0)


def test_a_rollout_without_a_sibling_gets_no_gradient():
    """A prompt whose other generations failed arrives with one rollout: no sibling baseline, advantage 0."""
    uids = np.array(["a", "b", "a"], dtype=object)
    advantages, _ = _estimate(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]), torch.ones(3, 2), uids,
                              torch.tensor([0.2, 0.9, 0.6]), valid=torch.tensor([True, False, True]))
    torch.testing.assert_close(advantages, torch.tensor([[0.4, 0.4], [0.0, 0.0], [-0.2, -0.2]]))


def test_missing_misaligned_or_nan_predictions_are_errors():
    uids = np.array(["a", "a"], dtype=object)
    with pytest.raises(ValueError, match="no probe predictions for this batch"):
        get_adv_estimator_fn("poise")(token_level_rewards=torch.ones(2, 2), response_mask=torch.ones(2, 2), index=uids)
    with pytest.raises(RuntimeError, match="uids differ"):
        _misaligned()
    with pytest.raises(ValueError, match="uid='a'"):
        _estimate(torch.ones(2, 2), torch.ones(2, 2), uids, torch.tensor([0.5, float("nan")]))


def _misaligned():
    """The trainer predicted for rows a, b; verl's stage hands the estimator b, a."""
    step = StepPredictions(np.array(["a", "b"], dtype=object), torch.tensor([0.5, 0.5]),
                           torch.ones(2, dtype=torch.bool), torch.ones(2, dtype=torch.bool))
    with step_predictions(step):
        get_adv_estimator_fn("poise")(token_level_rewards=torch.ones(2, 2), response_mask=torch.ones(2, 2),
                                      index=np.array(["b", "a"], dtype=object))


PLAIN_IMPORT = """
import json, os, sys
import verl  # nothing else: verl loads the package's verl.plugins entry points, as in every Ray worker
from omegaconf import OmegaConf
from verl.trainer.ppo.core_algos import get_adv_estimator_fn
from verl.checkpoint_engine import CheckpointEngineRegistry
from verl.trainer.ppo.v1.trainer_base import get_trainer_cls
from verl.utils.device import get_device_name
from verl.workers.engine.base import EngineRegistry
from verl.workers.rollout.replica import get_rollout_replica_class

out = {"estimator": get_adv_estimator_fn("poise").__module__, "device": get_device_name()}
out["replica"] = get_rollout_replica_class("hf").__name__
out["modes"] = {}
for path in sorted(os.listdir(os.environ["ALGO_DIR"])):
    mode = OmegaConf.load(os.path.join(os.environ["ALGO_DIR"], path)).trainer.v1.trainer_mode
    out["modes"][mode] = get_trainer_cls(mode).__name__
out["cpu_engine_keys"] = sorted(str(k) for k in EngineRegistry._engines["language_model"]["fsdp2"] if "cpu" in str(k))
os.environ["VERL_ENGINE_VENDOR"] = "poise"  # read at each lookup
out["vendor_engine"] = EngineRegistry.get_engine_cls("language_model", "fsdp2").__name__
from verl.workers.engine.fsdp import transformer_impl
out["offload_policy"] = transformer_impl.CPUOffloadPolicy.__module__
out["checkpoint_engines"] = sorted(CheckpointEngineRegistry._registry)
out["hccl_error"] = str(CheckpointEngineRegistry._import_errors.get("hccl_checkpoint_engine", ""))
out["vllm_imported"] = "vllm" in sys.modules
print("RESULT" + json.dumps(out))
"""


def _plain_import_verl(**env_vars: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERL_")}
    env.update(env_vars, ALGO_DIR=os.path.join(os.path.dirname(__file__), "..", "hydra_configs", "algo"))
    out = subprocess.run(
        [sys.executable, "-c", PLAIN_IMPORT], capture_output=True, text=True, env=env, timeout=180, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.split("RESULT", 1)[1])


def test_plain_import_verl_registers_everything_through_the_entry_points():
    """A process that only imports verl (as every Ray worker does) finds every piece the configs name: the
    estimator, each algo file's trainer mode, the capture engine, the CPU platform and the hf rollout."""
    cpu = _plain_import_verl(VERL_PLATFORM="cpu")
    assert cpu["estimator"] == "poise_verl.verl_ext.adv_estimator"
    assert cpu["device"] == "cpu"
    assert cpu["replica"] == "HFReplica"
    algo_files = os.listdir(os.path.join(os.path.dirname(__file__), "..", "hydra_configs", "algo"))
    assert len(cpu["modes"]) == len(algo_files), cpu["modes"]  # each algo file's mode resolved (else: an error)
    assert cpu["vendor_engine"] == "PoiseFSDPEngine"
    assert "cpu" in cpu["cpu_engine_keys"]  # verl's FSDP engines, for device cpu
    assert cpu["offload_policy"] == "poise_verl.verl_ext.cpu.platform"  # unpinned host memory on the CPU
    # The weight syncs: the CPU platform's gloo engine and verl's naive one; verl's Ascend (HCCL) engine is not
    # loaded, whose module imports vLLM (about 1 CPU-second in every process that imports verl's engines).
    assert {"gloo", "naive"} <= set(cpu["checkpoint_engines"]), cpu["checkpoint_engines"]
    assert "hccl" not in cpu["checkpoint_engines"]
    assert "is not loaded on the CPU platform (VERL_PLATFORM=cpu)" in cpu["hccl_error"], cpu["hccl_error"]
    assert not cpu["vllm_imported"]


def test_a_process_not_on_the_cpu_platform_keeps_verls_engines_untouched():
    """On a GPU node the CPU plugin registers names only: no engines for device cpu, verl's own offload policy."""
    gpu = _plain_import_verl()
    assert gpu["device"] == "cuda"  # verl's own fallback, as without the plugin
    assert "cpu" not in gpu["cpu_engine_keys"], gpu["cpu_engine_keys"]
    assert gpu["offload_policy"].startswith("torch."), gpu["offload_policy"]
    # verl imports every weight sync's module, the Ascend one included (which imports vLLM where it is installed).
    assert "CPU platform" not in gpu["hccl_error"], gpu["hccl_error"]
    assert gpu["vllm_imported"] == (importlib.util.find_spec("vllm") is not None)


# verl's registries and the modules of ours that go into them: a process loading the entry points imports none.
REGISTRY_MODULES = [
    "verl.trainer.ppo.core_algos",
    "verl.trainer.ppo.v1",
    "verl.workers.engine",
    "poise_verl.verl_ext.adv_estimator",
    "poise_verl.verl_ext.capture_engine",
    "poise_verl.verl_ext.trainer.poise",
    "poise_verl.verl_ext.cpu.hf_rollout",
    "poise_verl.verl_ext.cpu.hf_server",
]


def _imported_after(code: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERL_")}
    env["VERL_PLATFORM"] = "cpu"
    probe = f"import json, sys\n{code}\nprint('RESULT' + json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=180, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.split("RESULT", 1)[1])


def test_loading_the_entry_points_imports_no_registry_until_it_is_used():
    """Every Ray process imports verl and with it the entry points; the load balancer, the reward workers and the
    TransferQueue actors never look up an estimator, a trainer mode or an engine, so they must not pay for
    importing verl's algorithm, trainer and engine modules (about 4 s of CPU each, measured) or ours."""
    loaded = _imported_after("import verl")
    assert "poise_verl.verl_ext.cpu" in loaded and "poise_verl.verl_ext.trainer" in loaded  # the entry points ran
    assert not [name for name in REGISTRY_MODULES if name in loaded]
    # Importing one of the trainer modules directly (verl's registry is imported from inside it) registers all.
    used = _imported_after(
        "import poise_verl.verl_ext.trainer.checked_sync\n"
        "from verl.trainer.ppo.v1 import get_trainer_cls\n"
        "assert get_trainer_cls('poise_colocate_async').__name__ == 'PoiseColocateAsyncTrainer'"
    )
    assert set(REGISTRY_MODULES) - {"poise_verl.verl_ext.cpu.hf_rollout", "poise_verl.verl_ext.cpu.hf_server"} <= set(used)


def test_the_probe_workers_import_no_verl():
    """The replay buffer and the probe worker are Ray actors of pure torch: their module imports no verl."""
    loaded = _imported_after("import poise_verl.verl_ext.probe_worker")
    assert "verl" not in loaded and "torch" in loaded


def test_estimator_resolves_inside_a_ray_worker():
    import tempfile

    import ray

    # A short temp dir: Ray's socket paths must stay under the 107-character Unix limit.
    # Workers at the niceness of other work, as the CPU platform's launcher sets them (Ray's 15 starves them on
    # a busy machine).
    ray.init(num_cpus=1, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="ray"),
             _system_config={"worker_niceness": 0})
    try:

        @ray.remote
        def lookup():
            import verl  # noqa: F401
            from verl.trainer.ppo.core_algos import get_adv_estimator_fn

            return get_adv_estimator_fn("poise").__name__

        assert ray.get(lookup.remote(), timeout=120) == "compute_poise_outcome_advantage"
    finally:
        ray.shutdown()
