"""Offline evidence for POISE on a user's own model and data.

- ``python -m poise_verl.eval CHECKPOINT --data FILE.parquet``: avg@k and pass@k of a policy per data source.
- ``python -m poise_verl.analysis.value_estimator --model PATH --data FILE.parquet``: how well POISE's probe
  estimates a prompt's value V(x) (its pass rate) compared with a critic of the policy's own size and with
  trivial baselines, plus a sweep over the probe's decoder layer.

The pieces they share: ``policy`` (load a HF model directory or a verl ``global_step_N`` checkpoint),
``prompts`` (read verl-format parquet and render the chat template as verl does), ``sampling`` (batched
generation and scoring), ``passk`` (the unbiased pass@k estimator). The value-estimator study's own stages:
``features`` (the probe's features of every rollout), ``probe_sweep`` (the probe at every layer),
``critic``, ``estimators`` (the list of estimators compared), ``report`` (its outputs).
"""
