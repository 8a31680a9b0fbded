"""The launcher hands every Ray process the environment verl reads its selections from through ray.init's
runtime_env, and joins clusters.

A local Ray cluster inherits the driver's environment, so a launcher that only set os.environ would pass
every single-node test and still fail on a cluster started with `ray start` (whose nodes never see the
driver's environment). These tests read what `prepare` leaves in the config that verl passes to ray.init.
POISE's modules themselves load through the package's entry points (tests/test_registration.py).
"""

from __future__ import annotations

import os

import pytest
from hydra import compose, initialize_config_dir

from poise_verl.config import register_resolvers
from poise_verl.launch import prepare
from poise_verl.tiny.paths import RECIPE_VERSION

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "hydra_configs")


@pytest.fixture
def prepared(tmp_path, monkeypatch):
    """prepare(config) for the CPU default with OVERRIDES, the process environment restored afterwards."""
    built = tmp_path / "cache" / f"tiny-v{RECIPE_VERSION}"
    built.mkdir(parents=True)
    (built / "build_info.json").write_text("{}")  # reads as built: nothing is trained here
    monkeypatch.setenv("POISE_VERL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    register_resolvers()
    saved = dict(os.environ)

    def run(*overrides: str):
        with initialize_config_dir(config_dir=os.path.abspath(CONFIG_DIR), version_base=None):
            config = compose("poise_trainer", overrides=[f"trainer.default_local_dir={tmp_path}/ckpt", *overrides])
        return prepare(config)

    yield run
    os.environ.clear()
    os.environ.update(saved)


def test_runtime_env_selects_the_cpu_platform_and_the_capture_engine(prepared):
    from poise_verl.verl_ext.cpu import platform_env_vars

    config = prepared()
    env_vars = config.ray_kwargs.ray_init.runtime_env.env_vars
    assert env_vars["VERL_ENGINE_VENDOR"] == "poise"
    assert env_vars["VERL_PLATFORM"] == "cpu"
    assert env_vars["VERL_FILE_LOGGER_PATH"].endswith(".jsonl")
    # The platform file is the one source of the CPU environment; no module list travels (entry points load them).
    assert platform_env_vars().items() <= dict(env_vars).items()
    assert "VERL_USE_EXTERNAL_MODULES" not in env_vars
    assert all(isinstance(value, str) for value in env_vars.values())
    # The driver gets the same environment before it imports verl.
    assert all(os.environ[key] == value for key, value in env_vars.items())
    # A local cluster: the CPU platform's logical resources are passed on.
    assert config.ray_kwargs.ray_init.num_cpus == 32 and config.ray_kwargs.ray_init.num_gpus == 1


def test_dapo_and_grpo_do_not_select_the_capture_engine(prepared):
    for algo in ("dapo", "grpo"):
        env_vars = prepared(f"algo={algo}").ray_kwargs.ray_init.runtime_env.env_vars
        assert "VERL_ENGINE_VENDOR" not in env_vars
        assert env_vars["VERL_PLATFORM"] == "cpu"


def test_an_environment_value_from_the_command_line_reaches_ray_as_a_string(prepared):
    env_vars = prepared("ray_kwargs.ray_init.runtime_env.env_vars.OMP_NUM_THREADS=2").ray_kwargs.ray_init.runtime_env.env_vars
    assert env_vars["OMP_NUM_THREADS"] == "2"


@pytest.mark.parametrize("how", ["config", "environment"])
def test_joining_a_cluster_leaves_resources_to_its_nodes(prepared, monkeypatch, capsys, how):
    if how == "config":
        config = prepared("+ray_kwargs.ray_init.address=10.0.0.1:6379")
    else:
        monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
        config = prepared()
    assert config.ray_kwargs.ray_init.num_cpus is None and config.ray_kwargs.ray_init.num_gpus is None
    assert "joining the Ray cluster at 10.0.0.1:6379" in capsys.readouterr().out
    assert config.ray_kwargs.ray_init.runtime_env.env_vars["VERL_PLATFORM"] == "cpu"


@pytest.mark.parametrize("how", ["local", "config", "environment"])
def test_the_workers_temp_folder_is_the_runs_own_only_on_a_local_cluster(prepared, monkeypatch, how):
    """verl's workers leave lock files in their temp folder: on a cluster this launch starts they get one of the run's
    own, removed when the run ends; a run joining a running cluster leaves theirs alone (the folder would not exist on
    the other nodes), whether the address comes from the config or from RAY_ADDRESS."""
    from poise_verl.launch import workers_temp_dir

    if how == "config":
        config = prepared("+ray_kwargs.ray_init.address=10.0.0.1:6379")
    elif how == "environment":
        monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
        config = prepared()
    else:
        config = prepared("+ray_kwargs.ray_init.address=local")
    env_vars = config.ray_kwargs.ray_init.runtime_env.env_vars
    with workers_temp_dir(config) as folder:
        if how == "local":
            assert env_vars["TMPDIR"] == folder and os.path.isdir(folder)
            cache = env_vars.get("TORCHINDUCTOR_CACHE_DIR") or os.environ["TORCHINDUCTOR_CACHE_DIR"]
            assert not cache.startswith(folder)  # the compile cache outlives the run
        else:
            assert folder is None and "TMPDIR" not in env_vars
    if folder is not None:
        assert not os.path.exists(folder)


def test_a_launch_whose_verl_skipped_the_plugins_stops_with_the_reason():
    """verl swallows plugin import errors and honours VERL_USE_EXTERNAL_PLUGINS; the launcher says so instead of
    failing later inside a worker with an unknown estimator or platform."""
    import subprocess
    import sys

    code = "from poise_verl.startup.environment import check_plugins_loaded; check_plugins_loaded(); print('loaded')"
    for policy, loaded in (("none", False), ("auto", True)):
        env = dict(os.environ, VERL_USE_EXTERNAL_PLUGINS=policy)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180, check=False)
        if loaded:
            assert out.returncode == 0 and "loaded" in out.stdout, out.stderr[-2000:]
        else:
            assert out.returncode != 0
            assert "verl did not load the plugins" in out.stderr and "VERL_USE_EXTERNAL_PLUGINS='none'" in out.stderr
