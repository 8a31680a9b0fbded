"""How a run stops: a reward failure recorded by the reward guard, a checkpoint that could not be written, Ctrl-C
or SIGTERM ends it with one message last.

:func:`stop_cleanly` wraps verl's ``run_ppo`` in the driver. A thread polls the reward guard's failure log (the
named Ray actor :mod:`poise_verl.verl_ext.reward_guard` creates once a reward call failed) and interrupts the
driver's wait on the trainer; Ctrl-C (or ``kill -INT``, also for a run started as a script's background job)
lands in the same place, and so does SIGTERM, what SLURM, Kubernetes, ``docker stop`` and systemd send before they
kill a job (without this, Ray's crash handler in the driver prints a stack dump and aborts with exit 134). A
failed checkpoint write arrives as the trainer's error (:mod:`.checkpoint_guard`). Either way Ray is shut down
first, so its workers stop printing, and then the message is printed: what the run's last lines say, with where
the same command resumes.
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import os
import signal
import sys
import threading

import ray

from poise_verl.verl_ext.checkpoint_guard import CheckpointWriteError, find_in_chain
from poise_verl.verl_ext.reward_guard import FAILURE_LOG_NAME

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.0


def recorded_failure() -> str | None:
    """The first recorded failure of this run, with a count of the others; None when nothing failed."""
    if not ray.is_initialized():
        return None
    try:
        log = ray.get_actor(FAILURE_LOG_NAME)
    except ValueError:
        return None
    first, count = ray.get(log.summary.remote(), timeout=30)
    if first is None:
        return None
    more = f"\n  {count - 1} more reward call(s) failed after it." if count > 1 else ""
    return f"{first}{more}"


class _RecordedFailure(Exception):
    """A reward failure found in the failure log after the trainer returned."""


class _Watcher(threading.Thread):
    """Interrupts the driver's main thread (waiting on the trainer) as soon as a failure is recorded."""

    def __init__(self):
        super().__init__(name="poise-failure-watcher", daemon=True)
        self.stopped = threading.Event()
        self.failure: str | None = None

    def run(self) -> None:
        while not self.stopped.wait(POLL_INTERVAL_S):
            try:
                self.failure = recorded_failure()
            except Exception as error:  # noqa: BLE001 - Ray starting or stopping: look again next time
                logger.debug("failure log not readable yet: %s", error)
                continue
            if self.failure is not None:
                _thread.interrupt_main()
                return


def _catch_sigint() -> None:
    """Let SIGINT raise KeyboardInterrupt in the driver even when the parent left it ignored.

    A shell without job control starts background commands with SIGINT ignored, and Python then installs no
    handler: ``kill -INT`` would do nothing, and neither would the watcher's ``_thread.interrupt_main`` (which
    only acts on a signal Python handles), so a failed reward would go unnoticed until the run ended.
    """
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) in (
        signal.SIG_IGN,
        signal.SIG_DFL,
    ):
        signal.signal(signal.SIGINT, signal.default_int_handler)


class Terminated(KeyboardInterrupt):
    """SIGTERM reached the driver; raised in its main thread, where Ctrl-C's KeyboardInterrupt would be.

    A KeyboardInterrupt because Ray's blocking ``ray.get`` turns only that into an interruption of its wait (its
    signal check would swallow any other exception): the wait ends with a KeyboardInterrupt of Ray's own, and
    :data:`_SIGTERM_RECEIVED` tells the two signals apart.
    """


_SIGTERM_RECEIVED = threading.Event()


def _raise_terminated(signum, frame) -> None:
    _SIGTERM_RECEIVED.set()
    raise Terminated()


def _catch_sigterm() -> None:
    """Handle SIGTERM in the driver like Ctrl-C, before and after ``ray.init``.

    ``ray.init`` replaces the handler as it connects: Python's (``sys.exit``) and, in its core worker, a C++
    crash handler that prints ``*** SIGTERM received ***`` with a stack dump and aborts. A hook of Ray's, run at
    the end of ``ray.init`` in the thread that called it, puts this one back.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    hooks = ray._private.worker._post_init_hooks  # ray 2.x: run by ray.init after it connected
    if _reinstall_sigterm not in hooks:
        hooks.append(_reinstall_sigterm)


def _reinstall_sigterm() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def catch_stop_signals() -> None:
    """Ctrl-C (also when the parent left SIGINT ignored) and SIGTERM raise KeyboardInterrupt in the main thread;
    SIGTERM's is a :class:`Terminated`. For the drivers that run the main job as a child (the ablation)."""
    _catch_sigint()
    _catch_sigterm()


@contextlib.contextmanager
def stop_cleanly(config):
    """Around verl's ``run_ppo``: a recorded failure, a failed checkpoint write, Ctrl-C or SIGTERM ends the run,
    Ray first, the message last."""
    catch_stop_signals()
    watcher = _Watcher()
    watcher.start()
    try:
        yield
        # The trainer can finish before the watcher looks (a short run): a recorded failure still fails the run.
        watcher.stopped.set()
        failure = watcher.failure
        if failure is None:
            with contextlib.suppress(Exception):
                failure = recorded_failure()
        if failure is not None:
            raise _RecordedFailure(failure)
    except BaseException as error:
        watcher.stopped.set()
        failure = str(error) if isinstance(error, _RecordedFailure) else watcher.failure
        if isinstance(error, KeyboardInterrupt) and _SIGTERM_RECEIVED.is_set():
            error = Terminated()
        stopped_by = isinstance(error, KeyboardInterrupt)
        if failure is None and not stopped_by:
            with contextlib.suppress(Exception):
                failure = recorded_failure()  # the trainer may have failed on it before the watcher looked
        checkpoint_failure = None if stopped_by else find_in_chain(error, CheckpointWriteError)
        _shutdown_ray()
        if failure is not None:
            _print_last(
                f"poise-verl: the run stopped: {failure}\n  Fix the function or the data and launch again"
                f"{_resume_hint(config)}."
            )
            raise SystemExit(1) from None
        if checkpoint_failure is not None:
            _print_last(f"poise-verl: the run stopped: {checkpoint_failure}.")
            raise SystemExit(1) from None
        if isinstance(error, Terminated):
            _print_last(
                "poise-verl: terminated (SIGTERM); the run and its Ray processes are stopped"
                f"{_resume_hint(config, interrupted=True)}."
            )
            raise SystemExit(128 + signal.SIGTERM) from None
        if isinstance(error, KeyboardInterrupt):
            _print_last(
                "poise-verl: interrupted (Ctrl-C); the run and its Ray processes are stopped"
                f"{_resume_hint(config, interrupted=True)}."
            )
            raise SystemExit(130) from None
        raise
    finally:
        watcher.stopped.set()


def _shutdown_ray() -> None:
    with contextlib.suppress(Exception):
        ray.shutdown()


def _print_last(message: str) -> None:
    sys.stdout.flush()
    print(message, file=sys.stderr, flush=True)


def _resume_hint(config, interrupted: bool = False) -> str:
    """Where the same command would resume (verl's tracker names the last complete checkpoint)."""
    from verl.utils.checkpoint.checkpoint_manager import get_checkpoint_tracker_filename

    folder = str(config.trainer.default_local_dir)
    tracker = get_checkpoint_tracker_filename(folder)
    if config.trainer.resume_mode != "auto" or not os.path.exists(tracker):
        return " (no checkpoint of this run to resume from)" if interrupted else ""
    with open(tracker) as handle:
        step = handle.read().strip()
    return f"; the same command resumes from {os.path.join(folder, f'global_step_{step}')}"
