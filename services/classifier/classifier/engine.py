"""The inference engine: an asyncio micro-batcher in front of a pool of device workers (workers.py).

The engine runs arrays and returns logits; it knows nothing of requests, image decoding, kinds of
backend or the service's settings. Callers put (image, future) items on a bounded queue (full: 503
with Retry-After), all of a caller's images at once. Whenever a device is idle, the batcher takes
what is waiting and, while the batch is short of the largest batch and either callers have said
more images are on their way (jobs being made) or another device is busy (the pool is under load, and
a device that takes one image of a burst is a device lost for a whole run), waits up to the
batching delay for more; then it hands the batch to that device and goes on: four devices run four
batches at once, and while they run, new items queue up and form the next batches. An idle pool
never holds an image back. Of several idle devices the batch goes to the one idle
longest, so work spreads over all of them.

Callers give the engine jobs (infer): a pure function that makes one image, and the executor that
makes it. The engine makes them there and queues what they make, except for a lone job its caller
allows one hop: finding every device idle, the engine makes it and runs it on the device that ran
last, on its thread in one step, two thread hand-offs and the batcher fewer. Callers with arrays already (tensors) queue
them directly (infer_many).

Failures stay with their device. A failed run fails its batch only (503). A fatal one (device lost)
also takes the device out of the pool and reloads it on its own thread, again after a growing pause
while that fails, as the other devices keep serving. Queued images wait while some device serves or
is being (re)loaded; when none is, they are refused at once (503 not_ready) rather than held.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import time

import numpy as np

from .backends.base import BackendError
from .errors import ServiceError, unavailable

# Pauses between reload attempts of a device whose reload failed: the first, doubling up to the last.
RELOAD_PAUSES = (0.5, 30.0)


class EngineError(ServiceError, RuntimeError):
    """A device could not be loaded at start-up."""


def backend_error(error):
    """The answer to the images of a failed run."""
    return unavailable("backend_error", "inference failed: %s" % error)


class Job:
    """One image for the engine to make and run. `make(*args)` returns the model input: a pure
    function of its arguments (the Preprocessor's transform and an upload's bytes), never a method of
    the caller's objects, so the engine depends on no caller and no thread touches request state.
    `where`: the executor that makes it; `one_hop`: the caller allows it to be made on an idle
    device's thread right before its run (the caller bounds its cost: that device's next batch waits
    behind it)."""
    __slots__ = ("make", "args", "where", "one_hop")

    def __init__(self, make, args, where, one_hop=False):
        self.make, self.args, self.where, self.one_hop = make, args, where, one_hop


def _made(job):
    """On the job's executor: (image or what make raised, {"preprocess": seconds})."""
    start = time.perf_counter()
    try:
        image = job.make(*job.args)
    except Exception as e:   # the caller's to judge: a bad image, or a bug
        image = e
    return image, {"preprocess": time.perf_counter() - start}


def _run_stacked(worker, images):
    """On the worker's thread: the batch stacked and run. Stacking copies every image (4.8 MB for 8 at
    224 x 224): on the event loop it held every connection for that long."""
    return worker.run(np.stack(images))


class Item:
    __slots__ = ("image", "future", "enqueued", "timings")

    def __init__(self, image, future):
        self.image, self.future, self.enqueued, self.timings = image, future, time.perf_counter(), {}


