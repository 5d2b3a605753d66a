"""Batching across concurrent requests: merged calls, split outputs, errors."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from shared.batching import MicroBatcher


def split_rows(output: np.ndarray, counts: list[int]) -> list[np.ndarray]:
    return np.split(output, np.cumsum(counts)[:-1])


class SlowDoubler:
    """Doubles its input; the first call blocks until released, so later
    requests queue up behind it."""

    def __init__(self):
        self.calls: list[int] = []
        self.release = threading.Event()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.calls.append(len(batch))
        if len(self.calls) == 1:
            self.release.wait(timeout=5)
        return batch * 2


async def submit_all(batcher: MicroBatcher, model: SlowDoubler, inputs: list[np.ndarray]) -> list[np.ndarray]:
    first = asyncio.create_task(batcher.submit(inputs[0]))
    await asyncio.sleep(0.05)  # the first request is now running alone
    rest = [asyncio.create_task(batcher.submit(x)) for x in inputs[1:]]
    await asyncio.sleep(0.05)
    model.release.set()
    return await asyncio.gather(first, *rest)


def test_queued_requests_share_one_call():
    model = SlowDoubler()
    batcher = MicroBatcher(model, split_rows, max_items=64)
    inputs = [np.full((n, 2), n, np.float32) for n in (1, 2, 3, 1)]
    outputs = asyncio.run(submit_all(batcher, model, inputs))
    assert model.calls == [1, 6]
    for given, answered in zip(inputs, outputs):
        assert np.array_equal(answered, given * 2)


def test_batch_size_is_capped():
    model = SlowDoubler()
    batcher = MicroBatcher(model, split_rows, max_items=4)
    inputs = [np.ones((n, 1), np.float32) for n in (1, 3, 3, 1)]
    asyncio.run(submit_all(batcher, model, inputs))
    assert model.calls == [1, 3, 4]


def test_model_error_reaches_every_request():
    def failing(batch: np.ndarray) -> np.ndarray:
        raise ValueError("bad crops")

    batcher = MicroBatcher(failing, split_rows, max_items=8)

    async def run() -> list:
        return await asyncio.gather(*(batcher.submit(np.ones((1, 1))) for _ in range(3)), return_exceptions=True)

    results = asyncio.run(run())
    assert all(isinstance(result, ValueError) for result in results)


def test_single_request_runs_alone():
    calls = []

    def identity(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return batch

    batcher = MicroBatcher(identity, split_rows, max_items=8)
    output = asyncio.run(batcher.submit(np.arange(3).reshape(3, 1)))
    assert calls == [3]
    assert output.ravel().tolist() == pytest.approx([0, 1, 2])
