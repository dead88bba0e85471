"""The outermost ASGI middleware: request ids, per-route metrics, one log line per request, the
security headers on every answer, the JSON 500 for anything unhandled, 499 for a client that left,
and a JSON refusal of WebSocket handshakes (the service has no WebSocket endpoint)."""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import random
import re
import time

from starlette.requests import ClientDisconnect

from .errors import ClientDisconnected, error_body, error_response
from .transport import REFUSED

log = logging.getLogger("classifier")

# A client's X-Request-ID is echoed in a header, put in JSON answers and logged: 1-128 characters of
# a closed, printable set (uuids, W3C trace ids, ULIDs and most tracing ids fit) so it can neither
# forge a log line nor bloat every answer and log line; anything else is replaced by a fresh id.
REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
LOGGED_PATH_CHARS = 200
# Fresh ids: 128 random bits from a generator seeded once from os.urandom. uuid4 reads os.urandom for
# every request, a system call that hands the event loop's GIL to the decoding and inference threads
# and waits to get it back (4% of the event loop's time at 32 clients). An id names a request in the
# logs; it guards nothing, so it needs to be unique, not unguessable.
_IDS = random.Random()
os.register_at_fork(after_in_child=_IDS.seed)   # a forked server's ids are its own

# Security headers, on every answer (errors and 404s too). JSON and text load nothing; the pages
# (routes_page.py) load only this server's files; a page with an inline script names its hash
# (page_csp). No page may be framed.
API_CSP = "default-src 'none'; frame-ancestors 'none'"
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; script-src 'self'%s; "
            "worker-src 'self' blob:; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"))
INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc\s*=)[^>]*>(.*?)</script>", re.DOTALL | re.IGNORECASE)


def page_csp(html=b""):
    """The Content-Security-Policy for an HTML page: PAGE_CSP, allowing its inline scripts by hash."""
    hashes = ["'sha256-%s'" % base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode("ascii")
              for m in INLINE_SCRIPT.finditer(html)]
    return PAGE_CSP % "".join(" " + h for h in hashes)


_PAGE_CSP, _API_CSP = page_csp().encode("ascii"), API_CSP.encode("ascii")


def with_security_headers(headers):
    """`headers` (an ASGI list) plus nosniff, no framing and a CSP, unless the answer set its own."""
    headers = list(headers)
    names = {k.lower() for k, _ in headers}
    for key, value in SECURITY_HEADERS:
        if key not in names:
            headers.append((key, value))
    if b"content-security-policy" not in names:
        ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
        headers.append((b"content-security-policy", _PAGE_CSP if ctype.lower().startswith(b"text/html") else _API_CSP))
    return headers


def printable(text, limit=LOGGED_PATH_CHARS):
    """`text` for a log line: control characters, line and paragraph separators, bidi overrides, lone
    surrogates and backslashes escaped (so no client string can forge a line or hide text), cut at
    `limit` characters with "..."."""
    if text.isprintable() and "\\" not in text:   # the usual path, at once
        out = text
    else:
        out = "".join(c if c.isprintable() and c != "\\" else c.encode("unicode_escape").decode("ascii") for c in text)
    return out if len(out) <= limit else out[:limit] + "..."


class RequestContext:
    """Plain ASGI middleware (Starlette's BaseHTTPMiddleware costs a task and two memory streams per
    request): request id in and out, per-route metrics, one log line per request."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] == "websocket":
            return await self.refuse_websocket(scope, receive, send)
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = self.request_id(scope)
        status, complete, gone = [], [], []
        start = time.perf_counter()

        async def receive_watching():
            message = await receive()
            if message["type"] == "http.disconnect" and not complete:
                gone.append(True)   # the client left before its answer was sent
            return message

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
                message["headers"] = with_security_headers(message.get("headers", [])) + [
                    (b"x-request-id", request_id.encode("ascii"))]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                complete.append(True)
            await send(message)

        code = None
        try:
            await self.app(scope, receive_watching, send_with_headers)
        except (ClientDisconnected, ClientDisconnect):
            # nothing to send: nobody is listening, or the transport has answered (a malformed body)
            code = str(scope.get("state", {}).get(REFUSED, 499))
        except Exception:
            if gone:   # a failure once the client had left (a write, a read) is not a server fault
                code = "499"
                log.debug("after the client left (request %s)", request_id, exc_info=True)
            else:
                log.exception("unhandled error (request %s)", request_id)
                if not status:
                    body = error_response(scope["path"], 500, "internal", "internal error", request_id)
                    await body(scope, receive, send_with_headers)
        finally:
            seconds = time.perf_counter() - start
            code = code or (str(status[0]) if status else "500")
            self.metrics.observe_request(scope, code, seconds)
            log.info("%s %s %s %.1fms request_id=%s%s", printable(scope["method"], 32), printable(scope["path"]), code,
                     seconds * 1000, request_id, " client closed the connection" if code == "499" else "")

    @staticmethod
    def request_id(scope):
        """The client's X-Request-ID if it is 1-128 characters of REQUEST_ID's set, else a fresh one."""
        request_id = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                request_id = value
        if request_id and REQUEST_ID.fullmatch(request_id):
            request_id = request_id.decode("ascii")
        else:
            request_id = "%032x" % _IDS.getrandbits(128)
        scope.setdefault("state", {})["request_id"] = request_id
        return request_id

    async def refuse_websocket(self, scope, receive, send):
        """A WebSocket handshake: the service has no WebSocket endpoint, so a JSON 404 in the service's
        shape (through the ASGI websocket.http.response extension, which uvicorn supports); a server
        without it can only close, and answers 403 itself."""
        request_id = self.request_id(scope)
        start = time.perf_counter()
        path = scope.get("path", "")
        await receive()   # websocket.connect
        if "websocket.http.response" in scope.get("extensions", {}):
            body = json.dumps(error_body(path, "not_found", "no WebSocket endpoint at %s: this service answers plain "
                                         "HTTP requests only" % path, request_id)).encode("utf-8")
            headers = with_security_headers([(b"content-type", b"application/json"),
                                             (b"content-length", str(len(body)).encode("ascii"))])
            await send({"type": "websocket.http.response.start", "status": 404,
                        "headers": headers + [(b"x-request-id", request_id.encode("ascii"))]})
            await send({"type": "websocket.http.response.body", "body": body})
            code = "404"
        else:
            await send({"type": "websocket.close", "code": 1008})
            code = "403"
        seconds = time.perf_counter() - start
        self.metrics.observe_request(dict(scope, method="GET"), code, seconds)
        log.info("GET %s %s %.1fms request_id=%s (a WebSocket handshake)", printable(path), code, seconds * 1000,
                 request_id)
