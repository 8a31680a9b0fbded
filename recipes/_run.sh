#!/usr/bin/env bash
# Shared body of the recipes/*/run_*.sh wrappers: _run.sh RECIPE ALGO [Hydra overrides ...]
#
# Runs `python -m poise_verl.main +recipe=RECIPE algo=ALGO [actor_rollout_ref.model.path=$MODEL_PATH] "$@"` from
# the repository root, so the recipe's relative defaults (data/, checkpoints/) land there. Environment:
#   PYTHON                the interpreter with poise-verl installed (default: python)
#   MODEL_PATH            local model directory; without it the recipe's hub id is used
#   POISE_DATA_DIR        where the prepared parquet files lie (default: data)
#   POISE_CHECKPOINT_DIR  where checkpoints go (default: checkpoints)
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 RECIPE ALGO [hydra overrides ...]" >&2
    exit 2
fi
recipe=$1
algo=$2
shift 2

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# A hint, not a gate: data.train_files / data.val_files may be overridden on the command line.
data_dir=${POISE_DATA_DIR:-data}
for name in dapo_math_17k aime24 aime25 amc; do
    if [[ ! -f "${data_dir}/${name}.parquet" ]]; then
        echo "note: ${data_dir}/${name}.parquet is missing; prepare it with" >&2
        echo "  python -m poise_verl.data.prepare ${name} --input FILE [FILE ...] --output ${data_dir}/${name}.parquet" >&2
        echo "  (recipes/README.md lists the source files)" >&2
    fi
done

exec "${PYTHON:-python}" -m poise_verl.main "+recipe=${recipe}" "algo=${algo}" \
    ${MODEL_PATH:+"actor_rollout_ref.model.path=${MODEL_PATH}"} "$@"
