"""The running model behind the routers: settings turned into the bundle, the engine on its backend,
the decoding pool, the memory budget and the pipeline, plus readiness. Everything that reads the
service's Settings to build an object does it here, so the objects themselves take explicit
arguments."""
from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
import signal

from mbv3 import bundle
from mbv3.fast_preprocess import REUSED_BYTES

from . import backends
from .bodies import BodyLimits, while_connected
from .budget import BodyMemory, MemoryBudget, Slots
from .engine import Engine
from .errors import unavailable
from .images import Preprocessor
from .metrics import Metrics
from .pipeline import Pipeline
from .settings import SettingsError, available_cpus
from .workers import Worker

log = logging.getLogger("classifier")


class Service:
    def __init__(self, settings, backend_factory=None):
        """backend_factory: backends.create's signature (tests inject backends through it)."""
        s = self.settings = settings
        self.metrics = Metrics()
        self.bundle = bundle.load(s.MODEL_DIR, verify=True)  # schema, sha256s, labels; shapes at load
        try:
            self.plan = backends.plan(backend=s.BACKEND, device_ids=s.device_ids, cpu_workers=s.CPU_WORKERS,
                                      threads=s.THREADS, max_batch=s.MAX_BATCH, cpus=available_cpus(),
                                      info=self.bundle.info, precision=s.PRECISION)
        except backends.BackendError as e:
            raise SettingsError(str(e))
        if self.plan.why:
            log.info(self.plan.why)
        log.info("precision: %s, %s (%s)", self.plan.precision.name, self.plan.precision.file, self.plan.precision.why)
        self.engine = Engine(self._workers(backend_factory or backends.create), max_batch=s.MAX_BATCH,
                             max_delay_ms=s.MAX_DELAY_MS, max_queue=s.MAX_QUEUE, metrics=self.metrics, log=log.info)
        self.pool = concurrent.futures.ThreadPoolExecutor(s.preprocess_workers, thread_name_prefix="preprocess")
        self.large_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="preprocess-large")
        self.budget = MemoryBudget(s.PREPROCESS_MEMORY_MB * 1024 * 1024, s.MAX_WAIT_SECONDS, self.metrics)
        try:
            self.images = Preprocessor(self.bundle.preprocessing, self.pool, s.MAX_IMAGES_PER_REQUEST,
                                       s.MAX_IMAGE_PIXELS, s.MAX_REQUEST_PIXELS, s.PREPROCESSING,
                                       large_pool=self.large_pool, large_bytes=self.budget.small)
        except ImportError as e:
            raise SettingsError("PREPROCESSING=%s: %s" % (s.PREPROCESSING, e))
        self.slots = Slots(s.MAX_CONCURRENT_REQUESTS)
        self.bodies = BodyMemory(s.BODY_MEMORY_MB * 1024 * 1024)
        self.body_limits = BodyLimits(s.MAX_BODY_BYTES, s.MIN_BODY_RATE, s.BODY_GRACE_SECONDS)
        self.pipeline = Pipeline(self.bundle, self.engine, self.images, self.budget, self.metrics,
                                 one_hop_max_pixels=s.ONE_HOP_MAX_PIXELS)
        self.ready = False
        self.failure = None

    def _workers(self, create):
        """One worker per Ascend device or per CPU worker, as the Plan says; each builds its backend
        on its own thread."""
        s, plan = self.settings, self.plan
        load = functools.partial(create, self.bundle, backend=plan.backend, threads=plan.threads,
                                 alone_threads=plan.alone_threads, max_batch=plan.max_batch,
                                 cache_dir=s.OPENVINO_CACHE_DIR, precision=plan.precision)
        if plan.on_devices:
            return [Worker(str(d), functools.partial(load, device_id=d), "device%d" % d, self.metrics)
                    for d in plan.devices]
        return [Worker("cpu%d" % i, load, "cpu%d" % i, self.metrics) for i in range(plan.cpu_workers)]

    async def start(self):
        try:
            await self.engine.start()
        except Exception as e:
            self.failure = "model failed to load: %s" % e
            log.error(self.failure)
            os.kill(os.getpid(), signal.SIGTERM)  # a server that cannot serve should exit, not idle
            return
        self.ready = True
        self.metrics.ready.set(1)
        log.info("ready: %s v%s (%d classes), preprocessing: %s", self.bundle.name, self.bundle.version,
                 self.bundle.num_classes, self.images.description)
        if self.bundle.metadata.get("notice"):
            log.warning("model.json's notice: %s", " ".join(self.bundle.metadata["notice"].split()))

    async def stop(self):
        """Drain, close every device's backend on its own thread, then end pyACL once for the process."""
        self.ready = False
        self.metrics.ready.set(0)
        await self.engine.stop()
        self.pool.shutdown(wait=True)
        self.large_pool.shutdown(wait=True)
        backends.release_process_resources()

    def require_ready(self):
        """For requests: the model was loaded and the service is not shutting down (the engine then
        answers for its devices: images wait while one is reloading)."""
        if not self.ready:
            raise unavailable("not_ready", self.failure or "the model is loading; retry shortly", retry_after=2)

    async def process(self, request, work, *args):
        """`await work(*args)` for a request whose body is in: the model must be ready and a request
        slot free (MAX_CONCURRENT_REQUESTS), held until it ends; cancelled if the client leaves."""
        self.require_ready()
        with self.slots.hold():
            return await while_connected(request, work(*args))

    def readiness(self):
        """For /readyz: ready once every device loaded, while at least one of them serves, and
        while a request could be taken (not every slot held)."""
        self.require_ready()
        if self.slots.full:
            raise unavailable("not_ready", "all %d request slots are in use (MAX_CONCURRENT_REQUESTS)"
                              % self.slots.limit, retry_after=1)
        if not self.engine.serving:
            raise unavailable("not_ready", "no device is serving: %s" % "; ".join(
                "device %s %s" % (d["device"], d["state"]) for d in self.engine.devices()), retry_after=2)
        devices = self.engine.devices()
        degraded = any(d["state"] != "ready" for d in devices)
        return {"status": "degraded" if degraded else "ready", "model": self.bundle.name,
                "backend": self.backend_description,
                "devices": {d["device"]: d["state"] for d in devices}}

    @property
    def backend_description(self):
        backend = self.engine.backend
        return backend.describe() if backend else None

    def serving(self):
        """How the model is served (the `serving` object of /v1/model)."""
        s = self.settings
        backend = self.engine.backend
        precision = self.plan.precision
        return {"backend": self.backend_description, "precision": precision.name, "model_file": precision.file,
                "precision_reason": precision.why, "variant": precision.summary(), "max_batch": self.engine.max_batch,
                "max_delay_ms": s.MAX_DELAY_MS, "ready": self.ready,
                "threads": backend.threads if backend else None, "preprocess_workers": s.preprocess_workers,
                "preprocessing": self.images.description,
                "devices": self.engine.devices(), "limits": self.limits(),
                "load": {"requests_processing": self.slots.used, "body_bytes_held": self.bodies.used,
                         "preprocess_bytes_held": self.budget.used}}

    def limits(self):
        s = self.settings
        return {"max_body_bytes": s.MAX_BODY_BYTES, "max_images_per_request": s.MAX_IMAGES_PER_REQUEST,
                "max_image_pixels": s.MAX_IMAGE_PIXELS, "max_request_pixels": s.MAX_REQUEST_PIXELS,
                "preprocess_memory_mb": s.PREPROCESS_MEMORY_MB, "body_memory_mb": s.BODY_MEMORY_MB,
                "max_concurrent_requests": s.MAX_CONCURRENT_REQUESTS, "max_connections": s.MAX_CONNECTIONS,
                "max_header_bytes": s.MAX_HEADER_BYTES, "max_headers": s.MAX_HEADERS,
                "header_timeout_seconds": s.HEADER_TIMEOUT_SECONDS, "keep_alive_seconds": s.KEEP_ALIVE_SECONDS,
                "send_timeout_seconds": s.SEND_TIMEOUT_SECONDS,
                "min_body_rate": s.MIN_BODY_RATE, "body_grace_seconds": s.BODY_GRACE_SECONDS,
                "max_json_values": s.MAX_JSON_VALUES, "max_queue": s.MAX_QUEUE, "max_top_k": self.pipeline.max_top_k,
                "memory_bound_mb": round(memory_bound(
                    s, self.images.tensor_bytes, s.preprocess_workers + 1 + len(self.engine.workers)) / 2 ** 20)}


# Per connection beyond its head: uvicorn's body buffer (64 KiB before it stops reading) and one read
# of the socket (256 KiB) on its way to the app.
CONNECTION_BUFFER_BYTES = (64 + 256) * 1024


def memory_bound(s, input_bytes, decoding_threads):
    """The most memory requests can hold at once beyond a ready, idle server, in bytes: what each
    limit enforces, added up (docs/api.md has the terms). Each connection's head is counted four
    times: the bytes read, the parser's copy, the header list and the request's scope."""
    return (s.BODY_MEMORY_MB * 2 ** 20 + s.PREPROCESS_MEMORY_MB * 2 ** 20 + s.MAX_QUEUE * input_bytes
            + s.MAX_CONNECTIONS * (4 * s.MAX_HEADER_BYTES + CONNECTION_BUFFER_BYTES)
            + decoding_threads * REUSED_BYTES)   # the fast path's buffer, kept by each thread that decodes
