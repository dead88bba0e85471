"""The engine without HTTP: batches up to the largest batch, no wait when nothing more is expected, a
device lost mid-batch (its batch answers 503, the device reloads, the next run succeeds), a lone
image whose caller leaves (the device's books settle when the run ends), and a drain on stop."""
import asyncio
import threading
import time

import numpy as np
import pytest

from classifier.backends.base import Backend, BackendError
from classifier.engine import Engine
from classifier.errors import ApiError
from classifier.metrics import Metrics
from classifier.workers import Worker


class Fake(Backend):
    """Logits = each image's sum, repeated; records batch sizes; scripted failures and pauses."""
    name = "fake"
    image_shape = (2, 2, 3)
    num_classes = 3

    def __init__(self, script):
        self.script = script

    @property
    def max_batch(self):
        return 4

    @property
    def input_dtype(self):
        return np.float32

    def describe(self):
        return "fake"

    def run(self, batch):
        s = self.script
        if s.get("warm", 0) < 2:   # the worker's warm-up runs at batch 1 and 4
            s["warm"] = s.get("warm", 0) + 1
            return np.zeros((len(batch), 3), np.float32)
        s.setdefault("sizes", []).append(len(batch))
        if s.pop("fatal", False):
            raise BackendError("device lost", fatal=True)
        if "gate" in s:
            s["gate"].wait(5)
        return np.repeat(batch.reshape(len(batch), -1).sum(axis=1, keepdims=True), 3, axis=1)

    def close(self):
        self.script["closed"] = self.script.get("closed", 0) + 1


def engine(script, delay_ms=20.0):
    metrics = Metrics()
    worker = Worker("0", lambda: Fake(script), "device0", metrics)
    return Engine([worker], max_batch=8, max_delay_ms=delay_ms, max_queue=16, metrics=metrics, log=lambda m: None,
                  reload_pauses=(0.01, 0.05))


def images(n):
    return [np.full((2, 2, 3), i, np.float32) for i in range(n)]


def run(coroutine):
    return asyncio.run(coroutine)


def test_images_are_batched_up_to_the_backends_largest_batch():
    script = {}

    async def main():
        e = engine(script)
        await e.start()
        assert e.max_batch == 4   # the backend's limit caps MAX_BATCH
        rows = await e.infer_many(images(6))
        await e.stop()
        return rows
    rows = run(main())
    assert [float(row[0]) for row, _ in rows] == [12.0 * i for i in range(6)]
    assert script["sizes"] == [4, 2] and script["closed"] == 1


def test_a_lone_image_on_an_idle_engine_is_not_held_for_the_delay():
    async def main():
        e = engine({}, delay_ms=500)
        await e.start()
        start = time.perf_counter()
        await e.infer_many(images(1))
        took = time.perf_counter() - start
        await e.stop()
        return took
    assert run(main()) < 0.25


def test_a_device_lost_mid_batch_fails_that_batch_then_reloads():
    script = {"fatal": True}

    async def main():
        e = engine(script)
        await e.start()
        (outcome, _), = await e.infer_many(images(1))
        assert isinstance(outcome, ApiError) and outcome.code == "backend_error"
        for _ in range(200):   # the reload runs on the device's thread
            if e.devices()[0]["state"] == "ready" and e.devices()[0]["reloads"] == 1:
                break
            await asyncio.sleep(0.01)
        (row, _), = await e.infer_many(images(2)[1:])
        await e.stop()
        return row
    assert float(run(main())[0]) == 12.0
    assert script["closed"] == 2   # the lost backend, then the reloaded one at stop


def test_a_lone_image_whose_caller_leaves_keeps_the_device_busy_until_its_run_ends():
    gate = threading.Event()
    script = {"gate": gate}

    async def main():
        e = engine(script)
        await e.start()
        prepare = lambda value: np.full((2, 2, 3), value, np.float32)   # noqa: E731
        call = asyncio.ensure_future(e.infer_alone(prepare, 1.0))
        await asyncio.sleep(0.05)
        call.cancel()
        await asyncio.sleep(0.05)
        assert not call.done()                 # it waits for the run it started ...
        assert e.devices()[0]["in_flight"] == 1
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await call
        device = e.devices()[0]
        assert device["in_flight"] == 0 and device["batches"] == 1 and e.idle   # ... whose books then settle
        await e.stop()
    run(main())


def test_stop_drains_what_is_queued():
    gate = threading.Event()
    script = {"gate": gate}

    async def main():
        e = engine(script)
        await e.start()
        calls = asyncio.ensure_future(e.infer_many(images(3)))
        await asyncio.sleep(0.05)
        stopping = asyncio.ensure_future(e.stop())
        await asyncio.sleep(0.05)
        with pytest.raises(ApiError):   # no new work while draining
            await e.infer_many(images(1))
        gate.set()
        await stopping
        return await calls
    rows = run(main())
    assert [float(row[0]) for row, _ in rows] == [0.0, 12.0, 24.0]
