"""Service hygiene on a real server (`python -m classifier` on loopback), one server for the module:
/v1/model names the exporting machine's runs but not where they were, X-Request-ID is echoed only when
short and plain, no client string can forge or bloat a log line, no answer redirects by the client's
Host, a WebSocket handshake gets the service's JSON error, every answer carries the security headers
(the pages a CSP their own files satisfy), a multipart charset cannot make a 500, and a client that
leaves mid-request is a 499, not a server fault. The middleware's handling of failures after the
client left is also checked in-process, with a fake app."""
import asyncio
import base64
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid

import pytest
import requests
from starlette.requests import ClientDisconnect

from classifier import errors, middleware
from svc_support import Server, bundle_dir, jpeg_bytes  # noqa: F401

RUN = "/srv/training/runs/run-42"
PAGE_CSP_PARTS = ("default-src 'self'", "script-src 'self'", "frame-ancestors 'none'", "base-uri 'none'",
                  "object-src 'none'")
API_CSP = "default-src 'none'; frame-ancestors 'none'"
ABSOLUTE = re.compile(r"""(?<![^\s"'(=,])(?:~?/|[A-Za-z]:[\\/]|\\\\)[^\s"'(),;/\\]+[\\/]""")
WEBSOCKETS = any(importlib.util.find_spec(m) is not None for m in ("websockets", "wsproto"))


@pytest.fixture(scope="module")
def bundle(bundle_dir, tmp_path_factory):  # noqa: F811
    """The session bundle, copied, with model.json recording a run and overridden fields the way
    `mbv3 export` does: absolute paths on the exporting machine."""
    path = tmp_path_factory.mktemp("hygiene") / "bundle"
    shutil.copytree(str(bundle_dir), str(path))
    meta_path = path / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["source"]["run"] = RUN
    meta["source"]["differs_from_run"] = {"data_dir": {"run": "/data/sets/digits",
                                                       "bundle": "C:\\Users\\J Smith\\data\\digits-v2"}}
    meta["notice"] = "Exported from /srv/training/runs/run-42/ckpt-1 by a test (see /docs)."
    meta_path.write_text(json.dumps(meta))
    return path


@pytest.fixture(scope="module")
def server(bundle):
    with Server(bundle, LOG_LEVEL="info") as s:
        yield s


def raw(server, data, timeout=10):
    """Send `data` on a new connection; (status, headers dict, body) of the first answer, or None if
    the server closed without one."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        out = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
                head, sep, body = out.partition(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if sep and length and len(body) >= int(length.group(1)):
                    break
        except (ConnectionResetError, socket.timeout):
            pass
    if not out:
        return None
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def log_line(server, marker, timeout=10):
    """The server's log line holding `marker` (the request line is logged once the answer is sent)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = [line for line in server.stderr().splitlines() if marker in line]
        if found:
            return found[-1]
        time.sleep(0.05)
    raise AssertionError("no log line with %r in %s" % (marker, server.stderr()[-2000:]))


def error_code(path, response_body):
    body = json.loads(response_body.decode("utf-8"))
    return body["code"] if path.startswith("/v2") else body["error"]["code"]


# --- 1. /v1/model ----------------------------------------------------------------------------------------
def test_model_metadata_names_the_run_not_where_it_was(server, bundle):
    on_disk = json.loads((bundle / "model.json").read_text())
    assert os.path.isabs(on_disk["source"]["checkpoint"]) and on_disk["source"]["run"] == RUN   # the bundle stays
    meta = requests.get(server.url + "/v1/model", timeout=30).json()
    source = meta["source"]
    assert source["run"] == "run-42"
    assert source["checkpoint"] == os.path.basename(on_disk["source"]["checkpoint"])
    assert source["differs_from_run"] == {"data_dir": {"run": "digits", "bundle": "digits-v2"}}
    assert meta["notice"] == "Exported from ckpt-1 by a test (see /docs)."   # a path in a text too
    text = json.dumps(meta)
    assert str(bundle) not in text and "/srv/" not in text and "/data/" not in text and "Smith" not in text
    strings = []

    def walk(value):
        if isinstance(value, dict):
            strings.extend(value)
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str):
            strings.append(value)
    walk(meta)
    assert not [s for s in strings if ABSOLUTE.search(s) or s.startswith("/")]
    assert meta["name"] == on_disk["name"] and meta["files"] == on_disk["files"] and "serving" in meta


