"""The runnable scripts under recipes/ and docker/: they parse, and they pass the right arguments on.

The wrappers end in `exec python ...` or `exec ray ...`; pointing PYTHON at a stub, or putting a stub `ray` first
on PATH, shows exactly what they would run without starting anything.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHELL_SCRIPTS = sorted(
    [*REPO.glob("recipes/**/*.sh"), REPO / "recipes/multinode/slurm.sbatch", REPO / "docker/entrypoint.sh"]
)
RUN_SCRIPTS = {
    ("qwen3_4b", "poise"): REPO / "recipes/qwen3_4b/run_poise.sh",
    ("qwen3_4b", "dapo"): REPO / "recipes/qwen3_4b/run_dapo.sh",
    ("deepseek_r1_distill_qwen_1_5b", "poise"): REPO / "recipes/deepseek_r1_distill_qwen_1_5b/run_poise.sh",
    ("deepseek_r1_distill_qwen_1_5b", "dapo"): REPO / "recipes/deepseek_r1_distill_qwen_1_5b/run_dapo.sh",
    ("olmo3_7b_instruct_dpo", "poise"): REPO / "recipes/olmo3_7b_instruct_dpo/run_poise.sh",
    ("olmo3_7b_instruct_dpo", "dapo"): REPO / "recipes/olmo3_7b_instruct_dpo/run_dapo.sh",
}

# Prints each argument on its own line, so tests see the exact argv.
ARGV_STUB = '#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n'


def _stub(directory: Path, name: str) -> Path:
    path = directory / name
    path.write_text(ARGV_STUB)
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_shell_script_parses_and_is_executable(script):
    result = subprocess.run(["bash", "-n", str(script)], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert os.access(script, os.X_OK), f"{script} is not executable"


@pytest.mark.parametrize(("recipe", "algo"), list(RUN_SCRIPTS), ids=lambda v: str(v))
def test_run_script_runs_the_recipe_from_the_repository_root(tmp_path, recipe, algo):
    python = _stub(tmp_path, "python")
    env = {
        **os.environ,
        "PYTHON": str(python),
        "MODEL_PATH": "/models/a model",
        "POISE_DATA_DIR": str(tmp_path),
    }
    result = subprocess.run(
        ["bash", str(RUN_SCRIPTS[recipe, algo]), "trainer.n_gpus_per_node=8"],
        cwd=tmp_path,
        env=env,
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "-m",
        "poise_verl.main",
        f"+recipe={recipe}",
        f"algo={algo}",
        "actor_rollout_ref.model.path=/models/a model",
        "trainer.n_gpus_per_node=8",
    ]
    # The data files are missing in tmp_path: the wrapper says how to prepare them (a hint, not an error).
    assert "python -m poise_verl.data.prepare dapo_math_17k" in result.stderr


def test_run_script_without_model_path_keeps_the_recipe_default(tmp_path):
    python = _stub(tmp_path, "python")
    env = {k: v for k, v in os.environ.items() if k != "MODEL_PATH"}
    env["PYTHON"] = str(python)
    result = subprocess.run(
        ["bash", str(RUN_SCRIPTS["qwen3_4b", "poise"])],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert not any(arg.startswith("actor_rollout_ref.model.path=") for arg in result.stdout.splitlines())


def _submit(tmp_path, extra_env, *overrides):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    _stub(bin_dir, "ray")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHON": sys.executable,
        "POISE_DATA_DIR": "/shared/data",
        "POISE_CHECKPOINT_DIR": "/shared/checkpoints",
        **extra_env,
    }
    return subprocess.run(
        ["bash", str(REPO / "recipes/multinode/submit.sh"), *overrides],
        env=env,
        check=False,
        capture_output=True,
        text=True,
    )


def test_submit_wires_the_cluster_shape_and_the_runtime_env(tmp_path):
    result = _submit(
        tmp_path,
        {
            "RAY_ADDRESS": "http://10.0.0.1:8265",
            "NNODES": "4",
            "GPUS_PER_NODE": "8",
            "RECIPE": "qwen3_4b",
            "ALGO": "dapo",
            "WANDB_MODE": "offline",
            "SUBMISSION_ID": "run-1",
        },
        "actor_rollout_ref.model.path=/shared/models/Qwen3-4B",
    )
    assert result.returncode == 0, result.stderr
    argv = result.stdout.splitlines()
    assert argv[:2] == ["job", "submit"]
    assert argv[argv.index("--address") + 1] == "http://10.0.0.1:8265"
    assert argv[argv.index("--submission-id") + 1] == "run-1"
    command = argv[argv.index("--") + 1 :]
    assert command == [
        "python",
        "-m",
        "poise_verl.main",
        "+recipe=qwen3_4b",
        "algo=dapo",
        "trainer.nnodes=4",
        "trainer.n_gpus_per_node=8",
        "actor_rollout_ref.model.path=/shared/models/Qwen3-4B",
    ]
    runtime_env = json.loads(argv[argv.index("--runtime-env-json") + 1])
    assert runtime_env["working_dir"] == str(REPO)
    assert runtime_env["env_vars"] == {
        "POISE_DATA_DIR": "/shared/data",
        "POISE_CHECKPOINT_DIR": "/shared/checkpoints",
        "WANDB_MODE": "offline",
    }
    # The launcher sets these in ray.init's runtime_env; Ray refuses a job that sets them too.
    assert "VERL_USE_EXTERNAL_MODULES" not in runtime_env["env_vars"]
    assert "VERL_ENGINE_VENDOR" not in runtime_env["env_vars"]


def test_submit_working_dir_excludes_keep_the_package(tmp_path):
    """Ray matches `excludes` gitignore-style: the top-level data/ goes, poise_verl/data/ (the scorer) stays."""
    from ray._private.thirdparty.pathspec import PathSpec

    result = _submit(tmp_path, {})
    argv = result.stdout.splitlines()
    excludes = json.loads(argv[argv.index("--runtime-env-json") + 1])["excludes"]
    spec = PathSpec.from_lines("gitwildmatch", excludes)
    for kept in ["poise_verl/data/scoring.py", "poise_verl/main.py", "hydra_configs/recipe/qwen3_4b.yaml"]:
        assert not spec.match_file(kept), kept
    for dropped in ["data/dapo_math_17k.parquet", ".venv/bin/python", "checkpoints/x/y.pt", "tests/a.py"]:
        assert spec.match_file(dropped), dropped


def test_submit_without_working_dir_uses_the_installed_package(tmp_path):
    result = _submit(tmp_path, {"WORKING_DIR": ""})
    assert result.returncode == 0, result.stderr
    argv = result.stdout.splitlines()
    runtime_env = json.loads(argv[argv.index("--runtime-env-json") + 1])
    assert "working_dir" not in runtime_env


def test_submit_requires_shared_data_and_checkpoint_dirs(tmp_path):
    result = _submit(tmp_path, {"POISE_DATA_DIR": ""})
    assert result.returncode != 0
    assert "POISE_DATA_DIR" in result.stderr


@pytest.mark.parametrize("script", ["start_ray_head.sh", "start_ray_worker.sh"])
def test_ray_start_scripts_pass_the_gpu_count(tmp_path, script):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "ray")
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "NUM_GPUS": "8",
        "NODE_IP": "10.0.0.2",
    }
    args = ["10.0.0.1:6379"] if script == "start_ray_worker.sh" else []
    result = subprocess.run(
        ["bash", str(REPO / "recipes/multinode" / script), *args, "--block"],
        env=env,
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    argv = result.stdout.splitlines()[1:]  # the first line is the script's own message
    assert argv[0] == "start"
    assert "--num-gpus=8" in argv and "--node-ip-address=10.0.0.2" in argv and argv[-1] == "--block"
    if script == "start_ray_head.sh":
        assert "--head" in argv and "--port=6379" in argv and "--dashboard-port=8265" in argv
    else:
        assert "--address=10.0.0.1:6379" in argv


def test_slurm_template_starts_ray_and_submits():
    text = (REPO / "recipes/multinode/slurm.sbatch").read_text()
    assert "#SBATCH --nodes=" in text and "#SBATCH --gpus-per-node=" in text
    assert "start_ray_head.sh --block" in text and "start_ray_worker.sh" in text
    assert "submit.sh" in text and 'NNODES="${NNODES}"' in text and 'GPUS_PER_NODE="${GPUS_PER_NODE}"' in text


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["+recipe=qwen3_4b", "algo=dapo"],
            ["python", "-m", "poise_verl.main", "+recipe=qwen3_4b", "algo=dapo"],
        ),
        (["--cfg", "job"], ["python", "-m", "poise_verl.main", "--cfg", "job"]),
        (["ray", "start", "--head"], ["ray", "start", "--head"]),
    ],
)
def test_docker_entrypoint_routes_overrides_to_the_trainer(tmp_path, args, expected):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python", "ray"):
        (bin_dir / name).write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" {name} "$@"\n')
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["bash", str(REPO / "docker/entrypoint.sh"), *args],
        env=env,
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == expected


def test_dockerfile_matches_verls_vllm_stack():
    text = (REPO / "docker/Dockerfile").read_text()
    assert "FROM ${CUDA_IMAGE}" in text and "ARG CUDA_IMAGE=nvidia/cuda:13.0" in text
    assert "ARG TORCH_VERSION=2.11.0" in text
    assert '"vllm==0.24.0" "verl[vllm]==0.9.1"' in text
    assert 'pip install -e ".[gpu]"' in text
    assert "flash-attn==${FLASH_ATTN_VERSION}" in text and "ARG FLASH_ATTN_VERSION=2.8.3" in text
    assert "\nUSER poise\n" in text
    assert "ENTRYPOINT [" in text
    # The image copies what the editable install needs, and the dockerignore lets exactly that through.
    ignore = (REPO / "docker/Dockerfile.dockerignore").read_text().splitlines()
    for copied in (
        "pyproject.toml",
        "README.md",
        "poise_verl/",
        "hydra_configs/",
        "recipes/",
        "docker/entrypoint.sh",
    ):
        assert f"!{copied}" in ignore
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'gpu = ["vllm==0.24.0", "verl[vllm]==0.9.1"]' in pyproject


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_is_clean():
    result = subprocess.run(
        ["shellcheck", *map(str, SHELL_SCRIPTS)], check=False, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
