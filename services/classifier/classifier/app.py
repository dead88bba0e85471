"""The HTTP API (DESIGN.md's contract): /classify, health, readiness, metrics, model metadata, and
KServe v2 / Open Inference Protocol endpoints, all on one engine."""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import time
import uuid

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from mbv3 import bundle as bundle_mod
from mbv3.runtime import softmax, top_k

from . import __version__, backends, kserve
from . import errors as errors_mod
from .budget import ConcurrencyLimit, MemoryBudget
from .engine import Engine
from .errors import ApiError, bad_request, error_response, unavailable
from .images import Preprocessor, Upload
from .metrics import Metrics

log = logging.getLogger("classifier")

IMAGE_TYPES = {"image/jpeg", "image/jpg", "image/png", "image/webp", "image/bmp", "image/x-ms-bmp", "image/gif",
               "application/octet-stream"}
OUTPUTS = ("logits", "probabilities")


class Service:
    """What the routes share: settings, bundle, engine, metrics, the preprocessing pool and budget."""

    def __init__(self, settings, backend_factory=None):
        self.settings = settings
        self.metrics = Metrics()
        self.bundle = bundle_mod.load(settings.MODEL_DIR, verify=True)  # schema, sha256s, labels; shapes at load
        self.engine = Engine(self.bundle, settings, self.metrics, log.info, backend_factory)
        self.pool = concurrent.futures.ThreadPoolExecutor(settings.preprocess_workers, thread_name_prefix="preprocess")
        self.budget = MemoryBudget(settings.PREPROCESS_MEMORY_MB * 1024 * 1024, settings.MAX_WAIT_SECONDS, self.metrics)
        self.prep = self.bundle.preprocessing
        self.images = Preprocessor(settings, self.prep, self.pool, self.budget)
        self.ready = False
        self.failure = None
        self.size = self.prep.size
        self.num_classes = self.bundle.num_classes
        self.background = self.bundle.background_index
        self.max_top_k = self.num_classes - (1 if self.background is not None else 0)

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
        log.info("ready: %s v%s (%d classes)", self.bundle.name, self.bundle.version, self.num_classes)

    async def stop(self):
        self.ready = False
        self.metrics.ready.set(0)
        await self.engine.stop()
        self.pool.shutdown(wait=True)
        backends.release_process_resources()

    def require_ready(self):
        if not self.ready:
            raise unavailable("not_ready", self.failure or "the model is loading; retry shortly", retry_after=2)

    def limits(self):
        s = self.settings
        return {"max_body_bytes": s.MAX_BODY_BYTES, "max_images_per_request": s.MAX_IMAGES_PER_REQUEST,
                "max_image_pixels": s.MAX_IMAGE_PIXELS, "max_request_pixels": s.MAX_REQUEST_PIXELS,
                "preprocess_memory_mb": s.PREPROCESS_MEMORY_MB, "max_concurrent_requests": s.MAX_CONCURRENT_REQUESTS,
                "max_queue": s.MAX_QUEUE, "max_top_k": self.max_top_k}

    # --- images --------------------------------------------------------------------------------
    async def infer_uploads(self, uploads):
        """Probe, admit under the memory budget, preprocess and infer; each upload ends with
        .logits or .error. Raises ApiError for what fails the whole request (count, pixels, budget,
        queue)."""
        self.images.check_count(len(uploads))
        await self.images.probe(uploads)
        good = [u for u in uploads if u.error is None]
        self.images.check_pixels(good)
        what = "this image" if len(uploads) == 1 else "this request's %d images" % len(uploads)
        async with self.budget.hold(self.images.cost(good), what):
            uint8 = self.engine.input_dtype == np.uint8
            if len(good) == 1 and len(uploads) == 1 and good[0].pixels <= self.settings.ONE_HOP_MAX_PIXELS and self.engine.idle:
                upload = good[0]
                row, timings = await self.engine.infer_alone(lambda: self.images.prepare(upload, uint8).image)
                upload.logits = row
                upload.timings.update(timings)
                return uploads
            with self.engine.arriving():
                await self.images.prepare_all(good, uint8)
            ready = [u for u in good if u.error is None]
            if ready:
                for upload, (outcome, timings) in zip(ready, await self.engine.infer_many([u.image for u in ready])):
                    upload.image = None
                    upload.timings.update(timings)
                    if isinstance(outcome, Exception):
                        upload.error = outcome if isinstance(outcome, ApiError) else unavailable(
                            "backend_error", "inference failed")
                    else:
                        upload.logits = outcome
        return uploads

    def result(self, upload, top_k_):
        """The JSON object for one classified upload (the background class is never a prediction)."""
        probs = softmax(upload.logits[np.newaxis].astype(np.float64))
        (best,) = top_k(probs, self.bundle.labels, top_k_, skip=self.background)
        timings = upload.timings
        self.metrics.stage_latency.labels("preprocess").observe(timings.get("preprocess", 0.0))
        for stage in ("queue", "inference"):
            self.metrics.stage_latency.labels(stage).observe(timings.get(stage, 0.0))
        out = {"predictions": [{"label": label, "index": i, "score": score} for i, label, score in best],
               "timings_ms": {stage: round(timings.get(stage, 0.0) * 1000, 3)
                              for stage in ("preprocess", "queue", "inference")}}
        if upload.name is not None:
            out = dict({"filename": upload.name}, **out)
        return out


