"""Start-up checks on the checkpoint a launch would resume from: it exists and is whole (verl writes its tracker file
last), it was written by the same algorithm, and under POISE with the same ``poise.*`` settings. A resume continues a
run; it never silently trains another one from its state.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import DictConfig

from poise_verl.verl_ext.checkpoint_guard import TRACKER_FILE, step_folders  # verl's tracker, written last

RESUME_MODES = ("auto", "disable", "resume_path")


def check_resume(config: DictConfig, is_poise: bool) -> list[str]:
    """The checkpoint a launch would resume from exists and is whole (verl writes its tracker file last)."""
    trainer = config.trainer
    mode = str(trainer.resume_mode)
    if mode not in RESUME_MODES:
        return [f"trainer.resume_mode={mode!r}: choose one of {list(RESUME_MODES)}"]
    if mode == "disable":
        return []
    if mode == "resume_path":
        path = trainer.get("resume_from_path")
        if not path:
            return [
                "trainer.resume_mode=resume_path needs trainer.resume_from_path=<run folder>/global_step_N"
            ]
        folder = Path(os.path.expanduser(str(path)))
        return _check_step_folder(folder, "trainer.resume_from_path", is_poise) or _check_same_run(
            folder, config, is_poise
        )
    root = Path(str(trainer.default_local_dir))
    tracker = root / TRACKER_FILE
    if not tracker.is_file():
        return []  # nothing saved yet: a fresh start
    text = tracker.read_text().strip()
    if not text.isdigit():
        return [
            (
                f"{tracker} reads {text!r}, not a step number: trainer.resume_mode=auto cannot tell which checkpoint to "
                "resume. Write the step of the last complete global_step_N folder into it, or delete it to start fresh"
            )
        ]
    folder = root / f"global_step_{text}"
    return _check_step_folder(folder, f"{tracker} (trainer.resume_mode=auto)", is_poise) or _check_same_run(
        folder, config, is_poise
    )


_START_FRESH = "or start fresh: a new trainer.default_local_dir (or trainer.resume_mode=disable)"


def _check_same_run(folder: Path, config: DictConfig, is_poise: bool) -> list[str]:
    """The checkpoint a launch resumes was written by the same algorithm, and under POISE with the same
    ``poise.*`` settings: a resume continues a run, it never silently trains another one from its state."""
    from poise_verl.config import POISE_STATE_FILE, RUN_IDENTITY_FILE, algorithm_identity

    algorithm = algorithm_identity(config)
    identity_file = folder / RUN_IDENTITY_FILE
    if identity_file.is_file():
        saved = json.loads(identity_file.read_text())
    else:  # written before run_identity.json existed: only POISE's own file tells the algorithms apart
        saved = {"algorithm": "poise" if (folder / POISE_STATE_FILE).is_file() else None, "algo_name": None}
    if saved["algorithm"] is not None and saved["algorithm"] != algorithm:
        shown = f"algo={saved['algo_name']}" if saved.get("algo_name") else f"the {saved['algorithm']} algorithm"
        return [
            (
                f"{folder} was written by {shown} ({saved['algorithm']}); this launch trains {algorithm} "
                f"(algo={config.get('algo_name')}). Resuming would train {algorithm} on from another algorithm's "
                f"weights, optimizer state and data position: resume it with {shown}, {_START_FRESH}"
            )
        ]
    if not (is_poise and (folder / POISE_STATE_FILE).is_file()):
        return []
    return _check_same_poise_settings(folder, config)


def _check_same_poise_settings(folder: Path, config: DictConfig) -> list[str]:
    from dataclasses import asdict

    import torch

    from poise_verl.config import POISE_STATE_FILE, PoiseSettings, changed_poise_settings

    # mmap: the probes' and the replay buffer's tensors stay on disk; only the settings are read.
    saved = torch.load(folder / POISE_STATE_FILE, weights_only=False, mmap=True, map_location="cpu").get("settings")
    if saved is None:  # a checkpoint from before the settings were saved with it
        return []
    changed = changed_poise_settings(saved, asdict(PoiseSettings.from_config(config.poise)))
    if not changed:
        return []

    def shown(value) -> str:
        return "(not set)" if not isinstance(value, str | int | float | bool | list | dict | None) else repr(value)

    lines = "\n".join(f"    {key}: saved {shown(old)}, this launch {shown(new)}" for key, old, new in changed)
    return [
        (
            f"{folder} was trained with other poise settings than this launch sets; a resumed run keeps the probes, "
            f"replay buffer and settings it saved, so the new values would not apply:\n{lines}\n  Resume with the "
            f"saved values, {_START_FRESH}"
        )
    ]


def _check_step_folder(folder: Path, key: str, is_poise: bool) -> list[str]:
    if "global_step_" not in folder.name:
        return [f"{key}={folder} must name a checkpoint folder global_step_N{_available(folder.parent)}"]
    if not folder.is_dir():
        return [f"{key}: checkpoint folder {folder} does not exist{_available(folder.parent)}"]
    if not (folder / "actor").is_dir():
        return [
            f"{key}: {folder} holds no actor checkpoint (no actor/ folder): it is not a complete checkpoint"
        ]
    if is_poise:
        from poise_verl.config import POISE_STATE_FILE

        if not (folder / POISE_STATE_FILE).is_file():
            return [
                (
                    f"{key}: {folder} has no {POISE_STATE_FILE} (probe and replay buffer): it was not written by the "
                    "POISE trainer. Resume it with the algorithm that wrote it, or set trainer.default_local_dir to a "
                    "new folder"
                )
            ]
    broken = _unreadable_archives(folder)
    if broken:
        return [_unreadable_checkpoint(folder, broken, key, is_poise)]
    return []


def _unreadable_archives(folder: Path) -> list[Path]:
    """The ``.pt`` files of a checkpoint folder that are not whole torch archives (a write cut short).

    ``torch.save`` writes a zip archive whose directory sits at its end, so a file cut short has none; reading the
    directory costs a few bytes, whatever the checkpoint's size (a flipped bit inside is not detected).
    """
    import zipfile

    return [path for path in sorted(folder.rglob("*.pt")) if path.is_file() and not zipfile.is_zipfile(path)]


def _unreadable_checkpoint(folder: Path, broken: list[Path], key: str, is_poise: bool) -> str:
    step = int(folder.name.rsplit("_", 1)[-1])
    earlier = [path for number, path in reversed(step_folders(folder.parent)) if number < step]
    whole = next((p for p in earlier if not _check_step_folder(p, key, is_poise)), None)
    names = ", ".join(str(path.relative_to(folder)) for path in broken)
    message = (
        f"{key}: the checkpoint {folder} is unreadable: {names} is not a whole torch archive (its write was cut "
        "short). "
    )
    if whole is not None:
        message += (
            f"Resume from the previous checkpoint with the same command plus trainer.resume_mode=resume_path "
            f"trainer.resume_from_path={whole}, or start fresh with trainer.resume_mode=disable"
        )
    else:
        message += "No earlier checkpoint is whole: start fresh with trainer.resume_mode=disable"
    return message + " (or a new trainer.default_local_dir)"


def _available(parent: Path) -> str:
    steps = step_folders(parent)
    if not steps:
        return f" (no global_step_N folders in {parent})"
    return f"; {parent} holds {', '.join(path.name for _, path in steps[-5:])}"
