"""A checkpoint whose write fails (a full disk, a quota, a file system gone read-only) stops the run with a message
that names the folder, says why and which checkpoint the same command resumes from; never with torch's bare
``RuntimeError: [enforce fail at inline_container.cc:...] . unexpected pos ...``.

verl 0.9.1 writes a checkpoint's files first and its tracker (``latest_checkpointed_iteration.txt``, the step a
resume picks up) last, so a save cut short leaves the tracker on the previous whole checkpoint. Two things can
still go wrong, and :func:`guarded_save` handles both: verl opens the tracker with ``"w"`` before writing it, so a
full disk can leave it empty (restored here to the step it named); and the half-written ``global_step_N`` folder
stays on disk, where ``trainer.resume_mode=resume_path`` or an evaluation could pick it up (removed here, which also
frees what it took).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

TRACKER_FILE = "latest_checkpointed_iteration.txt"  # verl's checkpoint tracker, written last
STEP_PREFIX = "global_step_"  # verl's checkpoint folders: <trainer.default_local_dir>/global_step_<N>

# What the failed write of a file says, in the words of the OS or of torch's zip writer (whose "unexpected pos"
# is how a full disk shows through ``torch.save``), also when Ray carries it from a worker as text.
_WRITE_FAILURE_WORDS = (
    "No space left on device",
    "Disk quota exceeded",
    "Read-only file system",
    "unexpected pos",
    "PytorchStreamWriter failed",
    "File too large",
)
_DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "unexpected pos")


def step_folders(run_folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """``[(N, <run_folder>/global_step_N), ...]`` in step order: the checkpoint folders verl wrote there."""
    parent = Path(run_folder)
    if not parent.is_dir():
        return []
    return sorted(
        (int(child.name[len(STEP_PREFIX):]), child)
        for child in parent.iterdir()
        if child.is_dir() and child.name.startswith(STEP_PREFIX) and child.name[len(STEP_PREFIX):].isdigit()
    )


class CheckpointWriteError(RuntimeError):
    """Writing a checkpoint failed; the message is what the run's last lines say."""


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        cause = getattr(error, "cause", None)  # a Ray task error keeps the worker's exception here
        error = cause if isinstance(cause, BaseException) else (error.__cause__ or error.__context__)


def find_in_chain(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The innermost exception of type ``kind`` in ``error``'s chain (causes, contexts, Ray's task errors): Ray
    re-raises a remote error as a class deriving from both its own and the original, whose text is the whole
    remote traceback; the original it carries has the message alone."""
    found = None
    for link in _chain(error):
        if isinstance(link, kind):
            found = link
    return found


def is_write_failure(error: BaseException) -> bool:
    """True when ``error`` (or what it wraps) is a file that could not be written."""
    for link in _chain(error):
        if isinstance(link, OSError) and not isinstance(link, ConnectionError):
            return True
        if any(words in str(link) for words in _WRITE_FAILURE_WORDS):
            return True
    return False


def _reason(error: BaseException) -> str:
    text = " ".join(str(link) for link in _chain(error))
    full = any(isinstance(link, OSError) and link.errno in (errno.ENOSPC, errno.EDQUOT) for link in _chain(error))
    if full or any(words in text for words in _DISK_FULL_WORDS):
        return "the disk is full (or over its quota): a file could not be written whole"
    last = next((line.strip() for line in reversed(str(error).strip().splitlines()) if line.strip()), repr(error))
    return f"a file could not be written ({last})"


def _free_space(folder: str) -> str:
    path = folder
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        free = shutil.disk_usage(path or ".").free
    except OSError:
        return "unknown"
    return f"{free / 2**30:.2f} GiB" if free >= 2**30 else f"{free / 2**20:.1f} MiB"


def atomic_write_text(path: str, text: str) -> None:
    """Write ``path`` whole or not at all (a temporary file renamed over it)."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


def _read_tracker(tracker: str) -> str | None:
    try:
        with open(tracker) as handle:
            return handle.read().strip()
    except OSError:
        return None


def _restore_tracker(tracker: str, before: str | None) -> str | None:
    """Put back the step the tracker named before the save, if the failed save emptied it; the step it names."""
    now = _read_tracker(tracker)
    if now == before or (now and now.isdigit() and before is None):
        return now
    with contextlib.suppress(OSError):
        if before is None:
            os.remove(tracker)
        else:
            atomic_write_text(tracker, before)
    return before


@contextlib.contextmanager
def guarded_save(root: str, step: int) -> Iterator[None]:
    """Around one save of ``<root>/global_step_<step>``: a failed write raises :class:`CheckpointWriteError`."""
    folder = os.path.join(root, f"global_step_{step}")
    tracker = os.path.join(root, TRACKER_FILE)
    before = _read_tracker(tracker)
    try:
        yield
    except Exception as error:
        if not is_write_failure(error):
            raise
        named = _restore_tracker(tracker, before)
        if named == str(step):  # the failure came after verl's tracker moved: the checkpoint is whole
            raise
        removed = ""
        if os.path.isdir(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed = " Its half-written folder is removed, so nothing resumes from it."
        if named and named.isdigit():
            resume = (
                f"The same command resumes from {os.path.join(root, f'global_step_{named}')}, the last checkpoint "
                f"written whole ({os.path.join(root, TRACKER_FILE)} names it)."
            )
        else:
            resume = "No earlier checkpoint of this run was written whole: the same command starts over."
        raise CheckpointWriteError(
            f"writing the checkpoint {folder} (step {step}) failed: {_reason(error)}; {_free_space(root)} free "
            f"on its file system.{removed} {resume} Free space on that disk before launching it again (a new "
            "trainer.default_local_dir would start the run over)"
        ) from error