# --- 2. X-Request-ID ----------------------------------------------------------------------------------
def test_a_short_plain_request_id_is_echoed_in_the_header_the_body_and_the_log(server):
    rid = "trace-%s.a:b_c" % uuid.uuid4().hex
    r = requests.get(server.url + "/no-such-path", headers={"X-Request-ID": rid}, timeout=30)
    assert r.status_code == 404 and r.headers["X-Request-ID"] == rid and r.json()["request_id"] == rid
    assert "/no-such-path 404" in log_line(server, "request_id=" + rid)


@pytest.mark.parametrize("value", [b"a" * 129, b"has space", b"semi;colon", b"quote\"d", b"ab\xff\xfecd",
                                   b"\xe2\x80\xaeevil", b"a" * 20000])
def test_any_other_request_id_is_replaced_by_a_fresh_one(server, value):
    answer = raw(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-ID: " + value + b"\r\n\r\n")
    assert answer is not None
    status, headers, body = answer
    if status == 200:
        assert re.fullmatch("[0-9a-f]{32}", headers["x-request-id"]), headers
        assert value.decode("latin-1") not in log_line(server, "request_id=" + headers["x-request-id"])
    else:   # refused by the HTTP parser (a header over MAX_HEADER_BYTES): JSON, nothing echoed
        assert 400 <= status < 500 and "x-request-id" not in headers and json.loads(body)["error"]


def test_a_one_megabyte_or_cr_lf_request_id_is_neither_echoed_nor_logged(server):
    before = len(server.stderr())
    for value in (b"m" * (1 << 20), b"a\rb", b"a\nX-Injected: 1", b"a\r\nX-Injected: 1"):
        answer = raw(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-ID: " + value + b"\r\n\r\n")
        if answer is None:   # the server may close on a head it will not read
            continue
        status, headers, _ = answer
        assert "x-injected" not in headers
        if status == 200:   # a fresh id, or "a" where the parser took a bare LF for the header's end
            assert re.fullmatch("[0-9a-f]{32}|a", headers["x-request-id"]), headers
        else:
            assert 400 <= status < 500 and "x-request-id" not in headers
    requests.get(server.url + "/healthz", timeout=30)   # the log lines above are written by now
    logged = server.stderr()[before:]
    assert "m" * 200 not in logged and "X-Injected" not in logged


# --- 3. log lines ---------------------------------------------------------------------------------------
def test_a_path_cannot_forge_a_log_line(server):
    rid = "forge-" + uuid.uuid4().hex
    status, _, body = raw(server, b"GET /healthz%0d%0aINFO%20forged%20line%e2%80%ae%00%1b[31m HTTP/1.1\r\nHost: x\r\n"
                                  b"X-Request-ID: " + rid.encode() + b"\r\n\r\n")
    assert status == 404 and error_code("/", body) == "not_found"
    line = log_line(server, rid)
    assert "/healthz\\r\\nINFO forged line\\u202e\\x00\\x1b[31m 404" in line, line
    assert not [x for x in server.stderr().splitlines() if x.startswith("INFO forged")]
    assert "\x1b" not in server.stderr() and "\u202e" not in server.stderr()


def test_a_long_path_is_cut_in_the_log(server):
    rid = "long-" + uuid.uuid4().hex
    status, _, _ = raw(server, b"GET /" + b"x" * 6000 + b" HTTP/1.1\r\nHost: x\r\nX-Request-ID: " + rid.encode() +
                       b"\r\n\r\n")
    assert status == 404
    line = log_line(server, rid)
    assert "/" + "x" * (middleware.LOGGED_PATH_CHARS - 1) + "... 404" in line and len(line) < 400, len(line)


def test_printable_escapes_what_a_terminal_or_a_log_reader_would_act_on():
    assert middleware.printable("GET") == "GET"
    assert middleware.printable("a\\r\r\n\t\x00\x7f\x85\u2028\u202e\ud800b") == \
        "a\\\\r\\r\\n\\t\\x00\\x7f\\x85\\u2028\\u202e\\ud800b"
    assert middleware.printable("é中") == "é中"   # printable text stays readable
    assert middleware.printable("y" * 500, 10) == "y" * 10 + "..."


# --- 4. no redirect built from Host ------------------------------------------------------------------------
@pytest.mark.parametrize("method,path", [("GET", "/classify/"), ("POST", "/classify/"), ("GET", "/healthz/"),
                                         ("GET", "/v1/model/"), ("GET", "/docs/"), ("GET", "/redoc/"),
                                         ("GET", "/metrics/"), ("GET", "/v2/health/ready/"),
                                         ("GET", "/v2/models/digits_test/")])
def test_a_trailing_slash_is_a_json_404_without_location(server, method, path):
    r = requests.request(method, server.url + path, headers={"Host": "evil.example"}, allow_redirects=False,
                         data=b"x" if method == "POST" else None, timeout=30)
    assert r.status_code == 404 and "Location" not in r.headers, (r.status_code, r.headers)
    assert error_code(path, r.content) == "not_found"


def test_no_answer_carries_a_location_from_a_forged_host(server):
    for target in (b"/", b"/docs", b"/redoc", b"/classify", b"/classify/", b"//evil.example/", b"/v2", b"/v2/",
                   b"http://evil.example/classify/", b"/ui/", b"/docs/files/"):
        answer = raw(server, b"GET " + target + b" HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        assert answer is not None, target
        status, headers, _ = answer
        assert "location" not in headers and status != 307 and not 300 <= status < 400, (target, status, headers)


# --- 5. WebSocket handshakes ----------------------------------------------------------------------------
HANDSHAKE = (b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nX-Request-ID: %s\r\n\r\n")


@pytest.mark.parametrize("path", ["/classify", "/", "/v2/models/digits_test/infer", "/ws"])
def test_a_websocket_handshake_gets_the_services_json_error(server, path):
    rid = "ws-" + uuid.uuid4().hex
    status, headers, body = raw(server, HANDSHAKE % (path.encode(), rid.encode()))
    assert status != 101 and 400 <= status < 500 or (not WEBSOCKETS and path == "/" and status == 200), status
    if not WEBSOCKETS and path == "/":   # no WebSocket library: uvicorn serves the plain GET (the page)
        assert headers["content-type"].startswith("text/html")
        return
    assert headers["content-type"] == "application/json" and headers["x-request-id"] == rid
    assert headers["x-content-type-options"] == "nosniff" and headers["content-security-policy"] == API_CSP
    answer = json.loads(body.decode("utf-8"))
    assert answer["request_id"] == rid
    code = error_code(path, body)
    assert code in errors.CODES and errors.CODES[code][0] == status
    if WEBSOCKETS:   # uvicorn hands the handshake to the app: the middleware refuses it
        assert status == 404 and code == "not_found"
        message = answer["error"] if path.startswith("/v2") else answer["error"]["message"]
        assert "WebSocket" in message and path in message
        assert "(a WebSocket handshake)" in log_line(server, "request_id=" + rid)


# --- 6. security headers ------------------------------------------------------------------------------
@pytest.mark.parametrize("method,path,kind", [
    ("GET", "/", "page"), ("GET", "/docs", "page"), ("GET", "/redoc", "page"), ("GET", "/docs/oauth2-redirect", "page"),
    ("GET", "/ui/page.js", "api"), ("GET", "/ui/page.css", "api"), ("GET", "/docs/files/swagger-ui-bundle.js", "api"),
    ("GET", "/docs/files/favicon.png", "api"), ("GET", "/ui/nope", "api"), ("GET", "/v1/model", "api"),
    ("GET", "/openapi.json", "api"), ("GET", "/metrics", "api"), ("GET", "/healthz", "api"), ("GET", "/readyz", "api"),
    ("GET", "/no/such/path", "api"), ("DELETE", "/classify", "api"), ("POST", "/classify", "api"),
    ("GET", "/v2", "api"), ("GET", "/v2/models/nope", "api"), ("POST", "/v2/models/digits_test/infer", "api")])
def test_every_answer_carries_nosniff_no_framing_and_a_csp(server, method, path, kind):
    r = requests.request(method, server.url + path, data=b"not an image" if method == "POST" else None,
                         headers={"Content-Type": "text/plain"} if method == "POST" else {}, timeout=30)
    assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["X-Frame-Options"] == "DENY"
    csp = r.headers["Content-Security-Policy"]
    if kind == "api":
        assert csp == API_CSP, (path, r.status_code, csp)
        return
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert all(part in csp for part in PAGE_CSP_PARTS), csp
    assert "unsafe-eval" not in csp and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0], csp
    html = r.content
    for script in re.findall(rb"<script(?![^>]*\bsrc\s*=)[^>]*>(.*?)</script>", html, re.DOTALL):
        digest = base64.b64encode(hashlib.sha256(script).digest()).decode()
        assert "'sha256-%s'" % digest in csp, path   # the inline script runs
    for url in re.findall(rb"""(?:src|href)\s*=\s*["']([^"']*)""", html):
        assert not re.match(rb"(?i)[a-z][a-z0-9+.-]*://|//", url) or url.startswith(b"data:"), url   # this server's


def test_the_docs_load_nothing_from_another_host(server):
    swagger = requests.get(server.url + "/docs", timeout=30).text
    assert '"validatorUrl": null' in swagger   # no badge from validator.swagger.io
    redoc_js = requests.get(server.url + "/docs/files/redoc.standalone.js", timeout=30).content
    assert b"cdn.redoc.ly" not in redoc_js


# --- 7. multipart charsets and client-chosen names ----------------------------------------------------------
def multipart(server, charset, disposition):
    body = (b"--BOUNDARY\r\nContent-Disposition: form-data; " + disposition + b"\r\nContent-Type: image/jpeg\r\n\r\n" +
            jpeg_bytes() + b"\r\n--BOUNDARY--\r\n")
    return requests.post(server.url + "/classify", data=body, timeout=60,
                         headers={"Content-Type": "multipart/form-data; boundary=BOUNDARY; charset=" + charset})


@pytest.mark.parametrize("charset", ["unicode_escape", "raw_unicode_escape", "utf-7", "utf-16", "idna", "rot13",
                                     "base64", "zlib", "hex", "no-such-codec", "latin-1",
                                     "undefined", "punycode"])
@pytest.mark.parametrize("disposition", [b'name="file"; filename="\\ud800.jpg"', b'name="\\udc80x"; filename=""',
                                         b'name="file"; filename="' + b"\\ud83d" * 400 + b'.jpg"'])
def test_no_multipart_charset_makes_a_500_or_invalid_json(server, charset, disposition):
    r = multipart(server, charset, disposition)
    assert r.status_code in (200, 207, 400), (r.status_code, r.text[:300])
    answer = json.loads(r.content.decode("utf-8"))   # strict UTF-8: no lone surrogate got through
    for result in answer.get("results", []):
        name = result["filename"]
        assert name is None or (len(name) <= 300 and "\ud800" not in name and "\udc80" not in name), name


# --- 8. clients that leave --------------------------------------------------------------------------------
def test_a_client_that_leaves_mid_body_is_a_499_without_traceback(server):
    rid = "gone-" + uuid.uuid4().hex
    before = len(server.stderr())
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000000\r\n"
                  b"X-Request-ID: " + rid.encode() + b"\r\n\r\n" + b"\xff" * 5000)
        time.sleep(0.2)
    line = log_line(server, rid)
    assert re.search(r"POST /classify 499 [\d.]+ms request_id=%s client closed the connection$" % rid, line), line
    logged = server.stderr()[before:]
    assert "Traceback" not in logged and "ERROR" not in logged and not re.search(r" 500 [\d.]+ms", logged), logged
    metrics = requests.get(server.url + "/metrics", timeout=30).text
    assert re.search(r'classifier_requests_total\{method="POST",route="/classify",status="499"\} [1-9]', metrics)


class FakeMetrics:
    def __init__(self):
        self.seen = []

    def observe_request(self, scope, status, seconds):
        self.seen.append((scope["method"], status))


def run_app(app, messages=({"type": "http.request", "body": b"", "more_body": False}, {"type": "http.disconnect"})):
    """Run `app` behind RequestContext on a fake connection; (what it sent, the metrics' statuses)."""
    metrics, sent, incoming = FakeMetrics(), [], list(messages)

    async def receive():
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
    scope = {"type": "http", "method": "POST", "path": "/classify", "headers": [], "query_string": b""}
    asyncio.run(middleware.RequestContext(app, metrics)(scope, receive, send))
    return sent, [status for _, status in metrics.seen]


@pytest.mark.parametrize("exc", [errors.ClientDisconnected("gone"), ClientDisconnect()])
def test_a_disconnect_raised_by_the_app_is_a_499_with_nothing_sent(exc, caplog):
    async def app(scope, receive, send):
        raise exc
    with caplog.at_level(logging.DEBUG, "classifier"):
        sent, statuses = run_app(app)
    assert sent == [] and statuses == ["499"]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO][-1].endswith(
        "client closed the connection") and not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_failure_after_the_client_left_is_a_499_not_a_500(caplog):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        while (await receive())["type"] != "http.disconnect":
            pass
        raise RuntimeError("write to a closed transport")
    with caplog.at_level(logging.INFO, "classifier"):
        sent, statuses = run_app(app)
    assert statuses == ["499"] and len(sent) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]


