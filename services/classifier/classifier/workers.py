"""One worker per device: its own thread, and on that thread its backend (pyACL binds a context, and
with it the loaded model and its buffers, to the thread that made it). The engine decides what a
worker runs and when; a worker only loads, runs and closes its backend, on its own thread, and
keeps the counts the service reports per device.
"""
from __future__ import annotations

import concurrent.futures
import threading
import time

import numpy as np

from .backends.base import Backend

# What a worker is doing: `loading` (first load and warm-up), `ready` (takes batches), `reloading`
# (after a fatal error, on its thread), `failed` (a reload failed; the engine retries it), `stopped`.
STATES = ("loading", "ready", "reloading", "failed", "stopped")


class Worker:
    def __init__(self, label, load_backend, thread_name, metrics):
        """label: the device as metrics and /v1/model name it ("0", or "cpu0" for an ONNX Runtime
        worker); load_backend: called with no arguments on the worker's thread, returns a Backend
        (again after a fatal error); thread_name: the prefix of that thread's name; metrics: the
        service's Metrics, whose per-device series this worker keeps."""
        self.label = label
        self.metrics = metrics
        self.load_backend = load_backend
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self.thread = None
        self.backend = None
        self.set_state("loading")  # error: why the worker is not ready (the fatal error, the failed reload)
        self.in_flight = 0         # images on the device now
        self.finished = 0.0        # when its last run ended (perf_counter), to spread work over idle devices
        self.batches = self.images = self.failures = self.reloads = 0
        self.busy_seconds = 0.0

    @property
    def idle(self):
        return self.state == "ready" and not self.in_flight

    def status(self):
        """This device for /v1/model and /readyz."""
        return {"device": self.label, "state": self.state, "backend": self.backend.describe() if self.backend else None,
                "in_flight": self.in_flight, "batches": self.batches, "images": self.images,
                "busy_seconds": round(self.busy_seconds, 3), "failures": self.failures, "reloads": self.reloads,
                "error": self.error}

    # --- its books, on the event loop (the engine reports what it had the device do) ---------------
    def begin(self, images):
        self.in_flight += images

    def end(self, images, start):
        """A run that began at `start` (perf_counter) ended, well or not."""
        self.in_flight -= images
        self.finished = time.perf_counter()
        seconds = self.finished - start
        self.busy_seconds += seconds
        self.metrics.device_busy.labels(self.label).inc(seconds)

    def succeeded(self, images):
        self.batches += 1
        self.images += images
        self.metrics.device_batches.labels(self.label).inc()
        self.metrics.device_images.labels(self.label).inc(images)

    def failed(self, fatal):
        self.failures += 1
        self.metrics.device_failures.labels(self.label, str(fatal).lower()).inc()

    def reloaded(self):
        self.reloads += 1

    def set_state(self, state, error=None):
        self.state, self.error = state, error
        self.metrics.device_ready.labels(self.label).set(1 if state == "ready" else 0)

    # --- on the worker's thread (the engine submits these to self.executor) ------------------------
    def load(self):
        """Load the backend and run it once at every batch size the engine will use (1 and the largest),
        so the first requests pay no first-run costs."""
        self.thread = threading.current_thread().name
        self.backend = self.load_backend()
        shape, dtype = tuple(self.backend.image_shape), self.backend.input_dtype
        for n in sorted({1, self.backend.max_batch}):
            self.backend.run(np.zeros((n,) + shape, dtype))
        if type(self.backend).run_alone is not Backend.run_alone:   # a lone image's own model
            self.backend.run_alone(np.zeros((1,) + shape, dtype))
        return self.backend

    def run(self, batch, alone=False):
        """Run `batch`; alone: one image while no other worker runs (Backend.run_alone)."""
        return self.backend.run_alone(batch) if alone else self.backend.run(batch)

    def reload(self):
        self.close()
        return self.load()

    def close(self):
        """Release the backend (a backend's close never raises; it logs what failed)."""
        try:
            if self.backend is not None:
                self.backend.close()
        finally:
            self.backend = None
