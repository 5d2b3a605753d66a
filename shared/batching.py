"""Batching across concurrent requests for a model service.

Requests that arrive while the model is busy wait in a queue; when the model
is free, every waiting request (up to ``max_items`` inputs) runs in one call.
Nothing waits for a batch to fill: a request that finds the model idle runs at
once, so batching adds no latency at low load and merges work only under load,
where one batched call costs less per input than several small ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Callable, Generic, TypeVar

import numpy as np
from starlette.concurrency import run_in_threadpool

log = logging.getLogger(__name__)

Output = TypeVar("Output")


class MicroBatcher(Generic[Output]):
    """Merge concurrent ``submit`` calls into batched calls of ``run_batch``.

    ``run_batch`` takes the concatenated inputs and returns one output for the
    batch; ``split`` cuts that output back into one part per request, given
    the requests' input counts.
    """

    def __init__(self, run_batch: Callable[[np.ndarray], Output], split: Callable[[Output, list[int]], list[Any]], max_items: int):
        self.run_batch = run_batch
        self.split = split
        self.max_items = max_items
        self._queue: deque[tuple[np.ndarray, asyncio.Future]] = deque()
        self._worker: asyncio.Task | None = None
        self.batches = 0
        self.requests = 0

    async def submit(self, inputs: np.ndarray) -> Any:
        """Queue one request's inputs and return its part of the batched output."""
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.append((inputs, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        while self._queue:
            taken = [self._queue.popleft()]
            count = len(taken[0][0])
            while self._queue and count + len(self._queue[0][0]) <= self.max_items:
                inputs, future = self._queue.popleft()
                taken.append((inputs, future))
                count += len(inputs)
            taken = [(inputs, future) for inputs, future in taken if not future.cancelled()]
            if not taken:
                continue
            counts = [len(inputs) for inputs, _ in taken]
            try:
                batch = taken[0][0] if len(taken) == 1 else np.concatenate([inputs for inputs, _ in taken])
                output = await run_in_threadpool(self.run_batch, batch)
                parts = self.split(output, counts)
            except Exception as error:  # the model's error belongs to each request of the batch
                log.exception("batched model call of %d requests failed", len(taken))
                for _, future in taken:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.batches += 1
            self.requests += len(taken)
            for (_, future), part in zip(taken, parts):
                if not future.done():
                    future.set_result(part)
