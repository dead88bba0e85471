"""KServe v2 / Open Inference Protocol endpoints under /v2: server and model metadata, health, and
inference on encoded images (BYTES `images`) or model inputs (FP32 `input`). kserve.py holds the
protocol's encoding; the pipeline does the work."""
from __future__ import annotations

import asyncio

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from mbv3.classify import softmax

from . import __version__, kserve
from . import errors as errors_mod
from .bodies import received
from .errors import ApiError

OUTPUTS = ("logits", "probabilities")
INLINE_PARSE_BYTES = 64 * 1024   # a body up to this is parsed on the event loop (well under a millisecond)

V2_INFER_OPENAPI = {
    "parameters": [{"name": kserve.HEADER, "in": "header", "required": False, "schema": {"type": "integer", "minimum": 0},
                    "description": "binary tensor extension: the JSON header's length; the tensors follow it"}],
    "requestBody": {"required": True, "content": {
        "application/json": {"schema": kserve.request_schema()},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
}


def router(service):
    """The routes, on `service` (service.Service)."""
    settings, pipeline, bundle = service.settings, service.pipeline, service.bundle
    api = APIRouter()

    def model_or_404(name):
        if name != bundle.name:
            raise ApiError(404, "unknown_model", "unknown model %r (this server has %r)" % (name, bundle.name))

    @api.get("/v2", summary="KServe v2 server metadata")
    async def v2_server():
        return {"name": "classifier", "version": __version__, "extensions": ["binary_tensor_data"]}

    @api.get("/v2/health/live")
    async def v2_live():
        return {"live": True}

    @api.get("/v2/health/ready", responses=errors_mod.responses("not_ready", v2=True))
    async def v2_ready():
        service.readiness()
        return {"ready": True}

    @api.get("/v2/models/{name}", responses=errors_mod.responses("unknown_model", "invalid_request", v2=True))
    async def v2_model(name: str):
        model_or_404(name)
        h, w = pipeline.size
        backend = service.engine.backend
        return {"name": name, "versions": [bundle.version], "platform": "mbv3_" + (backend.name if backend else "loading"),
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, h, w, 3]},
                           {"name": "images", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": n, "datatype": "FP32", "shape": [-1, pipeline.num_classes]} for n in OUTPUTS]}

    @api.get("/v2/models/{name}/ready", responses=errors_mod.responses("unknown_model", "invalid_request", "not_ready",
                                                                          v2=True))
    async def v2_model_ready(name: str):
        model_or_404(name)
        service.readiness()
        return {"name": name, "ready": True}

    @api.post("/v2/models/{name}/infer", summary="KServe v2 inference: JSON, or Triton's binary tensor extension",
              responses=errors_mod.responses("unknown_model", "invalid_request", "body_too_large", "invalid_json",
                                             "invalid_inference_request", "invalid_image", "too_many_images",
                                             "image_too_large", "too_many_pixels", "over_memory_budget", "not_ready",
                                             "queue_full", "too_many_requests", "busy", "backend_error",
                                             "shutting_down", "body_timeout", "json_too_large", v2=True),
              openapi_extra=V2_INFER_OPENAPI)
    async def v2_infer(name: str, request: Request):
        model_or_404(name)
        async with received(request, service.body_limits, service.bodies) as body:
            head, tensors = await parse(body, request.headers.get(kserve.HEADER))
            outputs = kserve.requested_outputs(head, OUTPUTS)
            logits = await service.process(request, v2_logits, tensors)
            del tensors
        if not np.isfinite(logits).all():   # finite inputs far outside [-1, 1] can overflow the model
            raise kserve.ProtocolError("the model's output for this input is not finite: send 'input' values in [-1, 1]")
        arrays = {"logits": logits, "probabilities": softmax(logits.astype(np.float64)).astype(np.float32)}
        payload, headers = kserve.encode_response(name, bundle.version, head.id,
                                                  [(n, arrays[n], binary) for n, binary in outputs])
        return Response(payload, headers=headers)

    async def parse(body, header_length):
        """kserve.parse_request, on the decoding pool when the body is large (a JSON header's values
        charged to the body's memory as Python objects first): parsing never holds the event loop."""
        data = body.take()
        values = kserve.json_values(data, header_length)
        if values > settings.MAX_JSON_VALUES:
            raise ApiError(413, "json_too_large", "the JSON header holds about %d values, over the limit of %d "
                           "(MAX_JSON_VALUES): send large tensors with the binary tensor extension"
                           % (values, settings.MAX_JSON_VALUES))
        body.charge(kserve.BYTES_PER_JSON_VALUE * values)
        if len(data) <= INLINE_PARSE_BYTES:
            return kserve.parse_request(data, header_length)
        return await asyncio.get_running_loop().run_in_executor(service.pool, kserve.parse_request, data, header_length)

    async def v2_logits(tensors):
        """float32 [N, classes] for the one input: BYTES (encoded images) or FP32 (model input
        already); a tensor API answers all rows or none."""
        if len(tensors) != 1:
            raise kserve.ProtocolError("send exactly one input: 'input' (FP32 [N,H,W,3]) or 'images' (BYTES [N])")
        (name, value), = tensors.items()
        if name != ("images" if isinstance(value, list) else "input"):
            raise kserve.ProtocolError("input %r: this model takes 'input' (FP32 [N,H,W,3]) or 'images' (BYTES [N])" % name)
        if isinstance(value, list):  # BYTES: encoded images
            return await pipeline.infer_encoded(value)
        h, w = pipeline.size
        if value.ndim != 4 or tuple(value.shape[1:]) != (h, w, 3):
            raise kserve.ProtocolError("input %s must be [N,%d,%d,3], got %s" % (name, h, w, list(value.shape)))
        return await pipeline.infer_tensors(value)

    return api