class Engine:
    def __init__(self, workers, *, max_batch, max_delay_ms, max_queue, metrics, log, reload_pauses=RELOAD_PAUSES):
        """workers: the devices (workers.Worker), each loading its backend on its own thread;
        max_batch caps a run below the backends' own limit; max_delay_ms is the longest wait for
        expected images; max_queue bounds the images waiting."""
        self.workers = list(workers)
        self.max_delay_ms, self.max_queue, self._max_batch = max_delay_ms, max_queue, max_batch
        self.metrics, self.log = metrics, log
        self.reload_pauses = reload_pauses
        self._queue = collections.deque()
        self._wakeup = None
        self._batcher = None
        self._stopping = False
        self._expected = 0   # images of jobs being made, to be queued shortly (_expecting())
        self._tasks = set()  # batches on devices and reloads: kept until done
        self._model = None   # (max batch, input dtype) of the loaded backends: the same file on every device

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self):
        """Load every device at once, each on its own thread; EngineError naming each device that
        failed (the loaded ones stay loaded until stop())."""
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*[loop.run_in_executor(w.executor, w.load) for w in self.workers],
                                       return_exceptions=True)
        failed = []
        for worker, result in zip(self.workers, results):
            if isinstance(result, Exception):
                self._set_state(worker, "failed", str(result))
                failed.append("device %s: %s" % (worker.label, result))
            else:
                self._set_state(worker, "ready")
        if failed:
            raise EngineError("; ".join(failed))
        backends = [w.backend for w in self.workers]
        self._model = (min(b.max_batch for b in backends), backends[0].input_dtype)
        self._wakeup = asyncio.Event()
        self._batcher = asyncio.ensure_future(self._batch_loop())
        for worker in self.workers:
            self.log("device %s: %s on thread %s" % (worker.label, worker.backend.describe(), worker.thread))
        self.log("%d device(s), max batch %d, max delay %g ms" % (len(self.workers), self.max_batch, self.max_delay_ms))

    async def stop(self, drain_seconds=30.0):
        """Stop taking work, finish what is queued or running, stop reloading, then close every
        device's backend on its own thread (all at once) and end the threads."""
        self._stopping = True
        deadline = time.perf_counter() + drain_seconds
        while (self._queue or self._busy()) and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        if self._batcher is not None:
            self._batcher.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*([self._batcher] if self._batcher else []), *self._tasks, return_exceptions=True)
        for item in list(self._queue):
            if not item.future.done():
                item.future.set_exception(unavailable("shutting_down", "the server is shutting down"))
        self._queue.clear()
        loop = asyncio.get_running_loop()
        # a close queues behind whatever still runs on that thread (a run past the drain, a reload)
        await asyncio.gather(*[loop.run_in_executor(w.executor, w.close) for w in self.workers],
                             return_exceptions=True)
        for worker in self.workers:
            self._set_state(worker, "stopped")
            worker.executor.shutdown(wait=True)

    # --- what callers read -------------------------------------------------------------------
    @property
    def max_batch(self):
        return min(self._max_batch, self._model[0]) if self._model else self._max_batch

    @property
    def input_dtype(self):
        return self._model[1] if self._model else np.float32

    @property
    def serving(self):
        """Whether some device takes batches now."""
        return any(w.state == "ready" for w in self.workers)

    @property
    def backend(self):
        """A loaded backend (a serving one first), for what all devices share: its kind, the model."""
        loaded = [w for w in self.workers if w.backend is not None]
        loaded.sort(key=lambda w: w.state != "ready")
        return loaded[0].backend if loaded else None

    @property
    def idle(self):
        """Nothing queued, expected or running, and a device ready: when a lone job may take one hop.
        A lone job while other devices are busy goes through the batcher instead, which may add it to
        a batch rather than spend a whole device run on it."""
        return not self._queue and not self._expected and not self._busy() and any(w.idle for w in self.workers)

    @property
    def depth(self):
        return len(self._queue)

    def devices(self):
        return [w.status() for w in self.workers]

    def _busy(self):
        return any(w.in_flight for w in self.workers)

    def _coming(self):
        """Whether a device that does not serve now is being loaded, so queued images may wait for it."""
        return any(w.state in ("loading", "reloading") for w in self.workers)

    def _not_serving(self):
        why = "; ".join("device %s %s%s" % (w.label, w.state, ": %s" % w.error if w.error else "")
                        for w in self.workers)
        return unavailable("not_ready", "no device is serving (%s); retrying" % why, retry_after=2)

    def _idle_worker(self, warmest=False):
        """The idle worker idle longest (batches spread over every device), or with warmest=True the
        one that ran last: a lone image on an idle engine finds that worker's threads still awake and
        its caches warm (on ONNX Runtime two workers taking turns left one's threads spinning while
        the other ran: 1.7x the p50 at one client)."""
        idle = [w for w in self.workers if w.idle]
        if not idle:
            return None
        return (max if warmest else min)(idle, key=lambda w: w.finished)

    # --- the callers' side -------------------------------------------------------------------
    @contextlib.contextmanager
    def _expecting(self, images):
        """Wrap the making of `images` jobs' images, which will be queued next: while any are expected,
        the batcher holds a short batch for them (up to the batching delay); without them it never
        waits. Counted in images, the batcher's own unit, so the engine needs no notion of a request."""
        self._expected += images
        try:
            yield
        finally:
            self._expected -= images
            if self._wakeup is not None:
                self._wakeup.set()

    def _check_open(self):
        if self._stopping or self._batcher is None:
            raise unavailable("not_ready", "the model is not serving (starting or shutting down)")
        if not self.serving and not self._coming():
            raise self._not_serving()

    async def infer_many(self, images):
        """[(logits row or ApiError, timings)] for preprocessed images, queued together: a caller's
        images are admitted whole or refused whole (503 queue_full), never half queued."""
        self._check_open()
        if len(self._queue) + len(images) > self.max_queue:
            raise unavailable("queue_full", "%d images already waiting; retry shortly" % len(self._queue))
        loop = asyncio.get_running_loop()
        items = [Item(image, loop.create_future()) for image in images]
        self._queue.extend(items)
        self.metrics.queue_depth.set(len(self._queue))
        self._wakeup.set()
        outcomes = await asyncio.gather(*[item.future for item in items], return_exceptions=True)
        return [(outcome, item.timings) for outcome, item in zip(outcomes, items)]

    async def infer(self, jobs):
        """[(logits row or exception, timings)] for `jobs`, in order: each made on its executor, then
        queued together with infer_many; a lone job allowed one hop that finds the engine idle is
        made and run on the idle device's thread at once. What a job's make raised is its outcome
        (the model does not run for it); a failed run's is an ApiError. Cancelled (the caller
        left), it returns only once no thread works for it, so what the caller holds for the jobs
        (memory) stays held while it is used."""
        self._check_open()
        if len(jobs) == 1 and jobs[0].one_hop and self.idle:
            return [await self._one_hop(self._idle_worker(warmest=True), jobs[0])]
        with self._expecting(len(jobs)):
            made = await _wait_all([job.where.submit(_made, job) for job in jobs])
        ready = [i for i, (image, _) in enumerate(made) if not isinstance(image, Exception)]
        outcomes = list(made)
        if ready:
            for i, (row, timings) in zip(ready, await self.infer_many([made[i][0] for i in ready])):
                outcomes[i] = (row, dict(made[i][1], **timings))
        return outcomes

    async def _one_hop(self, worker, job):
        """Make and run `job` at batch 1 on `worker`'s thread in one step; its books are kept when
        the run ends, even if the caller stops waiting."""
        def run():
            image, timings = _made(job)
            if isinstance(image, Exception):
                return image, timings
            ran = time.perf_counter()
            row = worker.run(image[np.newaxis], alone=True)[0]   # the engine is idle: every core is its
            return row, dict(timings, queue=0.0, inference=time.perf_counter() - ran)

        def finished(future):
            self._done(worker, 1, start)
            error = None if future.cancelled() else future.exception()
            if isinstance(error, BackendError):
                self._failed(worker, error, 1)
            elif error is None and not isinstance(future.result()[0], Exception):
                self._succeeded(worker, 1)
        worker.begin(1)
        start = time.perf_counter()
        future = asyncio.get_running_loop().run_in_executor(worker.executor, run)
        future.add_done_callback(finished)
        try:
            return await _shielded(future)
        except BackendError as e:
            return backend_error(e), {}

    # --- the batcher -------------------------------------------------------------------------
    async def _batch_loop(self):
        delay = self.max_delay_ms / 1000.0
        while True:
            worker = self._idle_worker() if self._queue else None
            if worker is None:
                if self._queue and not self.serving and not self._coming():
                    self._fail_queued(self._not_serving())
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if len(self._queue) < self.max_batch and delay > 0:
                deadline = self._queue[0].enqueued + delay
                while len(self._queue) < self.max_batch and (self._expected > 0 or self._busy()):
                    remaining = deadline - time.perf_counter()
                    if remaining <= 0:
                        break
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), remaining)
                    except asyncio.TimeoutError:
                        break
                worker = self._idle_worker()   # the one chosen may have been taken (one hop) or lost
                if worker is None or not self._queue:
                    continue
            batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            self.metrics.queue_depth.set(len(self._queue))
            worker.begin(len(batch))   # taken now, so the next turn picks another device
            self._spawn(self._process(worker, batch))

    def _spawn(self, coroutine):
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _fail_queued(self, error):
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(error)
        self.metrics.queue_depth.set(0)

    async def _process(self, worker, batch):
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        for item in batch:
            item.timings["queue"] = start - item.enqueued
        try:
            logits = await loop.run_in_executor(worker.executor, _run_stacked, worker, [item.image for item in batch])
        except BackendError as e:
            error = self._failed(worker, e, len(batch))
            self._settle(batch, error=error)
            return
        except asyncio.CancelledError:   # stop() after the drain: the batch is answered as shut down
            self._settle(batch, error=unavailable("shutting_down", "the server is shutting down"))
            raise
        except Exception as e:  # a bug, not bad input: fail the batch, keep serving
            self._count_failure(worker, fatal=False)
            self.log("device %s: unexpected error running a batch: %r" % (worker.label, e))
            self._settle(batch, error=unavailable("backend_error", "inference failed"))
            return
        finally:
            self._done(worker, len(batch), start)
        seconds = time.perf_counter() - start
        self._succeeded(worker, len(batch))
        for item in batch:
            item.timings["inference"] = seconds
        self._settle(batch, rows=logits)

    @staticmethod
    def _settle(batch, rows=None, error=None):
        for i, item in enumerate(batch):
            if not item.future.done():
                if error is not None:
                    item.future.set_exception(error)
                else:
                    item.future.set_result(rows[i])

    # --- accounting: the workers keep their own books; the engine, the service-wide ones ------
    def _done(self, worker, images, start):
        """A run ended, well or not: the device is free again (unless it failed fatally)."""
        worker.end(images, start)
        if self._wakeup is not None:
            self._wakeup.set()

    def _succeeded(self, worker, images):
        worker.succeeded(images)
        self.metrics.batch_size.observe(images)
        self.metrics.images.inc(images)

    def _count_failure(self, worker, fatal):
        worker.failed(fatal)
        self.metrics.backend_errors.labels(fatal=str(fatal).lower()).inc()

    def _failed(self, worker, error, images):
        """Account for a failed run on `worker`; after a fatal one, take the device out of the pool
        and reload it on its own thread. Returns the error to answer that run's images with."""
        self._count_failure(worker, error.fatal)
        self.log("device %s: backend error on a batch of %d: %s" % (worker.label, images, error))
        if error.fatal and worker.state == "ready" and not self._stopping:
            self._set_state(worker, "reloading", str(error))
            self._spawn(self._reload(worker))
        return backend_error(error)

    async def _reload(self, worker):
        loop = asyncio.get_running_loop()
        pause, longest = self.reload_pauses
        while True:
            self.log("device %s: reloading the backend after: %s" % (worker.label, worker.error))
            try:
                await loop.run_in_executor(worker.executor, worker.reload)
            except Exception as e:
                self._set_state(worker, "failed", "reload failed: %s" % e)
                self.log("device %s: reload failed: %s; next attempt in %g s" % (worker.label, e, pause))
                await asyncio.sleep(pause)
                pause = min(pause * 2, longest)
                self._set_state(worker, "reloading", worker.error)
                continue
            worker.reloaded()
            self._set_state(worker, "ready")
            self.log("device %s: reloaded, serving again" % worker.label)
            return

    def _set_state(self, worker, state, error=None):
        worker.set_state(state, error)
        if self._wakeup is not None:
            self._wakeup.set()   # the batcher may now use this device, or must refuse what waits


async def _shielded(future):
    """Await `future` (a run on a device's thread); cancelled, wait for it to end before giving up."""
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise


async def _wait_all(futures):
    """The results of concurrent.futures `futures`; cancelled, cancel those not started and wait
    for those running before giving up."""
    try:
        return await asyncio.gather(*[asyncio.wrap_future(f) for f in futures])
    except asyncio.CancelledError:
        running = [f for f in futures if not f.cancel()]   # those not started never will
        if running:
            await asyncio.wait([asyncio.wrap_future(f) for f in running])
        raise
