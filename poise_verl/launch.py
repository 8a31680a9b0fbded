"""From a composed config to a running verl trainer: environment, validation, Ray, verl's TaskRunner.

The POISE pieces reach every Ray process through verl's own plugin hook: the modules named in
``VERL_USE_EXTERNAL_MODULES`` are imported by ``import verl`` in the driver and in each worker, which
registers the trainer modes (``poise``, ``dapo``), the feature-capture engine (selected with
``VERL_ENGINE_VENDOR=poise``) and, with ``runtime.platform=cpu``, the CPU platform and the transformers
rollout server. On ``runtime.platform=gpu`` nothing CPU-specific is loaded.
"""

from __future__ import annotations

import os
import time

from omegaconf import DictConfig, OmegaConf, open_dict

from poise_verl.config import POISE_ENGINE_VENDOR, TrainerMode, validate

EXTERNAL_MODULES = ["poise_verl.verl_ext.trainer"]
CPU_MODULES = ["poise_verl.verl_ext.cpu"]


def runtime_env_vars(config: DictConfig) -> dict[str, str]:
    """Environment every Ray process needs for this config."""
    modules = list(EXTERNAL_MODULES)
    env = {}
    if config.trainer.v1.trainer_mode == TrainerMode.POISE:
        modules.append("poise_verl.verl_ext.capture_engine")
        env["VERL_ENGINE_VENDOR"] = POISE_ENGINE_VENDOR
    if config.runtime.platform == "cpu":
        from poise_verl.verl_ext.cpu import CPU_ENV

        modules = CPU_MODULES + modules
        env["VERL_PLATFORM"] = CPU_ENV["VERL_PLATFORM"]
    env["VERL_USE_EXTERNAL_MODULES"] = ",".join(modules)
    return env


def check_hardware(config: DictConfig) -> None:
    """A GPU recipe launched without a GPU stops at once, saying what is missing."""
    if config.runtime.platform != "gpu":
        return
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(
            "This configuration needs NVIDIA GPUs (runtime.platform=gpu, trainer.device="
            f"{config.trainer.device}, {config.trainer.nnodes} node(s) x {config.trainer.n_gpus_per_node} GPU(s)), "
            "but torch sees no CUDA device here. Run it on a GPU node (see docker/README.md), or drop the recipe "
            "to run the tiny CPU default."
        )


def cluster_address(config: DictConfig) -> str | None:
    """The running Ray cluster this launch joins (``ray_kwargs.ray_init.address`` or ``RAY_ADDRESS``), if any."""
    address = config.ray_kwargs.get("ray_init", {}).get("address") or os.environ.get("RAY_ADDRESS")
    return None if address in (None, "", "local") else str(address)


def leave_resources_to_cluster(config: DictConfig) -> None:
    """Joining a running cluster: its nodes declared their CPUs and GPUs at ``ray start``.

    The CPU platform declares logical CPUs and one logical GPU for the local cluster Ray starts itself; Ray
    refuses both when connecting to an existing cluster, so they are dropped here (with a note).
    """
    address = cluster_address(config)
    if address is None:
        return
    ray_init = config.ray_kwargs.ray_init
    dropped = {key: ray_init.get(key) for key in ("num_cpus", "num_gpus") if ray_init.get(key) is not None}
    if dropped:
        with open_dict(config):
            for key in dropped:
                ray_init[key] = None
        print(
            f"poise-verl: joining the Ray cluster at {address}; its nodes declare their own resources, so "
            f"ray_kwargs.ray_init {dropped} is not passed to ray.init",
            flush=True,
        )


def metrics_file(config: DictConfig) -> str:
    """Where verl's ``file`` logger writes: one new JSONL per launch beside the checkpoints.

    verl's FileLogger opens its file with "wb", so a resumed run would erase the metrics of the run it
    resumes; a file per launch keeps both. ``VERL_FILE_LOGGER_PATH`` set by the user wins.
    """
    if os.environ.get("VERL_FILE_LOGGER_PATH"):
        return os.environ["VERL_FILE_LOGGER_PATH"]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join(config.trainer.default_local_dir, "metrics", f"{stamp}-{os.getpid()}.jsonl")


def ensure_tiny_assets_if_used(config: DictConfig) -> None:
    """Build the tiny policy and task (first use only, about 2 minutes) when the run's paths point at them."""
    from poise_verl.tiny.build import default_cache_dir, ensure_tiny_assets

    root = str(default_cache_dir())
    val_files = config.data.val_files
    paths = [config.actor_rollout_ref.model.path, config.data.train_files]
    paths += list(val_files) if OmegaConf.is_list(val_files) else [val_files]
    if any(str(path).startswith(root) for path in paths):
        ensure_tiny_assets()


def prepare(config: DictConfig) -> DictConfig:
    """Resolve, validate and attach the runtime environment; returns the config verl will run."""
    OmegaConf.resolve(config)  # only the driver knows poise-verl's resolvers
    ensure_tiny_assets_if_used(config)
    validate(config)
    check_hardware(config)
    leave_resources_to_cluster(config)
    with open_dict(config):
        # Ray workers do not share the driver's working directory: make the run's paths absolute.
        config.trainer.default_local_dir = os.path.abspath(config.trainer.default_local_dir)
    env = runtime_env_vars(config)
    env["VERL_FILE_LOGGER_PATH"] = metrics_file(config)
    os.makedirs(os.path.dirname(env["VERL_FILE_LOGGER_PATH"]), exist_ok=True)
    os.environ.update(env)  # the driver imports verl after this
    with open_dict(config):
        # Every Ray process gets these through ray.init's runtime_env. (A local cluster would also inherit the
        # driver's environment; the nodes of a cluster started with `ray start` do not.) Assigned key by key:
        # DictConfig.setdefault returns a detached copy, so writing into its result would be lost.
        ray_init = config.ray_kwargs.ray_init
        if ray_init.get("runtime_env") is None:
            ray_init.runtime_env = {}
        if ray_init.runtime_env.get("env_vars") is None:
            ray_init.runtime_env.env_vars = {}
        for key, value in env.items():
            ray_init.runtime_env.env_vars[key] = value
    return config


def run(config: DictConfig) -> None:
    config = prepare(config)
    from poise_verl.preflight import preflight

    preflight(config)  # data, model, tokenizer, checkpoint and reward files: every problem, before Ray starts
    from verl.trainer.main_ppo import TaskRunnerV1, run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    import poise_verl.verl_ext.trainer  # noqa: F401  registers the trainer modes in the driver too

    validate_config(
        config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config)
    )
    from poise_verl.verl_ext.reward_guard import stop_cleanly

    with stop_cleanly(config):  # a failing reward function or Ctrl-C ends the run: Ray first, the message last
        run_ppo(config, task_runner_class=TaskRunnerV1)
