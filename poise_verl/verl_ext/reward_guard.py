"""A reward function that raises, hangs or returns a non-finite score stops the run with one message naming the
function and the sample.

What verl 0.9.1 does without this: the reward loop worker's exception fails the rollout's prompt group; the
agent loop logs the traceback (once per rollout, thousands of lines) and the trainer goes on until its replay
buffer fails with "Sync replay buffer selected terminal groups with no materializable trajectories", or, when
only one rollout failed, trains on a group that lost a rollout. A reward function that never returns leaves
its group "running" and the trainer waits forever (it logs "pending: 0, running: 1" once a minute).

Two halves, joined by a named Ray actor that exists only once something failed:

- worker side: ``reward.reward_manager.source=importlib`` with ``module.path=pkg://`` this module makes verl
  load ``reward.reward_manager.name`` (``naive``, ``dapo``, any registered manager) from here, which returns
  verl's own manager class with :class:`RewardGuard` mixed in. It bounds each sample's reward by
  ``reward.timeout`` seconds (the key verl's rate-limited manager reads) and turns an exception or a timeout
  into a :class:`RewardFunctionError` whose message it also records in the failure log;
- driver side (:mod:`poise_verl.verl_ext.stopping`): ``stop_cleanly`` wraps the run; a thread polls for the
  failure log and interrupts the driver's wait on the trainer, Ray is shut down first and then the message is
  printed, so it is what the last lines of the output say.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import inspect
import logging
import math
import os
import traceback

import ray

logger = logging.getLogger(__name__)

FAILURE_LOG_NAME = "poise_verl_run_failures"
PREVIEW_CHARS = 80


class RewardFunctionError(RuntimeError):
    """The reward function raised or did not return in time; the message says which, where and on what."""


# ----------------------------------------------------------------------------------------------- worker side
class RewardGuard:
    """Mixed into a verl reward manager: each sample's ``run_single`` bounded in time, failures described."""

    async def run_single(self, data):
        timeout = self.config.reward.get("timeout", None)
        task = asyncio.ensure_future(super().run_single(data))
        try:
            done, _ = await asyncio.wait({task}, timeout=None if timeout is None else float(timeout))
        finally:
            if not task.done():
                task.cancel()  # a synchronous function keeps its executor thread; the run stops anyway
        function, files = reward_function(self.config)
        if not done:
            what = (
                f"the reward function {function} did not return within reward.timeout={timeout} s on one sample "
                "(raise reward.timeout if it is just slow)"
            )
        elif task.exception() is not None:
            what = describe_error(task.exception(), function, files, _wrapped(type(self)).__name__)
        elif not _finite(score := task.result().get("reward_score")):
            # In training a NaN would poison the advantages; in validation, the reported accuracy.
            what = f"the reward function {function} returned {score!r}, not a finite number, on one sample"
        else:
            return task.result()
        message = f"{what}\n  sample: {describe_sample(self, data)}"
        await _record(message)
        raise RewardFunctionError(message)


def _finite(score) -> bool:
    try:
        return math.isfinite(float(score))
    except (TypeError, ValueError):
        return False


def reward_function(config) -> tuple[str, tuple[str, ...]]:
    """(``NAME in FILE`` of the reward function verl calls for this config, the source paths that are it)."""
    function = config.reward.get("custom_reward_function") or {}
    path = function.get("path")
    if path:
        path = str(path)
        if path.startswith("pkg://"):
            spec = importlib.util.find_spec(path.removeprefix("pkg://").replace("/", "."))
            source = spec.origin if spec is not None and spec.origin else path
        else:
            source = os.path.abspath(path.removeprefix("file://"))
        return f"{function.get('name')} in {path}", (source,)
    from verl.utils import reward_score

    folder = os.path.dirname(inspect.getsourcefile(reward_score))
    name = reward_score.default_compute_score.__name__
    return f"{name} in {inspect.getsourcefile(reward_score)} (verl's default)", (folder + os.sep,)


