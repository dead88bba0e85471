"""The inference engine: one worker thread owns the backend; an asyncio micro-batcher feeds it.

The engine runs arrays and returns logits; it knows nothing of requests, image decoding or the
service's settings. Callers put (image, future) items on a bounded queue (full: 503 with
Retry-After), all of a caller's images at once. The batcher takes what is waiting and, while the
batch is short of the largest batch and callers have said more images are on their way
(expecting()), waits up to the batching delay for them, then hands the batch to the worker thread;
while the device works, new items queue up and form the next batch. A lone image that finds the
engine idle can skip all that (infer_alone). A failed run fails that batch only (503); a fatal
failure (device lost) also reloads the backend on the worker thread before the next batch.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import threading
import time

import numpy as np

from .backends.base import BackendError
from .errors import unavailable


class Item:
    __slots__ = ("image", "future", "enqueued", "timings")

    def __init__(self, image, future):
        self.image, self.future, self.enqueued, self.timings = image, future, time.perf_counter(), {}


class Engine:
    def __init__(self, load_backend, *, max_batch, max_delay_ms, max_queue, metrics, log, thread_name="device0"):
        """load_backend: called with no arguments on the worker thread, returns a Backend (again
        after a fatal error); max_batch caps a run below the backend's own limit; max_delay_ms is
        the longest wait for expected images; max_queue bounds the images waiting."""
        self.load_backend = load_backend
        self.max_delay_ms, self.max_queue, self._max_batch = max_delay_ms, max_queue, max_batch
        self.metrics, self.log = metrics, log
        self.backend = None
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._queue = collections.deque()
        self._wakeup = None
        self._batcher = None
        self._stopping = False
        self._in_flight = 0
        self._expected = 0   # images callers are preparing and will queue shortly (expecting())
        self.worker_thread = None

    # --- worker-thread side ------------------------------------------------------------------
    def _load(self):
        self.worker_thread = threading.current_thread().name
        self.backend = self.load_backend()
        return self.backend

    def _warm_up(self):
        for n in sorted({1, self.backend.max_batch}):
            self.backend.run(np.zeros((n,) + tuple(self.backend.image_shape), self.backend.input_dtype))

    def _run(self, batch):
        if self.backend is None:  # the reload after a fatal error failed: try again first
            self._reload()
        return self.backend.run(batch)

    def _reload(self):
        self._close()
        self._load()
        self._warm_up()

    def _close(self):
        try:
            if self.backend is not None:
                self.backend.close()
        finally:
            self.backend = None

    # --- event-loop side ---------------------------------------------------------------------
    async def start(self):
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._worker, self._load)
        await loop.run_in_executor(self._worker, self._warm_up)
        self._wakeup = asyncio.Event()
        self._batcher = asyncio.ensure_future(self._batch_loop())
        self.log("backend %s on worker thread %s, max batch %d, max delay %g ms"
                 % (self.backend.describe(), self.worker_thread, self.max_batch, self.max_delay_ms))

    @property
    def max_batch(self):
        return min(self._max_batch, self.backend.max_batch) if self.backend else self._max_batch

    @property
    def input_dtype(self):
        return self.backend.input_dtype if self.backend else np.float32

    @property
    def idle(self):
        """Nothing queued, expected or on the device."""
        return not self._queue and not self._in_flight and not self._expected

    @property
    def depth(self):
        return len(self._queue)

    @contextlib.contextmanager
    def expecting(self, images):
        """Wrap the preparation of `images` images a caller will queue next: while any are expected,
        the batcher holds a short batch for them (up to the batching delay); without them it never
        waits. Counted in images, the batcher's own unit, so the engine needs no notion of a request."""
        self._expected += images
        try:
            yield
        finally:
            self._expected -= images
            if self._wakeup is not None:
                self._wakeup.set()

    async def infer_many(self, images):
        """[(logits row or ApiError, timings)] for preprocessed images, queued together: a caller's
        images are admitted whole or refused whole (503 queue_full), never half queued."""
        if self._stopping or self._batcher is None:
            raise unavailable("not_ready", "the model is not serving (starting or shutting down)")
        if len(self._queue) + len(images) > self.max_queue:
            raise unavailable("queue_full", "%d images already waiting; retry shortly" % len(self._queue))
        loop = asyncio.get_running_loop()
        items = [Item(image, loop.create_future()) for image in images]
        self._queue.extend(items)
        self.metrics.queue_depth.set(len(self._queue))
        self._wakeup.set()
        outcomes = await asyncio.gather(*[item.future for item in items], return_exceptions=True)
        return [(outcome, item.timings) for outcome, item in zip(outcomes, items)]

    async def infer_alone(self, prepare, *args):
        """For a caller that found the engine idle: one image, made by `prepare(*args)` and run at
        batch 1 in one hop on the device thread, two thread hand-offs and the batcher fewer (the
        lone-image path; docs/api.md has the measurement).

        `prepare` is data to the engine, as an image array is: a pure function of its arguments
        (the decoder in images.model_input, say), never a method of the caller's objects, so the
        engine depends on no caller and the device thread touches no request state. The caller
        bounds its cost, since anything arriving meanwhile waits behind it. What `prepare` raises
        reaches the caller unchanged, and the model does not run.
        Returns (logits row, {"preprocess", "queue", "inference"} in seconds)."""
        if self._stopping or self._batcher is None:
            raise unavailable("not_ready", "the model is not serving (starting or shutting down)")

        def run():
            start = time.perf_counter()
            image = prepare(*args)
            ran = time.perf_counter()
            row = self._run(image[np.newaxis])[0]
            return row, {"preprocess": ran - start, "queue": 0.0, "inference": time.perf_counter() - ran}
        self._in_flight += 1
        loop = asyncio.get_running_loop()
        try:
            row, timings = await loop.run_in_executor(self._worker, run)
        except BackendError as e:
            raise self._failed(loop, e, 1)
        finally:
            self._in_flight -= 1
        self.metrics.batch_size.observe(1)
        self.metrics.images.inc()
        return row, timings

    def _failed(self, loop, error, images):
        """Account for a failed backend run; after a fatal one, queue a reload on the device thread
        (ahead of any later batch: the executor has one thread). Returns the error to answer with."""
        self.metrics.backend_errors.labels(fatal=str(error.fatal).lower()).inc()
        self.log("backend error on a batch of %d: %s" % (images, error))
        if error.fatal:
            self.log("reloading the backend after a fatal error")
            loop.run_in_executor(self._worker, self._reload).add_done_callback(self._reloaded)
        return unavailable("backend_error", "inference failed: %s" % error)

    def _reloaded(self, future):
        error = future.exception()
        self.log("backend reloaded" if error is None else
                 "backend reload failed: %s; the next batch will fail and reload again" % error)

    async def _batch_loop(self):
        loop = asyncio.get_running_loop()
        delay = self.max_delay_ms / 1000.0
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if len(self._queue) < self.max_batch and delay > 0:
                deadline = self._queue[0].enqueued + delay
                while len(self._queue) < self.max_batch and self._expected > 0:
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), remaining)
                    except asyncio.TimeoutError:
                        break
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            self.metrics.queue_depth.set(len(self._queue))
            await self._process(loop, batch)

    async def _process(self, loop, batch):
        start = time.perf_counter()
        for item in batch:
            item.timings["queue"] = start - item.enqueued
        stacked = np.stack([item.image for item in batch])
        self._in_flight += len(batch)
        try:
            logits = await loop.run_in_executor(self._worker, self._run, stacked)
        except BackendError as e:
            error = self._failed(loop, e, len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
            return
        except Exception as e:  # a bug, not bad input: fail the batch, keep serving
            self.metrics.backend_errors.labels(fatal="false").inc()
            self.log("unexpected error running a batch: %r" % e)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(unavailable("backend_error", "inference failed"))
            return
        finally:
            self._in_flight -= len(batch)
        seconds = time.perf_counter() - start
        self.metrics.batch_size.observe(len(batch))
        self.metrics.images.inc(len(batch))
        for item, row in zip(batch, logits):
            item.timings["inference"] = seconds
            if not item.future.done():
                item.future.set_result(row)

    async def stop(self, drain_seconds=30.0):
        """Stop taking work, finish what is queued or running, then close the backend on its thread."""
        self._stopping = True
        deadline = time.perf_counter() + drain_seconds
        while (self._queue or self._in_flight) and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        if self._batcher is not None:
            self._batcher.cancel()
            try:
                await self._batcher
            except (asyncio.CancelledError, Exception):
                pass
        for item in list(self._queue):
            if not item.future.done():
                item.future.set_exception(unavailable("shutting_down", "the server is shutting down"))
        self._queue.clear()
        await asyncio.get_running_loop().run_in_executor(self._worker, self._close)
        self._worker.shutdown(wait=True)
