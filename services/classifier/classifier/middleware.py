"""The outermost ASGI middleware: request ids, per-route metrics, one log line per request, and the
JSON 500 for anything unhandled."""
from __future__ import annotations

import logging
import time
import uuid

from .errors import error_response

log = logging.getLogger("classifier")


class RequestContext:
    """Plain ASGI middleware (Starlette's BaseHTTPMiddleware costs a task and two memory streams per
    request): request id in and out, per-route metrics, one log line per request."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

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
            self.metrics.observe_request(scope, code, seconds)
            log.info("%s %s %s %.1fms request_id=%s", scope["method"], scope["path"], code, seconds * 1000, request_id)
