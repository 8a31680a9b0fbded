"""The launcher hands every Ray process POISE's modules through ray.init's runtime_env, and joins clusters.

A local Ray cluster inherits the driver's environment, so a launcher that only set os.environ would pass
every single-node test and still fail on a cluster started with `ray start` (whose nodes never see the
driver's environment). These tests read what `prepare` leaves in the config that verl passes to ray.init.
"""

from __future__ import annotations

import os

import pytest
from hydra import compose, initialize_config_dir

from poise_verl.config import register_resolvers
from poise_verl.launch import prepare

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "..", "hydra_configs")


@pytest.fixture
def prepared(tmp_path, monkeypatch):
    """prepare(config) for the CPU default with OVERRIDES, the process environment restored afterwards."""
    built = tmp_path / "cache" / "tiny-v1"
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


def test_runtime_env_carries_the_poise_modules(prepared):
    config = prepared()
    env_vars = config.ray_kwargs.ray_init.runtime_env.env_vars
    modules = env_vars["VERL_USE_EXTERNAL_MODULES"].split(",")
    assert modules == [
        "poise_verl.verl_ext.cpu",
        "poise_verl.verl_ext.trainer",
        "poise_verl.verl_ext.capture_engine",
    ]
    assert env_vars["VERL_ENGINE_VENDOR"] == "poise"
    assert env_vars["VERL_PLATFORM"] == "cpu"
    assert env_vars["VERL_FILE_LOGGER_PATH"].endswith(".jsonl")
    # A local cluster: the CPU platform's logical resources are passed on.
    assert config.ray_kwargs.ray_init.num_cpus == 32 and config.ray_kwargs.ray_init.num_gpus == 1


def test_dapo_gets_the_trainer_modes_but_not_the_capture_engine(prepared):
    env_vars = prepared("algo=dapo").ray_kwargs.ray_init.runtime_env.env_vars
    assert "poise_verl.verl_ext.trainer" in env_vars["VERL_USE_EXTERNAL_MODULES"]
    assert "capture_engine" not in env_vars["VERL_USE_EXTERNAL_MODULES"]
    assert "VERL_ENGINE_VENDOR" not in env_vars


@pytest.mark.parametrize("how", ["config", "environment"])
def test_joining_a_cluster_leaves_resources_to_its_nodes(prepared, monkeypatch, capsys, how):
    if how == "config":
        config = prepared("+ray_kwargs.ray_init.address=10.0.0.1:6379")
    else:
        monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
        config = prepared()
    assert config.ray_kwargs.ray_init.num_cpus is None and config.ray_kwargs.ray_init.num_gpus is None
    assert "joining the Ray cluster at 10.0.0.1:6379" in capsys.readouterr().out
    assert "VERL_USE_EXTERNAL_MODULES" in config.ray_kwargs.ray_init.runtime_env.env_vars
