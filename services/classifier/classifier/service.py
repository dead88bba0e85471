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

from . import backends
from .budget import MemoryBudget
from .engine import Engine
from .errors import unavailable
from .images import Preprocessor
from .metrics import Metrics
from .pipeline import Pipeline

log = logging.getLogger("classifier")


class Service:
    def __init__(self, settings, backend_factory=None):
        """backend_factory: backends.create's signature (tests inject backends through it)."""
        s = self.settings = settings
        self.metrics = Metrics()
        self.bundle = bundle.load(s.MODEL_DIR, verify=True)  # schema, sha256s, labels; shapes at load
        load_backend = functools.partial(backend_factory or backends.create, self.bundle, backend=s.BACKEND,
                                         device_id=s.DEVICE_ID, threads=s.threads, max_batch=s.MAX_BATCH, log=log.info)
        self.engine = Engine(load_backend, max_batch=s.MAX_BATCH, max_delay_ms=s.MAX_DELAY_MS, max_queue=s.MAX_QUEUE,
                             metrics=self.metrics, log=log.info, thread_name="device%d" % s.DEVICE_ID)
        self.pool = concurrent.futures.ThreadPoolExecutor(s.preprocess_workers, thread_name_prefix="preprocess")
        self.budget = MemoryBudget(s.PREPROCESS_MEMORY_MB * 1024 * 1024, s.MAX_WAIT_SECONDS, self.metrics)
        self.images = Preprocessor(self.bundle.preprocessing, self.pool, s.MAX_IMAGES_PER_REQUEST, s.MAX_IMAGE_PIXELS,
                                   s.MAX_REQUEST_PIXELS)
        self.pipeline = Pipeline(self.bundle, self.engine, self.images, self.budget, self.metrics, s.ONE_HOP_MAX_PIXELS)
        self.ready = False
        self.failure = None

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
        log.info("ready: %s v%s (%d classes)", self.bundle.name, self.bundle.version, self.bundle.num_classes)
        if self.bundle.metadata.get("notice"):
            log.warning("model.json's notice: %s", " ".join(self.bundle.metadata["notice"].split()))

    async def stop(self):
        self.ready = False
        self.metrics.ready.set(0)
        await self.engine.stop()
        self.pool.shutdown(wait=True)
        backends.release_process_resources()

    def require_ready(self):
        if not self.ready:
            raise unavailable("not_ready", self.failure or "the model is loading; retry shortly", retry_after=2)

    @property
    def backend_description(self):
        return self.engine.backend.describe() if self.engine.backend else None

    def serving(self):
        """How the model is served (the `serving` object of /v1/model)."""
        s = self.settings
        return {"backend": self.backend_description, "max_batch": self.engine.max_batch,
                "max_delay_ms": s.MAX_DELAY_MS, "ready": self.ready, "threads": s.threads,
                "preprocess_workers": s.preprocess_workers, "limits": self.limits()}

    def limits(self):
        s = self.settings
        return {"max_body_bytes": s.MAX_BODY_BYTES, "max_images_per_request": s.MAX_IMAGES_PER_REQUEST,
                "max_image_pixels": s.MAX_IMAGE_PIXELS, "max_request_pixels": s.MAX_REQUEST_PIXELS,
                "preprocess_memory_mb": s.PREPROCESS_MEMORY_MB, "max_concurrent_requests": s.MAX_CONCURRENT_REQUESTS,
                "max_queue": s.MAX_QUEUE, "max_top_k": self.pipeline.max_top_k}
