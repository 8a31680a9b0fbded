#!/usr/bin/env bash
# POISE (n=2 rollouts, probe baseline) on Qwen3-4B: hydra_configs/recipe/qwen3_4b.yaml with algo=poise.
#
#   MODEL_PATH=/models/Qwen3-4B bash recipes/qwen3_4b/run_poise.sh [hydra overrides ...]
#   e.g. ... trainer.n_gpus_per_node=8   (sizing for 1, 2 and 8 GPUs: recipes/README.md)
#
# Data, once (POISE_DATA_DIR defaults to data/; source files: recipes/README.md):
#   python -m poise_verl.data.prepare dapo_math_17k --input dapo-math-17k.parquet --output data/dapo_math_17k.parquet
#   python -m poise_verl.data.prepare aime24 --input aime_2024.parquet --output data/aime24.parquet
#   python -m poise_verl.data.prepare aime25 --input aime2025-I.jsonl aime2025-II.jsonl --output data/aime25.parquet
#   python -m poise_verl.data.prepare amc --input aimo-validation-amc.parquet --output data/amc.parquet
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/../_run.sh" qwen3_4b poise "$@"
