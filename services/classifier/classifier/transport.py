"""The HTTP/1.1 connection layer under the app: uvicorn's protocol (HTTP_PARSER: httptools' C parser
when installed, else h11's pure-Python one), with the bounds uvicorn does not have built in.

Every connection is bounded in time and size before the app sees a request:
- a request's head (request line and headers) must be complete within HEADER_TIMEOUT_SECONDS of the
  connection opening or of the previous response; else 408 `header_timeout` (or a plain close when
  no byte of it came), so a client trickling headers holds a socket for seconds, not forever;
- the head is at most MAX_HEADER_BYTES and MAX_HEADERS lines, counted on the bytes as they arrive,
  before the parser buffers them; else 431 `headers_too_large`;
- at most MAX_CONNECTIONS connections at once. A connection past it makes room by closing the one
  that has waited longest for a request head (idle, or trickling one): clients that hold sockets
  without sending requests cannot lock newcomers out. Only when every connection has a request in
  the app does the newcomer get 503 `too_many_connections`;
- an answer the client does not read closes the connection after SEND_TIMEOUT_SECONDS with the
  answer stuck in the send buffer, so a client that asks and never reads holds nothing for long;
- an idle keep-alive connection closes after KEEP_ALIVE_SECONDS (uvicorn's own timer);
- at most MAX_PIPELINED requests queue behind the one being answered on a connection; more, and the
  queue is dropped and the connection refused (400 `invalid_http` after that answer).
The body's pace is the app's to enforce (bodies.py), since only it knows when it reads one.

Every refusal here is the service's JSON error, answered at once and followed by a close. A request
the parser refuses inside a body the app is reading (a bad chunk-size line) ends that request at
once: the app sees the client gone, so nothing it holds waits for bytes that will never come.
"""
from __future__ import annotations

import collections
import json
from dataclasses import dataclass

from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import CODES, error_body

PARSERS = ("auto", "httptools", "h11")
MESSAGES = {
    "invalid_http": "malformed HTTP request: check the request line, the headers, Content-Length and chunk sizes",
    "header_timeout": "the request's headers did not arrive within %g s",
    "headers_too_large": "the request's headers are over %d bytes or %d lines",
    "too_many_connections": "the server has %d connections open, its limit; retry shortly",
    "too_many_pipelined": "more than %d requests pipelined behind the one being answered",
}
REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large",
           503: b"Service Unavailable"}
# scope["state"] key by which a refused request's status reaches the access log (middleware.py)
REFUSED = "transport_refused"
TERMINATOR = b"\r\n\r\n"
HEAD_SLICE = 4096      # bytes parsed at a time while they may hold request heads
MAX_PIPELINED = 16     # requests queued behind the one being answered on a connection (httptools)


@dataclass(frozen=True)
class ConnectionLimits:
    """The settings the guard enforces (limits_from(settings); their defaults are the Settings')."""
    header_timeout: float
    max_header_bytes: int
    max_headers: int
    max_connections: int
    send_timeout: float


def refusal(code, message, retry_after=None):
    """The bytes of the JSON answer for `code` (errors.CODES), with `Connection: close`."""
    body = json.dumps(error_body("", code, message)).encode("utf-8")
    status = CODES[code][0]
    extra = b"retry-after: %d\r\n" % retry_after if retry_after else b""
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s"
            b"x-content-type-options: nosniff\r\nconnection: close\r\n\r\n"
            % (status, REASONS[status], len(body), extra)) + body