async def read_body(request, limit):
    """The body, refused with 413 as soon as it passes `limit` bytes, whatever Content-Length says."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", "body of %s bytes is over the limit of %d" % (declared, limit))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", "body is over the limit of %d bytes" % limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def image_parts(request, body, max_images):
    """[Upload] from a raw image body or a multipart form (its file parts, in order)."""
    ctype = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        async def stream():
            yield body
        parser = MultiPartParser(request.headers, stream(), max_files=max_images, max_fields=max_images)
        # No part outgrows the body already in memory (bounded by MAX_BODY_BYTES): never spool to a
        # temporary file, so the service runs on a read-only root file system.
        parser.spool_max_size = len(body)
        try:
            form = await parser.parse()
        except MultiPartException as e:
            if "Too many" in e.message:
                raise ApiError(413, "too_many_images", "more than %d parts in one request (MAX_IMAGES_PER_REQUEST); "
                               "split the request" % max_images)
            raise bad_request("invalid_multipart", "cannot parse the multipart body: %s" % e.message)
        parts = []
        for key, value in form.multi_items():
            if hasattr(value, "read"):
                parts.append(Upload(await value.read(), name=value.filename or key))
        if not parts:
            raise bad_request("no_image", "the multipart body has no file part; send images as file fields")
        return parts
    if ctype not in IMAGE_TYPES:
        raise ApiError(415, "unsupported_media_type",
                       "Content-Type %s is not supported: send image/jpeg, image/png, image/webp, image/bmp, image/gif, "
                       "application/octet-stream or multipart/form-data" % ctype)
    if not body:
        raise bad_request("empty_body", "the request body is empty: send an image")
    return [Upload(body)]


def classify_openapi(max_top_k):
    """/classify reads its body itself (raw image or multipart): this describes it for the OpenAPI document."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {"parameters": [{"name": "top_k", "in": "query", "required": False, "description": "predictions per image",
                            "schema": {"type": "integer", "minimum": 1, "maximum": max_top_k,
                                       "default": min(5, max_top_k)}}],
            "requestBody": {"required": True, "content": dict(
                {t: binary for t in sorted(IMAGE_TYPES)},
                **{"multipart/form-data": {"schema": {"type": "object", "description": "one or more image files",
                                                      "additionalProperties": {"type": "string", "format": "binary"}}}})}}


