"""What a finished run prints last: what it learned, how long it took, where its checkpoint and metrics are, and the
commands that evaluate or resume it (verl's own last line is a raw dict of validation metrics)."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from poise_verl.verl_ext.checkpoint_guard import TRACKER_FILE


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def _validation_lines(folder: Path) -> list[str]:
    from poise_verl.ablate.metrics import load_metrics, validation_accuracy

    frame = load_metrics(folder)
    accuracy = validation_accuracy(frame).dropna() if not frame.empty else frame
    if len(accuracy) == 0:
        return ["  validation accuracy: no validation ran (trainer.test_freq, trainer.val_before_train)"]
    first_step, best_step, last_step = int(accuracy.index[0]), int(accuracy.idxmax()), int(accuracy.index[-1])
    line = (
        f"  validation accuracy (mean over data sources): {accuracy.iloc[0]:.3f} at step {first_step}, best "
        f"{accuracy.max():.3f} at step {best_step}, last {accuracy.iloc[-1]:.3f} at step {last_step}"
    )
    return [line]


def run_summary(config: DictConfig, wall_clock_s: float, command: list[str] | None = None) -> str:
    """The lines a finished run ends with (the launch's wall-clock, start-up included)."""
    folder = Path(str(config.trainer.default_local_dir))
    lines = ["poise-verl: the run finished.", *_validation_lines(folder)]
    lines.append(f"  wall-clock: {_duration(wall_clock_s)} for this launch, start-up included")
    metrics = os.environ.get("VERL_FILE_LOGGER_PATH")
    if metrics:
        lines.append(f"  metrics: {metrics} (one JSONL per launch in {Path(metrics).parent})")
    tracker = folder / TRACKER_FILE
    step = tracker.read_text().strip() if tracker.is_file() else ""
    if step.isdigit():
        checkpoint = folder / f"global_step_{step}"
        val_files = config.data.val_files
        data = val_files[0] if OmegaConf.is_list(val_files) else val_files
        lines.append(f"  checkpoint: {checkpoint}")
        lines.append(f"  evaluate: python -m poise_verl.eval {checkpoint} --data {data}")
        shown = shlex.join(command if command is not None else ["python", "-m", "poise_verl.main", *sys.argv[1:]])
        lines.append(f"  resume: {shown} trainer.total_training_steps=<more steps> (the same folder, resume_mode=auto)")
    else:
        lines.append(f"  checkpoint: none saved in {folder} (trainer.save_freq)")
    return "\n".join(lines)