class Guard:
    """Mixed into uvicorn's protocol classes (which keep their names for everything else): the
    head's deadline and size, the connection cap, and refusals in JSON that never wait on the app.
    `limits` (ConnectionLimits) is set on the class protocol() makes."""

    def connection_made(self, transport):
        super().connection_made(transport)
        self._head_bytes = self._head_lines = 0
        self._tail = b""
        self._head_timer = None
        if len(self.connections) > self.limits.max_connections and not self._evict_one():
            self._refuse_full()
            return
        self._waiting()[self] = None
        self._arm_head_timer()

    def _waiting(self):
        """The server's connections that wait for a request head, longest-waiting first (kept on
        uvicorn's per-server state, so both parsers' connections share it)."""
        waiting = getattr(self.server_state, "waiting_for_head", None)
        if waiting is None:
            waiting = self.server_state.waiting_for_head = collections.OrderedDict()
        return waiting

    def _waiting_for_head(self):
        """Whether this connection holds no request in the app: idle, or its head still arriving."""
        return not self.transport.is_closing() and self._in_head() and (
            self.cycle is None or self.cycle.response_complete) and not getattr(self, "pipeline", None)

    def _evict_one(self):
        """Close the connection that has waited longest for a request head; False when every other
        connection has a request in the app. The oldest waiting ones come first, so this takes one
        step unless stale entries (connections that have since started a request) are passed."""
        waiting = self._waiting()
        oldest = None
        for c in list(waiting):
            if c is not self and c._waiting_for_head():
                oldest = c
                break
            waiting.pop(c, None)   # it has a request now; it is added again when that is answered
        if oldest is None:
            return False
        waiting.pop(oldest, None)
        if oldest._head_bytes:
            oldest._refuse_full()
        else:
            oldest._cancel_head_timer()
            oldest.transport.close()
        return True

    def _refuse_full(self):
        self._refuse("too_many_connections", MESSAGES["too_many_connections"] % self.limits.max_connections,
                     retry_after=1)

    def connection_lost(self, exc):
        self._waiting().pop(self, None)
        self._cancel_head_timer()
        self._cancel_send_timer()
        super().connection_lost(exc)

    _send_timer = None

    def pause_writing(self):
        """The send buffer is full (the client is not reading): it has SEND_TIMEOUT_SECONDS to drain it."""
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.limits.send_timeout, self.transport.abort)

    def resume_writing(self):
        self._cancel_send_timer()
        super().resume_writing()

    def _cancel_send_timer(self):
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _in_head(self):
        """Whether the next bytes belong to a request's head: no request yet, or the last one's
        body is complete."""
        return self.cycle is None or not self.cycle.more_body

    def data_received(self, data):
        """Parse `data` a slice at a time while it may hold request heads, so that a packet of
        thousands of pipelined requests is refused after the first MAX_PIPELINED, not parsed whole
        into as many queued requests."""
        while data and not self.transport.is_closing() and not self._refused:
            if self._in_head() and len(data) > HEAD_SLICE:
                piece, data = data[:HEAD_SLICE], data[HEAD_SLICE:]
            else:
                piece, data = data, b""
            if not self._feed(piece):
                return
            if len(getattr(self, "pipeline", ())) > MAX_PIPELINED:
                self.pipeline.clear()   # the queued requests are dropped; the one being answered is not
                self._refuse_soon("invalid_http", MESSAGES["too_many_pipelined"] % MAX_PIPELINED)
                return

    def _feed(self, data):
        """The head's limits on `data`, then the parser; False once the connection is refused."""
        if self._in_head():
            seen = self._tail + data
            end = seen.find(TERMINATOR)
            head = data if end < 0 else data[:max(0, end + len(TERMINATOR) - len(self._tail))]
            self._head_bytes += len(head)
            self._head_lines += head.count(b"\n")
            self._tail = b"" if end >= 0 else seen[-3:]
            if self._head_bytes > self.limits.max_header_bytes or self._head_lines > self.limits.max_headers + 2:
                self._refuse_soon("headers_too_large", MESSAGES["headers_too_large"]
                                  % (self.limits.max_header_bytes, self.limits.max_headers))
                return False
        before = self.cycle
        super().data_received(data)
        if self.cycle is not before:   # a head was parsed: the request is the app's now
            self._waiting().pop(self, None)
            self._cancel_head_timer()
            self._head_bytes = self._head_lines = 0
            self._tail = b""
        return True

    def on_response_complete(self):
        super().on_response_complete()
        waiting = self._waiting()
        waiting.pop(self, None)
        if not self.transport.is_closing():
            waiting[self] = None   # waits again, the newest
        if self._refused:
            self._refuse(*self._refused)
        elif not self.transport.is_closing() and self._head_timer is None:
            self._arm_head_timer()

    def _arm_head_timer(self):
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self):
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self):
        self._head_timer = None
        if not self._waiting_for_head():
            return   # the app has the connection (a body, a response being made): its own deadlines apply
        if self._head_bytes:
            self._refuse("header_timeout", MESSAGES["header_timeout"] % self.limits.header_timeout)
        else:
            self.transport.close()

    _refused = None   # (code, message) of the refusal this connection ends with

    def send_400_response(self, msg):
        self._refuse_soon("invalid_http", MESSAGES["invalid_http"])

    def _refuse_soon(self, code, message):
        """End this connection with `code`: at once, unless the request before the refused bytes is
        whole and being answered (bytes past its Content-Length, pipelined requests): then after its
        answer (on_response_complete), which its own deadlines bound."""
        if self._refused:
            return
        self._refused = (code, message)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if not cycle.more_body:
                self.transport.pause_reading()
                return
            # the refused bytes are in the body the app is reading: that request ends here
            cycle.scope.setdefault("state", {})[REFUSED] = CODES[code][0]
            cycle.disconnected = True
            cycle.message_event.set()
        self._refuse(code, message)

    def _refuse(self, code, message, retry_after=None):
        self._cancel_head_timer()
        if not self.transport.is_closing():
            self.transport.write(refusal(code, message, retry_after))
            self.transport.close()


