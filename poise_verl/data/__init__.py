"""Math data for POISE and the DAPO baseline: conversion to verl parquet and the answer scorer.

- `python -m poise_verl.data.prepare NAME --input FILE --output OUT.parquet` turns a dataset file, in the
  format its hub page publishes, into verl's RL parquet (`prepare.py`; the datasets are in `sources.py`).
- `poise_verl.data.scoring.default_compute_score` is the reward function verl calls
  (`reward.custom_reward_function.path=pkg://poise_verl.data.scoring`,
  `reward.custom_reward_function.name=default_compute_score`).

Both arms of the comparison read the same prompts and the same scorer: the DAPO-Math-17k prompt, which
asks for an `Answer:` line, is rewritten to POISE's `\\boxed{}` instruction (see `sources.py`).
"""
