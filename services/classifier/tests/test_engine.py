"""The engine without HTTP: batches up to the largest batch, no wait when nothing more is expected, a
device lost mid-batch (its batch answers 503, the device reloads, the next run succeeds), jobs made
on their executor or, lone on an idle engine, in one hop on the device thread, callers that leave
(the device's books settle when the run ends; jobs being made are waited for), and a drain on stop."""
import asyncio
import concurrent.futures
import threading
import time

import numpy as np
import pytest

from classifier.backends.base import Backend, BackendError
from classifier.engine import Engine, Job
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


def make(value):
    if value < 0:
        raise ValueError("not an image")
    return np.full((2, 2, 3), value, np.float32)


def test_a_lone_job_on_an_idle_engine_takes_one_hop_on_the_device_thread():
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pool")
    threads = []

    def where(value):
        threads.append(threading.current_thread().name)
        return make(value)

    async def main():
        e = engine({})
        await e.start()
        (row, timings), = await e.infer([Job(where, (1.0,), pool, one_hop=True)])
        assert float(row[0]) == 12.0 and set(timings) == {"preprocess", "queue", "inference"}
        (row, _), = await e.infer([Job(where, (2.0,), pool)])   # not allowed one hop: made on the pool
        assert float(row[0]) == 24.0
        (bad, timings), = await e.infer([Job(make, (-1.0,), pool, one_hop=True)])
        assert isinstance(bad, ValueError) and set(timings) == {"preprocess"}   # the model never ran for it
        await e.stop()
    run(main())
    pool.shutdown()
    assert threads[0].startswith("device0") and threads[1].startswith("pool")


def test_jobs_are_made_on_their_executor_then_batched_and_a_bad_one_fails_alone():
    pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="pool")
    script = {}

    async def main():
        e = engine(script)
        await e.start()
        outcomes = await e.infer([Job(make, (v,), pool, one_hop=True) for v in (1.0, -1.0, 2.0)])
        await e.stop()
        return outcomes
    (first, _), (bad, _), (third, timings) = run(main())
    pool.shutdown()
    assert float(first[0]) == 12.0 and isinstance(bad, ValueError) and float(third[0]) == 24.0
    assert script["sizes"] == [2] and set(timings) == {"preprocess", "queue", "inference"}


def test_a_lone_job_whose_caller_leaves_keeps_the_device_busy_until_its_run_ends():
    gate = threading.Event()
    script = {"gate": gate}
    pool = concurrent.futures.ThreadPoolExecutor(1)

    async def main():
        e = engine(script)
        await e.start()
        call = asyncio.ensure_future(e.infer([Job(make, (1.0,), pool, one_hop=True)]))
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
    pool.shutdown()


def test_jobs_whose_caller_leaves_are_waited_for_while_they_are_made():
    started, release = threading.Event(), threading.Event()
    pool = concurrent.futures.ThreadPoolExecutor(1)

    def slow(value):
        started.set()
        release.wait(5)
        return make(value)

    async def main():
        e = engine({})
        await e.start()
        call = asyncio.ensure_future(e.infer([Job(slow, (1.0,), pool), Job(slow, (2.0,), pool)]))
        while not started.is_set():
            await asyncio.sleep(0.01)
        call.cancel()
        await asyncio.sleep(0.05)
        assert not call.done()   # the first is being made on the pool: held until it ends; the second never starts
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await call
        await e.stop()
    run(main())
    pool.shutdown()


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
