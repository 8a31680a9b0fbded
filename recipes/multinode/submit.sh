#!/usr/bin/env bash
# Submit a recipe to a running Ray cluster (start_ray_head.sh on one node, start_ray_worker.sh on the others).
#
#   RAY_ADDRESS=http://HEAD_IP:8265 NNODES=2 GPUS_PER_NODE=8 RECIPE=qwen3_4b ALGO=poise \
#   POISE_DATA_DIR=/shared/data POISE_CHECKPOINT_DIR=/shared/checkpoints \
#       bash recipes/multinode/submit.sh actor_rollout_ref.model.path=/shared/models/Qwen3-4B [overrides ...]
#
# Environment:
#   RAY_ADDRESS           the head's job-submission address (default http://127.0.0.1:8265)
#   NNODES, GPUS_PER_NODE cluster shape, passed as trainer.nnodes / trainer.n_gpus_per_node (default 1 x 8)
#   RECIPE, ALGO          hydra_configs/recipe/RECIPE.yaml and algo=ALGO (default qwen3_4b, poise)
#   POISE_DATA_DIR        prepared parquet files, on storage every node sees (required)
#   POISE_CHECKPOINT_DIR  checkpoints, on storage every node sees (required; resume_mode=auto reads it)
#   WORKING_DIR           code uploaded for the job (default: this checkout; set WORKING_DIR= to use the
#                         package installed on the nodes, e.g. the docker image, instead)
#   SUBMISSION_ID         a fixed job id (optional); NO_WAIT=1 returns without following the logs
#   PYTHON                interpreter used to build the runtime-env JSON (default python)
#
# The POISE modules reach every Ray process without anything here: verl imports poise_verl through its
# `verl.plugins` entry points, and the launcher (poise_verl/launch.py) puts VERL_ENGINE_VENDOR (for POISE) and
# VERL_PLATFORM (on CPU) into ray.init's runtime_env. Ray merges the job's runtime_env with that one and
# refuses a variable set in both, so this script never sets those variables.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

RAY_ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}
NNODES=${NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
RECIPE=${RECIPE:-qwen3_4b}
ALGO=${ALGO:-poise}
: "${POISE_DATA_DIR:?set POISE_DATA_DIR to the prepared data on shared storage}"
: "${POISE_CHECKPOINT_DIR:?set POISE_CHECKPOINT_DIR to a checkpoint directory on shared storage}"
WORKING_DIR=${WORKING_DIR-${repo_root}}

# The job's environment: what the driver needs to resolve the config, plus settings worth carrying to every
# process when they are set here. Credentials stay out (the runtime env is shown on the dashboard): export
# WANDB_API_KEY on the nodes before `ray start`, or run `wandb login` there.
runtime_env=$(
    POISE_FORWARD_VARS="POISE_DATA_DIR POISE_CHECKPOINT_DIR HF_HOME HF_HUB_OFFLINE TRANSFORMERS_OFFLINE \
WANDB_MODE WANDB_PROJECT WANDB_ENTITY WANDB_DIR NCCL_DEBUG NCCL_SOCKET_IFNAME NCCL_IB_HCA GLOO_SOCKET_IFNAME" \
    WORKING_DIR="${WORKING_DIR}" "${PYTHON:-python}" - <<'PY'
import json
import os

env_vars = {name: os.environ[name] for name in os.environ["POISE_FORWARD_VARS"].split() if os.environ.get(name)}
runtime_env = {"env_vars": env_vars}
if os.environ["WORKING_DIR"]:
    runtime_env["working_dir"] = os.environ["WORKING_DIR"]
    # Ray uploads the working dir to every node; keep environments, data and outputs out of it. Patterns are
    # gitignore-style: the leading "/" anchors them at the top, so poise_verl/data/ still travels.
    runtime_env["excludes"] = [
        "/.git", "/.venv", "/data", "/checkpoints", "/outputs", "/wandb", "/benchmarks", "/tests", "__pycache__/",
    ]
print(json.dumps(runtime_env))
PY
)

submit_args=(--address "${RAY_ADDRESS}" --runtime-env-json "${runtime_env}")
if [[ -n "${SUBMISSION_ID:-}" ]]; then
    submit_args+=(--submission-id "${SUBMISSION_ID}")
fi
if [[ "${NO_WAIT:-0}" == "1" ]]; then
    submit_args+=(--no-wait)
fi

echo "submitting ${RECIPE} (${ALGO}) to ${RAY_ADDRESS}: ${NNODES} node(s) x ${GPUS_PER_NODE} GPU(s)" >&2
exec ray job submit "${submit_args[@]}" -- \
    python -m poise_verl.main "+recipe=${RECIPE}" "algo=${ALGO}" \
    "trainer.nnodes=${NNODES}" "trainer.n_gpus_per_node=${GPUS_PER_NODE}" "$@"
