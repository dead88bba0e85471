"""The HTTP/1.1 protocol uvicorn runs the app on (HTTP_PARSER): httptools' C parser (llhttp) when it is
installed, else h11's pure-Python one, which is what `pip install uvicorn` alone brings; the C
parser takes 2-3% off a lone request (`make bench-ab`, docs/benchmarks.md). Either way a request the
parser refuses (a bad request line, a method llhttp does not know, oversized headers, a
Content-Length of -1 or 10**20) gets the service's JSON error, in the plain shape since no path is
known yet, instead of uvicorn's plain-text 400. uvicorn answers those itself, before the app could
see them, through `send_400_response`, which both classes here replace. With httptools that answer
also waits for the answers to the requests before it on the connection (uvicorn would send it at
once, ahead of them, and close): bytes past a request's Content-Length are parsed as the next
request, and the client still gets its answer to the first. Naming the class also keeps uvicorn's
own choice ("auto") from ever answering in plain text."""
from __future__ import annotations

import json

from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import CODES, error_body

MESSAGE = "malformed HTTP request: check the request line, the headers and Content-Length"
PARSERS = ("auto", "httptools", "h11")


def _refusal():
    """The bytes of the JSON 400 for a request the parser refused (the connection closes after it)."""
    body = json.dumps(error_body("", "invalid_http", MESSAGE)).encode("utf-8")
    status = CODES["invalid_http"][0]
    return (b"HTTP/1.1 %d Bad Request\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, len(body))) + body


class JsonErrorsH11Protocol(H11Protocol):
    def send_400_response(self, msg):
        self.transport.write(_refusal())
        self.transport.close()


_httptools_class = None


def httptools_protocol():
    """The httptools protocol class with the JSON 400; ImportError without httptools."""
    global _httptools_class
    if _httptools_class is not None:
        return _httptools_class
    import httptools  # noqa: F401  (uvicorn's module imports it too, but fails only when used)
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class JsonErrorsHttpToolsProtocol(HttpToolsProtocol):
        _refused = False

        def _answering(self):
            """Whether requests before the refused one are still being answered."""
            return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

        def send_400_response(self, msg):
            if self._refused:
                return
            self._refused = True
            if self._answering():
                self.transport.pause_reading()   # the parser is done; on_response_complete answers
                return
            self._refuse()

        def on_response_complete(self):
            super().on_response_complete()
            if self._refused and not self._answering():
                self._refuse()

        def _refuse(self):
            if not self.transport.is_closing():
                self.transport.write(_refusal())
                self.transport.close()

    _httptools_class = JsonErrorsHttpToolsProtocol
    return _httptools_class


def protocol(parser="auto"):
    """(protocol class, name) for HTTP_PARSER=parser: `httptools` needs it installed (ImportError
    naming it otherwise), `h11` always works, `auto` takes httptools when it imports."""
    if parser not in PARSERS:
        raise ValueError("HTTP parser %r: choose one of %s" % (parser, ", ".join(PARSERS)))
    if parser != "h11":
        try:
            return httptools_protocol(), "httptools"
        except ImportError as e:
            if parser == "httptools":
                raise ImportError("HTTP_PARSER=httptools needs the httptools package (%s)" % e)
    return JsonErrorsH11Protocol, "h11"
