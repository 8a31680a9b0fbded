"""Requests that arrive together, handed on together: the hf rollout's batching rule.

verl's agent loop sends a step's requests one after another, each as soon as it is ready. The hf rollout server
(:mod:`.hf_server`) collects the ones that arrive together into one ``generate`` call, and the agent loop's client
(:mod:`.agent_loop`) into one Ray call; both with :class:`QuietBatcher`.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

# A batch is sent to generate once no new request has arrived for this long. verl's agent loop prepares the
# requests of a step one after another (about a millisecond each on a 2-core machine) and sends each as soon
# as it is ready, so a short quiet period collects a whole step into one generate call.
DEFAULT_BATCH_WAIT_S = 0.02
# ... or once the first request of the batch has waited this long.
DEFAULT_MAX_BATCH_DELAY_S = 1.0


class QuietBatcher:
    """Hands items submitted concurrently to ``flush`` as one list: once none has arrived for ``quiet_s``, or
    ``max_items`` wait, or the first has waited ``max_delay_s``. ``flush`` returns one result per item (or raises,
    and every caller of that batch gets the error). Create it inside the event loop that submits."""

    def __init__(self, flush, quiet_s: float, max_delay_s: float, max_items: int):
        self.flush, self.quiet_s, self.max_delay_s, self.max_items = flush, quiet_s, max_delay_s, max(1, max_items)
        self.pending: list[tuple[Any, asyncio.Future]] = []
        self._task: asyncio.Task | None = None

    async def submit(self, item):
        future = asyncio.get_running_loop().create_future()
        self.pending.append((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        while self.pending:
            first = time.monotonic()
            while len(self.pending) < self.max_items and time.monotonic() - first < self.max_delay_s:
                count = len(self.pending)
                await asyncio.sleep(self.quiet_s)
                if len(self.pending) == count:
                    break
            batch, self.pending = self.pending[: self.max_items], self.pending[self.max_items :]
            try:
                results = await self.flush([item for item, _ in batch])
            except Exception as error:  # noqa: BLE001  (the failure goes to every caller of the batch)
                results = [error] * len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
