"""The HTTP/1.1 protocol uvicorn runs the app on: its h11 implementation, answering a request that h11
cannot parse (a bad request line, oversized headers, a Content-Length of -1 or 10**20) with the
service's JSON error instead of uvicorn's plain-text 400. uvicorn answers those itself, before the
app could see them, through `send_400_response`; this class replaces only that method.

h11 is what `pip install uvicorn` brings and what uvicorn's "auto" picks without httptools; naming
it here also keeps httptools (if some image installs it) from answering in plain text."""
from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import CODES, error_body

MESSAGE = "malformed HTTP request: check the request line, the headers and Content-Length"


class JsonErrorsH11Protocol(H11Protocol):
    def send_400_response(self, msg):
        body = json.dumps(error_body("", "invalid_http", MESSAGE)).encode("utf-8")
        status = CODES["invalid_http"][0]
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode("ascii")),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=status, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()
