"""The classifier's own API: /classify (a raw image or a multipart form of several), liveness,
readiness, Prometheus metrics and the bundle's metadata at /v1/model."""
from __future__ import annotations

import re
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import errors as errors_mod
from .bodies import IMAGE_TYPES, image_parts, received
from .errors import ApiError


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


def parse_top_k(request, max_top_k):
    raw = request.query_params.get("top_k", str(min(5, max_top_k)))
    try:
        top_k = int(raw)
    except ValueError:
        top_k = None
    if top_k is None or not 1 <= top_k <= max_top_k:
        raise ApiError(422, "invalid_top_k", "top_k must be an integer from 1 to %d, got %r" % (max_top_k, raw))
    return top_k


# model.json records where export read from (source.checkpoint, source.run: absolute paths on the
# exporting machine): a client sees the last component of any absolute path, never where it is
ABSOLUTE = re.compile(r"""(?<![^\s"'(=,])(?:~?/|[A-Za-z]:[\\/]|\\\\)[^\s"'(),;/\\]+[\\/][^\s"'(),;]*""")
WHOLE = re.compile(r"""(?:~?/|[A-Za-z]:[\\/]|\\\\)[^\n]*[^\s/\\][\\/]*""")   # a path, spaces and all


def _last_component(match):
    return re.split(r"[\\/]", match.group(0).rstrip("/\\"))[-1]


def without_locations(value):
    """`value` (model.json's metadata) with every absolute path cut to its last component: a string
    that is a path, else paths of two or more components inside a text; keys too."""
    if isinstance(value, str):
        path = WHOLE.fullmatch(value)
        return _last_component(path) if path else ABSOLUTE.sub(_last_component, value)
    if isinstance(value, dict):
        return {without_locations(k): without_locations(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_locations(v) for v in value]
    return value


def router(service):
    """The routes, on `service` (service.Service)."""
    settings, pipeline, bundle = service.settings, service.pipeline, service.bundle
    api = APIRouter()

    @api.post("/classify", summary="Classify one image (raw body) or several (multipart/form-data)",
              responses={207: {"description": "multipart: some parts classified; the others carry their own error"},
                         **errors_mod.responses(
                             "empty_body", "invalid_image", "invalid_multipart", "no_image", "invalid_images",
                             "body_too_large", "too_many_images", "image_too_large", "too_many_pixels",
                             "over_memory_budget", "unsupported_media_type", "invalid_top_k", "not_ready", "queue_full",
                             "too_many_requests", "busy", "backend_error", "shutting_down", "body_timeout")},
              openapi_extra=classify_openapi(pipeline.max_top_k))
    async def classify(request: Request):
        top_k = parse_top_k(request, pipeline.max_top_k)
        async with received(request, service.body_limits, service.bodies) as body:
            uploads = await image_parts(request, body.take(), settings.MAX_IMAGES_PER_REQUEST, service.pool)
            start = time.perf_counter()
            await service.process(request, pipeline.infer_uploads, uploads)
        return answer(request, uploads, top_k, start)

    def answer(request, uploads, top_k, start):
        failed = [u for u in uploads if u.error is not None]
        if len(uploads) == 1 and uploads[0].name is None and failed:   # a raw body: its error is the answer
            raise failed[0].error
        results = [pipeline.result(u, top_k) if u.error is None else
                   {"filename": u.name, "error": {"code": u.error.code, "message": u.error.message}} for u in uploads]
        payload = {"model": {"name": bundle.name, "version": bundle.version},
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

    @api.get("/healthz", summary="Liveness: the process answers")
    async def healthz():
        return {"status": "ok"}

    @api.get("/readyz", summary="Readiness: every device loaded and warmed up, and one or more of them serving",
             responses=errors_mod.responses("not_ready"))
    async def readyz():
        return service.readiness()

    @api.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse,
             responses={200: {"description": "Prometheus text exposition format",
                              "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}})
    async def metrics():
        service.metrics.queue_depth.set(service.engine.depth)
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    public = without_locations(bundle.metadata)   # the bundle does not change while it is served

    @api.get("/v1/model", summary="The bundle's model.json")
    async def model_metadata():
        return dict(public, serving=service.serving())

    return api