class GuardedH11Protocol(Guard, H11Protocol):
    pass


_httptools_class = None


def httptools_protocol():
    """The httptools protocol class with the guard; ImportError without httptools."""
    global _httptools_class
    if _httptools_class is None:
        import httptools  # noqa: F401  (uvicorn's module imports it too, but fails only when used)
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        class GuardedHttpToolsProtocol(Guard, HttpToolsProtocol):
            pass
        _httptools_class = GuardedHttpToolsProtocol
    return _httptools_class


def protocol(parser, limits):
    """(protocol class, name) for HTTP_PARSER=parser with `limits` (ConnectionLimits): `httptools`
    needs it installed (ImportError naming it otherwise), `h11` always works, `auto` takes httptools
    when it imports."""
    if parser not in PARSERS:
        raise ValueError("HTTP parser %r: choose one of %s" % (parser, ", ".join(PARSERS)))
    base, name = GuardedH11Protocol, "h11"
    if parser != "h11":
        try:
            base, name = httptools_protocol(), "httptools"
        except ImportError as e:
            if parser == "httptools":
                raise ImportError("HTTP_PARSER=httptools needs the httptools package (%s)" % e)
    return type(base.__name__, (base,), {"limits": limits}), name


def limits_from(settings):
    return ConnectionLimits(header_timeout=settings.HEADER_TIMEOUT_SECONDS, max_header_bytes=settings.MAX_HEADER_BYTES,
                            max_headers=settings.MAX_HEADERS, max_connections=settings.MAX_CONNECTIONS,
                            send_timeout=settings.SEND_TIMEOUT_SECONDS)


def server_config(app, settings, **overrides):
    """The uvicorn.Config the service runs with (`python -m classifier` and the tests' servers alike);
    ImportError when HTTP_PARSER names a parser that is not installed. Returns (config, parser name)."""
    import uvicorn
    http, name = protocol(settings.HTTP_PARSER, limits_from(settings))
    options = dict(host=settings.HOST, port=settings.PORT, log_level=settings.LOG_LEVEL.lower(), access_log=False,
                   timeout_graceful_shutdown=30, http=http, timeout_keep_alive=settings.KEEP_ALIVE_SECONDS,
                   h11_max_incomplete_event_size=settings.MAX_HEADER_BYTES)
    options.update(overrides)
    return uvicorn.Config(app, **options), name
