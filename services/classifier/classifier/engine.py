"""The inference engine: one worker thread owns the backend; an asyncio micro-batcher feeds it.

Requests put (image, future) items on a bounded queue (full: 503 with Retry-After), all of a
request's images at once. The batcher takes what is waiting and, while the batch is short of
MAX_BATCH and other requests are still being preprocessed (so more images are on their way), waits
up to MAX_DELAY_MS for them, then hands the batch to the worker thread; while the device works, new
requests queue up and form the next batch. A request for one small image that finds the engine idle
skips all that: it is preprocessed and run in one hop on the worker thread (infer_alone; the caller
bounds the image's size). A failed run fails that batch only (503); a fatal failure (device lost)
also reloads the backend on the worker thread before the next batch.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import threading
import time

import numpy as np

from . import backends
from .backends.base import BackendError
from .errors import unavailable


class Item:
    __slots__ = ("image", "future", "enqueued", "timings")

    def __init__(self, image, future):
        self.image, self.future, self.enqueued, self.timings = image, future, time.perf_counter(), {}


class Engine:
    def __init__(self, bundle, settings, metrics, log, backend_factory=None):
        self.bundle, self.settings, self.metrics, self.log = bundle, settings, metrics, log
        self.backend_factory = backend_factory or backends.create
        self.backend = None
        self._worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="device%d" % settings.DEVICE_ID)
        self._queue = collections.deque()
        self._wakeup = None
        self._batcher = None
        self._stopping = False
        self._in_flight = 0
        self._arriving = 0   # requests being preprocessed: images that will be queued shortly
        self.worker_thread = None

    # --- worker-thread side ------------------------------------------------------------------
    def _load(self):
        self.worker_thread = threading.current_thread().name
        self.backend = self.backend_factory(self.bundle, self.settings, self.log)
        return self.backend

    def _warm_up(self):
        h, w = self.bundle.preprocessing.size
        for n in sorted({1, self.backend.max_batch}):
            self.backend.run(np.zeros((n, h, w, 3), self.backend.input_dtype))

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
                 % (self.backend.describe(), self.worker_thread, self.max_batch, self.settings.MAX_DELAY_MS))

    @property
    def max_batch(self):
        return min(self.settings.MAX_BATCH, self.backend.max_batch) if self.backend else self.settings.MAX_BATCH

    @property
    def input_dtype(self):
        return self.backend.input_dtype if self.backend else np.float32

    @property
    def idle(self):
        """Nothing queued, being preprocessed or on the device."""
        return not self._queue and not self._in_flight and not self._arriving

    @property
    def depth(self):
        return len(self._queue)

    @contextlib.contextmanager
    def arriving(self):
        """Wrap a request's preprocessing: the batcher waits for it (up to MAX_DELAY_MS) only then."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1
            if self._wakeup is not None:
                self._wakeup.set()

    async def infer(self, image):
        """Logits row and timings for one preprocessed image; raises ApiError(503) when full, stopping or failed."""
        (outcome, timings), = await self.infer_many([image])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome, timings

    async def infer_many(self, images):
        """[(logits row or ApiError, timings)] for preprocessed images, queued together: a request's
        images are admitted whole or refused whole (503 queue_full), never half queued."""
        if self._stopping or self._batcher is None:
            raise unavailable("not_ready", "the model is not serving (starting or shutting down)")
        if len(self._queue) + len(images) > self.settings.MAX_QUEUE:
            raise unavailable("queue_full", "%d images already waiting; retry shortly" % len(self._queue))
        loop = asyncio.get_running_loop()
        items = [Item(image, loop.create_future()) for image in images]
        self._queue.extend(items)
        self.metrics.queue_depth.set(len(self._queue))
        self._wakeup.set()
        outcomes = await asyncio.gather(*[item.future for item in items], return_exceptions=True)
        return [(outcome, item.timings) for outcome, item in zip(outcomes, items)]

    async def infer_alone(self, work):
        """For a request that finds the engine idle: `work()` (preprocessing, returning the image or
        None) and the model run in one hop on the device thread, two thread hand-offs and the batcher
        fewer. The caller bounds what `work` may cost, since anything arriving meanwhile waits
        behind it. Returns (logits row or None, {"queue", "inference"})."""
        if self._stopping or self._batcher is None:
            raise unavailable("not_ready", "the model is not serving (starting or shutting down)")

        def run():
            image = work()
            if image is None:
                return None, {}
            start = time.perf_counter()
            return self._run(image[np.newaxis])[0], {"queue": 0.0, "inference": time.perf_counter() - start}
        self._in_flight += 1
        loop = asyncio.get_running_loop()
        try:
            row, timings = await loop.run_in_executor(self._worker, run)
        except BackendError as e:
            raise self._failed(loop, e, 1)
        finally:
            self._in_flight -= 1
        if row is not None:
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
        delay = self.settings.MAX_DELAY_MS / 1000.0
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if len(self._queue) < self.max_batch and delay > 0:
                deadline = self._queue[0].enqueued + delay
                while len(self._queue) < self.max_batch and self._arriving > 0:
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