def describe_error(error: BaseException, function: str, files: tuple[str, ...], manager: str) -> str:
    """Who raised what, where: the reward function itself, or verl's reward manager around it."""
    frames = traceback.extract_tb(error.__traceback__)
    own = [f for f in frames if os.path.abspath(f.filename).startswith(files)]
    frame = own[-1] if own else (frames[-1] if frames else None)
    where = f" (at {frame.filename}:{frame.lineno} in {frame.name})" if frame else ""
    raised = f"{type(error).__name__}: {error}{where}"
    if own:
        return f"the reward function {function} raised {raised}"
    return f"verl's {manager} raised {raised} while scoring a sample for the reward function {function}"


def describe_sample(manager, data) -> str:
    """Data source, row, prompt, ground truth and response of the sample (verl scores the last sequence)."""
    item = data[-1:][0]
    fields = item.non_tensor_batch
    extra_info = fields.get("extra_info") or {}
    parts = [f"data_source={_preview(fields.get('data_source'))}"]
    if "index" in extra_info:
        split = f" (split {extra_info['split']!r})" if "split" in extra_info else ""
        parts.append(f"row extra_info.index={extra_info['index']}{split}")
    else:
        parts.append("no extra_info.index in its row")
    messages = [m for m in list(fields.get("raw_prompt", [])) if isinstance(m, dict)]
    if messages:
        parts.append(f"prompt={_preview(messages[-1].get('content'))}")
    reward_model = fields.get("reward_model")
    if isinstance(reward_model, dict):
        parts.append(f"ground_truth={_preview(reward_model.get('ground_truth'))}")
    response = _decoded_response(manager, item)
    if response is not None:
        parts.append(f"response={_preview(response)}")
    return ", ".join(parts)


def _decoded_response(manager, item) -> str | None:
    try:
        responses = item.batch["responses"]
        length = int(item.batch["attention_mask"][-responses.shape[-1] :].sum())
        return manager.tokenizer.decode(responses[:length], skip_special_tokens=True)
    except Exception:  # noqa: BLE001 - best effort: the error itself is reported anyway
        return None


def _preview(value) -> str:
    text = repr(str(value) if isinstance(value, str) else value)  # numpy's str_ would print as np.str_('...')
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 3] + "..."


@ray.remote(num_cpus=0)
class FailureLog:
    """The first failure of this run (and how many followed), for the driver to print."""

    def __init__(self):
        self.first: str | None = None
        self.count = 0

    def add(self, message: str) -> None:
        self.count += 1
        if self.first is None:
            self.first = message

    def summary(self) -> tuple[str | None, int]:
        return self.first, self.count


_failure_logs: list = []  # keeps the log alive: a named actor dies with its creator's last handle


async def _record(message: str) -> None:
    if not ray.is_initialized():  # called outside Ray (a unit test): nothing to tell a driver
        return
    try:
        if not _failure_logs:
            _failure_logs.append(FailureLog.options(name=FAILURE_LOG_NAME, get_if_exists=True).remote())
        await _failure_logs[0].add.remote(message)
    except Exception:  # the error is still raised to verl; only the driver's summary is lost
        logger.exception("could not record the reward failure for the driver")


def _wrapped(cls: type) -> type:
    """The verl manager class a guarded class wraps (the next class after RewardGuard)."""
    mro = cls.__mro__
    return mro[mro.index(RewardGuard) + 1]


@functools.cache
def guarded(manager_cls: type) -> type:
    """verl's reward manager class with :class:`RewardGuard` in front of it."""
    return type(f"Guarded{manager_cls.__name__}", (RewardGuard, manager_cls), {"__module__": __name__})


def __getattr__(name: str):
    """verl loads ``reward.reward_manager.name`` from this module: the guarded registered manager."""
    if name.startswith("__"):
        raise AttributeError(name)
    from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls

    try:
        return guarded(get_reward_manager_cls(name))
    except ValueError as error:
        raise AttributeError(f"{name!r} is not a registered verl reward manager ({error})") from None
