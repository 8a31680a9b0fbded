"""A checkpoint write that fails stops the run with a message that names the folder and the checkpoint a resume uses.

The disk-full write is real: the file torch writes is a link to ``/dev/full``, where every write fails with
ENOSPC ("No space left on device") as on a full disk, and torch reports it as its zip writer's "unexpected pos".
"""

from __future__ import annotations

import os

import pytest
import torch

from poise_verl.verl_ext.checkpoint_guard import (
    TRACKER_FILE,
    CheckpointWriteError,
    find_in_chain,
    guarded_save,
    is_write_failure,
)

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")


def _save_to_full_disk(folder, emptied_tracker=None):
    """What verl's save does, on a full disk: files into the step folder, then (never reached) the tracker."""
    (folder / "actor").mkdir(parents=True, exist_ok=True)
    torch.save({"w": torch.ones(8)}, folder / "actor" / "extra_state.pt")  # this one still fits
    target = folder / "actor" / "model_world_size_1_rank_0.pt"
    target.symlink_to("/dev/full")
    if emptied_tracker is not None:
        emptied_tracker.write_text("")  # verl opens it with "w" before the write that fails
    torch.save({"w": torch.ones(1 << 16)}, target)


def test_a_full_disk_names_the_folder_and_the_checkpoint_the_same_command_resumes(tmp_path):
    (tmp_path / "global_step_2" / "actor").mkdir(parents=True)
    (tmp_path / TRACKER_FILE).write_text("2")
    with pytest.raises(CheckpointWriteError) as stopped, guarded_save(str(tmp_path), 4):
        _save_to_full_disk(tmp_path / "global_step_4", emptied_tracker=tmp_path / TRACKER_FILE)
    message = str(stopped.value)
    assert message.startswith(
        f"writing the checkpoint {tmp_path / 'global_step_4'} (step 4) failed: the disk is full (or over its quota)"
    ), message
    assert "free on its file system. Its half-written folder is removed, so nothing resumes from it." in message
    assert f"The same command resumes from {tmp_path / 'global_step_2'}, the last checkpoint written whole" in message
    assert "unexpected pos" in str(stopped.value.__cause__)  # torch's own words, kept as the cause
    assert (tmp_path / TRACKER_FILE).read_text() == "2"  # put back after the failed save emptied it
    assert not (tmp_path / "global_step_4").exists()
    assert (tmp_path / "global_step_2").is_dir()


def test_a_first_checkpoint_that_fails_says_the_run_starts_over(tmp_path):
    starts_over = "No earlier checkpoint of this run was written whole: the same command starts over"
    with pytest.raises(CheckpointWriteError, match=starts_over), guarded_save(str(tmp_path), 2):
        _save_to_full_disk(tmp_path / "global_step_2", emptied_tracker=tmp_path / TRACKER_FILE)
    assert not (tmp_path / TRACKER_FILE).exists()


def test_other_failures_pass_through_untouched(tmp_path):
    with pytest.raises(ValueError, match="a bug"), guarded_save(str(tmp_path), 2):
        (tmp_path / "global_step_2").mkdir()
        raise ValueError("a bug")
    assert (tmp_path / "global_step_2").is_dir()  # not a write failure: nothing removed
    assert not is_write_failure(ConnectionResetError("a Ray connection, not a file"))


def test_a_failure_carried_by_ray_is_found_with_its_own_message():
    """Ray re-raises a remote error as a class deriving from both its own and the original; the original, with the
    message alone, is what the driver prints."""
    import ray.exceptions

    original = CheckpointWriteError("writing the checkpoint /x failed")
    try:
        raise original
    except CheckpointWriteError as error:
        carried = ray.exceptions.RayTaskError("run", "Traceback ...\n" + str(error), error).as_instanceof_cause()
    assert isinstance(carried, CheckpointWriteError)
    assert find_in_chain(carried, CheckpointWriteError) is original
    assert is_write_failure(ray.exceptions.RayTaskError("save", "RuntimeError: [enforce fail at "
                                                        "inline_container.cc:672] . unexpected pos 64", None))
