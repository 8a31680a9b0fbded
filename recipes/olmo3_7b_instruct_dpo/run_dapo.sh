#!/usr/bin/env bash
# DAPO (n=16, dynamic sampling) on OLMo-3-7B-Instruct-DPO, at POISE's 512 rollouts per step: hydra_configs/recipe/olmo3_7b_instruct_dpo.yaml with algo=dapo.
#
#   MODEL_PATH=/models/Olmo-3-7B-Instruct-DPO bash recipes/olmo3_7b_instruct_dpo/run_dapo.sh [hydra overrides ...]
#   e.g. ... trainer.n_gpus_per_node=8   (a 7B model on 80 GB GPUs: 4 or more; recipes/README.md)
#
# Data, once (POISE_DATA_DIR defaults to data/; source files: recipes/README.md):
#   python -m poise_verl.data.prepare dapo_math_17k --input dapo-math-17k.parquet --output data/dapo_math_17k.parquet
#   python -m poise_verl.data.prepare aime24 --input aime_2024.parquet --output data/aime24.parquet
#   python -m poise_verl.data.prepare aime25 --input aime2025-I.jsonl aime2025-II.jsonl --output data/aime25.parquet
#   python -m poise_verl.data.prepare amc --input aimo-validation-amc.parquet --output data/amc.parquet
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/../_run.sh" olmo3_7b_instruct_dpo dapo "$@"