V2_INFER_OPENAPI = {
    "parameters": [{"name": kserve.HEADER, "in": "header", "required": False, "schema": {"type": "integer", "minimum": 0},
                    "description": "binary tensor extension: the JSON header's length; the tensors follow it"}],
    "requestBody": {"required": True, "content": {
        "application/json": {"schema": kserve.request_schema()},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
}


def parse_top_k(request, max_top_k):
    raw = request.query_params.get("top_k", str(min(5, max_top_k)))
    try:
        top_k = int(raw)
    except ValueError:
        top_k = None
    if top_k is None or not 1 <= top_k <= max_top_k:
        raise ApiError(422, "invalid_top_k", "top_k must be an integer from 1 to %d, got %r" % (max_top_k, raw))
    return top_k


class RequestContext:
    """Plain ASGI middleware (Starlette's BaseHTTPMiddleware costs a task and two memory streams per
    request): request id in and out, per-route metrics, one log line per request."""

    def __init__(self, app, service):
        self.app, self.service = app, service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                request_id = value.decode("latin-1")
        request_id = request_id or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = []
        start = time.perf_counter()

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
                message["headers"] = list(message.get("headers", [])) + [(b"x-request-id", request_id.encode("latin-1"))]
            await send(message)
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error (request %s)", request_id)
            if not status:
                body = error_response(scope["path"], 500, "internal", "internal error", request_id)
                await body(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            code = str(status[0]) if status else "500"
            self.service.metrics.observe_request(scope, code, seconds)
            log.info("%s %s %s %.1fms request_id=%s", scope["method"], scope["path"], code, seconds * 1000, request_id)


def create_app(settings, backend_factory=None):
    service = Service(settings, backend_factory)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        task = asyncio.ensure_future(service.start())  # the port opens at once; /readyz flips after warm-up
        yield
        if not task.done():
            task.cancel()
        await service.stop()

    app = FastAPI(title="classifier", version=__version__, lifespan=lifespan,
                  description="MobileNetV3 image classifier (%s v%s)" % (service.bundle.name, service.bundle.version))
    app.state.service = service
    app.add_middleware(ConcurrencyLimit, limit=settings.MAX_CONCURRENT_REQUESTS)
    app.add_middleware(RequestContext, service=service)   # added last, so outermost: it sees every answer

    # --- every error in errors.py's shapes, whatever raised it -------------------------------------
    def answer(request, status, code, message, headers=None):
        return error_response(request.url.path, status, code, message, getattr(request.state, "request_id", None),
                              headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return answer(request, exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(HTTPException)   # Starlette's 404 and 405
    async def http_error(request: Request, exc: HTTPException):
        code = errors_mod.HTTP_CODES.get(exc.status_code, "invalid_request")
        allow = (exc.headers or {}).get("Allow")
        message = {404: "no route for %s" % request.url.path,
                   405: "%s is not allowed on %s (Allow: %s)" % (request.method, request.url.path, allow)
                   }.get(exc.status_code, str(exc.detail))
        return answer(request, exc.status_code, code, message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        where = ["%s: %s" % (".".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors()[:3]]
        return answer(request, 422, "invalid_request", "; ".join(where))

    @app.exception_handler(kserve.ProtocolError)
    async def protocol_error(request: Request, exc: kserve.ProtocolError):
        return answer(request, 400, exc.code, str(exc))

    # --- the classifier API --------------------------------------------------------------------
    @app.post("/classify", summary="Classify one image (raw body) or several (multipart/form-data)",
              responses={207: {"description": "multipart: some parts classified; the others carry their own error"},
                         **errors_mod.responses(
                             "empty_body", "invalid_image", "invalid_multipart", "no_image", "invalid_images",
                             "body_too_large", "too_many_images", "image_too_large", "too_many_pixels",
                             "over_memory_budget", "unsupported_media_type", "invalid_top_k", "not_ready", "queue_full",
                             "too_many_requests", "busy", "backend_error", "shutting_down")},
              openapi_extra=classify_openapi(service.max_top_k))
    async def classify(request: Request):
        top_k = parse_top_k(request, service.max_top_k)
        body = await read_body(request, settings.MAX_BODY_BYTES)
        uploads = await image_parts(request, body, settings.MAX_IMAGES_PER_REQUEST)
        del body
        service.require_ready()
        start = time.perf_counter()
        await service.infer_uploads(uploads)
        failed = [u for u in uploads if u.error is not None]
        if len(uploads) == 1 and uploads[0].name is None and failed:   # a raw body: its error is the answer
            raise failed[0].error
        results = [service.result(u, top_k) if u.error is None else
                   {"filename": u.name, "error": {"code": u.error.code, "message": u.error.message}} for u in uploads]
        payload = {"model": {"name": service.bundle.name, "version": service.bundle.version},
                   "request_id": request.state.request_id, "results": results,
                   "timings_ms": {"total": round((time.perf_counter() - start) * 1000, 3)}}
        status, headers = 200, {}
        if failed and len(failed) < len(uploads):
            status = 207   # some parts classified, some not: each result says which
        elif failed:
            statuses = {u.error.status for u in failed}
            status = statuses.pop() if len(statuses) == 1 else 400
            first = failed[0].error
            headers = first.headers if status == first.status else {}
            payload["error"] = {"code": first.code if status == first.status else "invalid_images",
                                "message": "none of the %d images could be classified: %s" % (len(failed), first.message)}
        # plain types already: a JSONResponse skips FastAPI's jsonable_encoder pass
        return JSONResponse(payload, status_code=status, headers=headers)

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: model loaded and warmed up", responses=errors_mod.responses("not_ready"))
    async def readyz():
        service.require_ready()
        return {"status": "ready", "model": service.bundle.name, "backend": service.engine.backend.describe()}

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse,
             responses={200: {"description": "Prometheus text exposition format",
                              "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
    async def metrics():
        service.metrics.queue_depth.set(service.engine.depth)
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/model", summary="The bundle's model.json")
    async def model_metadata():
        meta = dict(service.bundle.metadata)
        meta["serving"] = {"backend": service.engine.backend.describe() if service.engine.backend else None,
                           "max_batch": service.engine.max_batch, "max_delay_ms": settings.MAX_DELAY_MS,
                           "ready": service.ready, "threads": settings.threads,
                           "preprocess_workers": settings.preprocess_workers, "limits": service.limits()}
        return meta

    # --- KServe v2 / Open Inference Protocol -------------------------------------------------
    def model_or_404(name):
        if name != service.bundle.name:
            raise ApiError(404, "unknown_model", "unknown model %r (this server has %r)" % (name, service.bundle.name))

    @app.get("/v2", summary="KServe v2 server metadata")
    async def v2_server():
        return {"name": "classifier", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    async def v2_live():
        return {"live": True}

    @app.get("/v2/health/ready", responses=errors_mod.responses("not_ready", v2=True))
    async def v2_ready():
        service.require_ready()
        return {"ready": True}

    @app.get("/v2/models/{name}", responses=errors_mod.responses("unknown_model", "invalid_request", v2=True))
    async def v2_model(name: str):
        model_or_404(name)
        h, w = service.size
        return {"name": name, "versions": [service.bundle.version], "platform": "mbv3_" + (
            service.engine.backend.name if service.engine.backend else "loading"),
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, h, w, 3]},
                           {"name": "images", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": n, "datatype": "FP32", "shape": [-1, service.num_classes]} for n in OUTPUTS]}

    @app.get("/v2/models/{name}/ready", responses=errors_mod.responses("unknown_model", "invalid_request", "not_ready",
                                                                          v2=True))
    async def v2_model_ready(name: str):
        model_or_404(name)
        service.require_ready()
        return {"name": name, "ready": True}

    @app.post("/v2/models/{name}/infer", summary="KServe v2 inference: JSON, or Triton's binary tensor extension",
              responses=errors_mod.responses("unknown_model", "invalid_request", "body_too_large", "invalid_json",
                                             "invalid_inference_request", "invalid_image", "too_many_images",
                                             "image_too_large", "too_many_pixels", "over_memory_budget", "not_ready",
                                             "queue_full", "too_many_requests", "busy", "backend_error",
                                             "shutting_down", v2=True),
              openapi_extra=V2_INFER_OPENAPI)
    async def v2_infer(name: str, request: Request):
        model_or_404(name)
        body = await read_body(request, settings.MAX_BODY_BYTES)
        head, tensors = kserve.parse_request(body, request.headers.get(kserve.HEADER))
        del body
        outputs = kserve.requested_outputs(head, OUTPUTS)
        service.require_ready()
        logits = await _v2_logits(tensors)
        if not np.isfinite(logits).all():   # finite inputs far outside [-1, 1] can overflow the model
            raise kserve.ProtocolError("the model's output for this input is not finite: send 'input' values in [-1, 1]")
        arrays = {"logits": logits, "probabilities": softmax(logits.astype(np.float64)).astype(np.float32)}
        payload, headers = kserve.encode_response(name, service.bundle.version, head.id,
                                                  [(n, arrays[n], binary) for n, binary in outputs])
        return Response(payload, headers=headers)

    async def _v2_logits(tensors):
        """float32 [N, classes] for the one input: BYTES (encoded images, preprocessed here) or FP32
        (model input already); a tensor API answers all rows or none."""
        if len(tensors) != 1:
            raise kserve.ProtocolError("send exactly one input: 'input' (FP32 [N,H,W,3]) or 'images' (BYTES [N])")
        (name, value), = tensors.items()
        if name != ("images" if isinstance(value, list) else "input"):
            raise kserve.ProtocolError("input %r: this model takes 'input' (FP32 [N,H,W,3]) or 'images' (BYTES [N])" % name)
        h, w = service.size
        if isinstance(value, list):  # BYTES: encoded images
            uploads = await service.infer_uploads([Upload(data) for data in value])
            for upload in uploads:
                if upload.error is not None:
                    raise upload.error
            return np.stack([u.logits for u in uploads]).astype(np.float32)
        if value.ndim != 4 or tuple(value.shape[1:]) != (h, w, 3):
            raise kserve.ProtocolError("input %s must be [N,%d,%d,3], got %s" % (name, h, w, list(value.shape)))
        service.images.check_count(len(value))
        async with service.budget.hold(service.images.tensors_cost(len(value)), "this request's tensor"):
            batch = value.astype(np.float32)
            if service.engine.input_dtype == np.uint8:  # an AIPP model takes pixels: undo the normalisation
                batch = service.prep.denormalize(batch)
            rows = await service.engine.infer_many(list(batch))
        for row, _ in rows:
            if isinstance(row, Exception):
                raise row
        return np.stack([row for row, _ in rows]).astype(np.float32)

    return app