def test_a_failure_with_the_client_still_there_is_a_logged_json_500(caplog):
    async def app(scope, receive, send):
        raise RuntimeError("a bug")
    with caplog.at_level(logging.INFO, "classifier"):
        sent, statuses = run_app(app, [{"type": "http.request", "body": b"", "more_body": False}])
    assert statuses == ["500"] and sent[0]["status"] == 500
    headers = dict(sent[0]["headers"])
    assert headers[b"x-content-type-options"] == b"nosniff" and headers[b"content-security-policy"] == API_CSP.encode()
    assert json.loads(sent[1]["body"])["error"]["code"] == "internal"
    assert [r for r in caplog.records if r.levelno == logging.ERROR and r.exc_info]


# --- 9. no library internals in the answers -----------------------------------------------------------------
def test_error_messages_name_no_library_internals(server):
    answers = [requests.get(server.url + "/classify", timeout=30), requests.get(server.url + "/nope", timeout=30),
               requests.post(server.url + "/classify/", timeout=30), requests.get(server.url + "/ui/x", timeout=30),
               requests.post(server.url + "/classify?top_k=x", data=b"x", timeout=30),
               requests.post(server.url + "/classify", data=b"x", headers={"Content-Type": "text/plain"}, timeout=30)]
    for r in answers:
        assert 400 <= r.status_code < 500
        text = r.text.lower()
        assert not [w for w in ("starlette", "fastapi", "pydantic", "uvicorn", "traceback", "exception", "object at 0x",
                                "http_exception", "detail") if w in text], r.text
    _, _, body = raw(server, HANDSHAKE % (b"/classify", b"internals"))
    assert not [w for w in ("starlette", "uvicorn", "asgi", "wsproto") if w in body.decode().lower()], body
