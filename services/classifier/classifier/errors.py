"""Errors the API answers with: a stable code, a message, an HTTP status; never a traceback.

CODES is the one list of every code: the OpenAPI document's responses are built from it, docs/api.md
lists it, and a test checks that every code the service raises is in it with its status. Every error
is JSON in one of two shapes carrying the same codes:

- everywhere but /v2: {"error": {"code": ..., "message": ...}, "request_id": ...}
- under /v2: {"error": message, "code": ..., "request_id": ...}, because the Open Inference Protocol
  makes "error" a string (tritonclient reads it as one).
"""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel
from starlette.responses import JSONResponse

CODES = {   # code: (HTTP status, when)
    "invalid_http": (400, "malformed HTTP: request line, headers or Content-Length (answered before routing)"),
    "empty_body": (400, "the request body is empty"),
    "invalid_image": (400, "an image that cannot be decoded"),
    "invalid_multipart": (400, "a multipart body that cannot be parsed"),
    "no_image": (400, "a multipart body without a file part"),
    "invalid_images": (400, "multipart: no part could be classified, and the parts failed differently"),
    "invalid_json": (400, "v2: a JSON header that is not UTF-8 JSON, holds NaN/Infinity, nests too deep or holds "
                          "too many arrays and objects"),
    "invalid_inference_request": (400, "v2: a request the protocol or this model does not accept (schema, shape, "
                                       "datatype, value range, non-finite floats, binary sizes, unknown input/output)"),
    "not_found": (404, "no such path"),
    "header_timeout": (408, "the request's headers did not arrive within HEADER_TIMEOUT_SECONDS (the connection closes)"),
    "body_timeout": (408, "the body arrived slower than MIN_BODY_RATE after BODY_GRACE_SECONDS (the connection closes)"),
    "unknown_model": (404, "v2: a model name this server does not serve"),
    "method_not_allowed": (405, "the path exists, the method does not (see the Allow header)"),
    "body_too_large": (413, "a body over MAX_BODY_BYTES"),
    "json_too_large": (413, "v2: a JSON header with more values than MAX_JSON_VALUES (send large tensors binary)"),
    "too_many_images": (413, "more images in one request than MAX_IMAGES_PER_REQUEST"),
    "image_too_large": (413, "an image over MAX_IMAGE_PIXELS, refused from its header"),
    "too_many_pixels": (413, "a request's images hold more than MAX_REQUEST_PIXELS"),
    "over_memory_budget": (413, "one request needs more preprocessing memory than PREPROCESS_MEMORY_MB"),
    "headers_too_large": (431, "a request head over MAX_HEADER_BYTES or MAX_HEADERS lines (the connection closes)"),
    "unsupported_media_type": (415, "a Content-Type /classify does not take"),
    "invalid_top_k": (422, "top_k not an integer from 1 to the number of classes"),
    "invalid_request": (422, "a request FastAPI's own validation refuses"),
    "internal": (500, "a server fault (logged with the request id)"),
    "not_ready": (503, "the model is loading or failed to load, or no device is serving (Retry-After)"),
    "queue_full": (503, "MAX_QUEUE images already waiting (Retry-After)"),
    "too_many_requests": (503, "MAX_CONCURRENT_REQUESTS requests being processed (Retry-After)"),
    "too_many_connections": (503, "MAX_CONNECTIONS connections open (Retry-After; the connection closes)"),
    "busy": (503, "the preprocessing memory budget stayed full for MAX_WAIT_SECONDS, or the bodies being received "
                  "fill BODY_MEMORY_MB (Retry-After)"),
    "backend_error": (503, "the inference run failed (Retry-After)"),
    "shutting_down": (503, "the server is draining for shutdown (Retry-After)"),
}
HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}   # Starlette's own HTTP errors


class ServiceError(Exception):
    """The base of every error the service raises on purpose; anything else is a bug. Its kinds:
    ApiError (a request's answer), ClientDisconnected (the client left), and, by where they stop
    start-up or a run: settings.SettingsError, kserve.ProtocolError, engine.EngineError,
    backends.BackendError."""


class ClientDisconnected(ServiceError):
    """The client went away mid-request (closed the connection while its body was being read, or
    before the answer): not a server fault. middleware.py logs it as 499 with no traceback and sends
    nothing."""


def safe_text(text, limit=256):
    """`text` (a client-chosen string: a filename, a field name) made safe to put in a JSON answer:
    lone surrogates (from charset=unicode_escape, surrogateescape) and anything else UTF-8 cannot
    encode become backslash escapes, and it is cut at `limit` characters (None: no cap)."""
    if text is None:
        return None
    text = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    return text


class ApiError(ServiceError):
    def __init__(self, status, code, message, headers=None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def bad_request(code, message):
    return ApiError(400, code, message)


def unavailable(code, message, retry_after=1):
    return ApiError(503, code, message, {"Retry-After": str(retry_after)})


def is_v2(path):
    return path == "/v2" or path.startswith("/v2/")


def error_body(path, code, message, request_id=None):
    message = safe_text(message, None)   # a message may quote a client's string: never a lone surrogate
    out = {"error": message, "code": code} if is_v2(path) else {"error": {"code": code, "message": message}}
    if request_id:
        out["request_id"] = request_id
    return out


def error_response(path, status, code, message, request_id=None, headers=None):
    return JSONResponse(error_body(path, code, message, request_id), status_code=status, headers=headers)


# --- the two shapes, for the OpenAPI document ------------------------------------------------------
class ErrorDetail(BaseModel):
    code: str
    message: str


class Error(BaseModel):
    """An error everywhere but /v2."""
    error: ErrorDetail
    request_id: Optional[str] = None


class V2Error(BaseModel):
    """An error under /v2 (the Open Inference Protocol's string `error`, plus the code)."""
    error: str
    code: str
    request_id: Optional[str] = None


def responses(*codes, v2=False):
    """`responses=` for a route that can answer `codes` (with 500 `internal`): one entry per status."""
    lines = {}
    for code in codes + ("internal",):
        status, when = CODES[code]
        lines.setdefault(status, []).append("`%s`: %s" % (code, when))
    model = V2Error if v2 else Error
    return {status: {"model": model, "description": "; ".join(text)} for status, text in sorted(lines.items())}
