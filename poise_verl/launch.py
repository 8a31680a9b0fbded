"""From a composed config to a running verl trainer: the start-up checks (``poise_verl.startup``), the runtime
environment, Ray, verl's TaskRunner, and the run's last lines.

The POISE pieces reach every process through one hook: ``import verl`` imports the modules of the package's
``verl.plugins`` entry points (``pyproject.toml``) in the driver and in each Ray worker, which registers the
estimator, the trainer modes, the feature-capture engine and the CPU platform with its transformers rollout.
Registering selects nothing; the config does, and the environment variables verl reads its selections from
(``VERL_PLATFORM`` from the platform file's ``ray_kwargs.ray_init.runtime_env.env_vars``, ``VERL_ENGINE_VENDOR``
for POISE) reach every Ray process through ``ray.init``'s ``runtime_env``.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import shutil
import sys
import tempfile
import time

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import InterpolationResolutionError

from poise_verl.config import POISE_ENGINE_VENDOR, TrainerMode
from poise_verl.startup.environment import check_hardware, check_plugins_loaded
from poise_verl.startup.rules import validate


def runtime_env_vars(config: DictConfig) -> dict[str, str]:
    """Environment every Ray process needs for this config: the config's own ``ray_init.runtime_env.env_vars``
    (the platform file sets ``VERL_PLATFORM`` there) and, for POISE, the feature-capture engine's vendor key."""
    runtime_env = config.ray_kwargs.get("ray_init", {}).get("runtime_env") or {}
    env = {str(key): str(value) for key, value in (runtime_env.get("env_vars") or {}).items()}
    if config.trainer.v1.trainer_mode in TrainerMode.POISE_MODES:
        env["VERL_ENGINE_VENDOR"] = POISE_ENGINE_VENDOR
    return env


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
    """With ``POISE_VERL_CACHE`` set, build the tiny policy and task there (first use only, about a minute)
    when the run's paths point at them; the shipped assets need nothing."""
    from poise_verl.tiny.paths import tiny_assets_dir

    root = str(tiny_assets_dir())
    val_files = config.data.val_files
    paths = [config.actor_rollout_ref.model.path, config.data.train_files]
    paths += list(val_files) if OmegaConf.is_list(val_files) else [val_files]
    if any(str(path).startswith(root) for path in paths):
        from poise_verl.tiny import ensure_tiny_assets

        ensure_tiny_assets()


def _start_up_problem(error: Exception) -> str:
    """The message of a start-up check that failed: for a failure inside a resolver (``${poise_div:...}``), the
    resolver's own words rather than OmegaConf's wrapper around them."""
    if isinstance(error, InterpolationResolutionError):  # OmegaConf keeps the resolver's error as the context
        inner = error.__cause__ or error.__context__
        if isinstance(inner, ValueError | TypeError):
            error = inner
    return str(error).strip()


def prepare(config: DictConfig) -> DictConfig:
    """Resolve, validate and attach the runtime environment; returns the config verl will run.

    A configuration that cannot work stops here, before Ray, with the same "stopped before starting Ray" list
    the data and model checks print, and no traceback (``PreflightError``).
    """
    from poise_verl.startup import PreflightError

    try:
        OmegaConf.resolve(config)  # only the driver knows poise-verl's resolvers
        ensure_tiny_assets_if_used(config)
        validate(config)
    except (ValueError, TypeError, InterpolationResolutionError) as error:
        raise PreflightError([_start_up_problem(error)]) from error
    check_hardware(config)
    leave_resources_to_cluster(config)
    with open_dict(config):
        # Ray workers do not share the driver's working directory: make the run's paths absolute.
        config.trainer.default_local_dir = os.path.abspath(config.trainer.default_local_dir)
    niceness = config.runtime.get("ray_worker_niceness")
    if niceness is not None:
        # Read by the raylet that ray.init starts from this process; no effect on a cluster that is running already.
        os.environ.setdefault("RAY_worker_niceness", str(niceness))  # validate() checked it
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
    started = time.monotonic()
    config = prepare(config)
    from poise_verl.startup import preflight

    preflight(config)  # data, model, tokenizer, checkpoint and reward files: every problem, before Ray starts
    from verl.trainer.main_ppo import TaskRunnerV1, run_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    check_plugins_loaded()

    validate_config(
        config=config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config)
    )
    from poise_verl.verl_ext.stopping import stop_cleanly

    with workers_temp_dir(config):
        with stop_cleanly(config):  # a failing reward function or Ctrl-C ends the run: Ray first, the message last
            run_ppo(config, task_runner_class=TaskRunnerV1)
        print_summary(config, time.monotonic() - started)


@contextlib.contextmanager
def workers_temp_dir(config: DictConfig):
    """A temporary folder of the run's own for its Ray workers, removed when the run ends, however it ends.

    verl's workers write into the system temporary folder files that nobody removes (``local_mkdir_safe`` leaves a
    ``ckpt_<hash>.lock`` for every checkpoint folder it creates). The workers get ``TMPDIR`` pointing here instead,
    through ``ray.init``'s runtime_env; the driver keeps its own, so Ray's session folder stays where Ray puts it.
    torch's compile cache, which lives in the temporary folder by default, is kept where it was so that it
    outlives the run. A ``TMPDIR`` the config sets for the workers is left alone, and so is a run that joins a
    running cluster (``ray_init.address`` or ``RAY_ADDRESS``): the folder would not exist on its other nodes.
    """
    env_vars = config.ray_kwargs.ray_init.runtime_env.env_vars  # prepare() made them
    if "TMPDIR" in env_vars or cluster_address(config):
        yield None
        return
    folder = tempfile.mkdtemp(prefix="poise-verl-run-")
    with open_dict(config):
        env_vars["TMPDIR"] = folder
        if "TORCHINDUCTOR_CACHE_DIR" not in env_vars and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
            # torch's default (torch._inductor.runtime.cache_dir_utils.default_cache_dir), made explicit.
            try:
                user = re.sub(r'[\\/:*?"<>|]', "_", getpass.getuser())
            except (KeyError, OSError):
                user = f"uid_{os.getuid()}"
            env_vars["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tempfile.gettempdir(), f"torchinductor_{user}")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def print_summary(config: DictConfig, wall_clock_s: float) -> None:
    """The run's last lines: what it learned, where its files are, how to evaluate or resume it. Ray goes first, so
    that no worker's log line lands after them."""
    import ray

    from poise_verl.run_summary import run_summary

    if ray.is_initialized():
        ray.shutdown()

    try:
        summary = run_summary(config, wall_clock_s)
    except Exception as error:  # noqa: BLE001 - the run itself finished; say why there is no summary
        summary = f"poise-verl: the run finished (no summary: {type(error).__name__}: {error})"
    sys.stdout.flush()
    print(summary, file=sys.stderr, flush=True)
