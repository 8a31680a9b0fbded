"""POISE, POISE with prompt selection (probe or history), DAPO and GRPO at one generation budget, over several
seeds, with a report.

    python -m poise_verl.ablate [--algos poise,poise_select,poise_history,dapo,grpo] [--seeds 0,1,2]
                                [--output DIR] [--target-accuracy A] [--dry-run] [--report-only]
                                [-- HYDRA OVERRIDES ...]

How the algorithms differ here: only in the Hydra overrides that select them (:mod:`.algorithms`, one entry
per algorithm; all of them by default), at one budget ``budget.rollouts_per_step`` that each algorithm divides
by its own ``n`` (POISE 2, DAPO and GRPO 16) into prompts per step. The selection variants generate for the
same number of prompts as POISE, chosen from more candidates (``poise.selection``).

Every run is an ordinary ``python -m poise_verl.main algo=X ...`` subprocess, one after another (seed-major:
seed 0 of every algorithm first, so an interrupted ablation still compares like with like). The overrides
after ``--`` reach every run unchanged, so the ablation runs on any recipe (``-- +recipe=qwen3_4b``).

The stages, one module each, in the order they run:

- :mod:`.plan`: the composed config of each algorithm, the runs and their overrides, the folder checks;
- :mod:`.launch`: one subprocess per unfinished run, resumable, one attempt logged per launch;
- :mod:`.metrics`: the runs' metrics JSONL files merged into one trajectory per run, derived columns;
- :mod:`.statistics`: means and spreads over seeds, time and tokens to the target, phase medians, the
  probe's Pearson; :mod:`.selection`: the zero-variance shares, the prompt-only estimate and the selection's
  cost of the POISE variants;
- :mod:`.report`: caveats, ``summary.md`` and ``summary.json``; :mod:`.plots` draws the figures;
- :mod:`.cli`: the command line above.

Layout of DIR (default ``ablations/<timestamp>``)::

    runs/<algo>/seed_<S>/        trainer.default_local_dir of the run: verl checkpoints, metrics/*.jsonl,
        log.txt                  the run's output, appended across launches
        ablate_run.json          what the run is (command, budget, n), written before the first launch
        attempts.jsonl           one row per launch: wall-clock seconds and exit code
        ABLATE_DONE.json         marker written after exit code 0: command, wall-clock over all launches
    report/summary.md, summary.json, *.png

Resuming: rerun the same command. A run with ``ABLATE_DONE.json`` is skipped; any other run is launched again in
its folder, where verl (``trainer.resume_mode=auto``) and POISE resume from its last checkpoint. A folder
made with different overrides is refused rather than silently mixed.

Seeds: seed S sets every key of :data:`.plan.SEED_KEYS` that the composed config has to S (replacing a
recipe's own, e.g. qwen3_4b's ``data.seed=42``). The actor starts from the same pretrained weights in every
run: nothing random to seed there.

Wall-clock: measured around each subprocess (``process_wall_clock_s``, start-up included, summed over
launches) and reconstructed from the metrics as the cumulative ``timing_s/step + timing_s/testing`` along
the run's final trajectory (``train_wall_clock_s``: no start-up, no initial validation, no work lost to an
interruption). The plots and the time-to-target use the reconstructed one: it is comparable across
algorithms and across interrupted and uninterrupted runs.
"""
