"""What every kind of bad request gets, on a real server (`python -m classifier` on loopback): the
malformed KServe v2 requests that once got a 500, NaN in and out, 404/405 and malformed HTTP in the
documented JSON shapes, metric labels a client cannot grow, one table of error codes that the code,
the OpenAPI document and docs/api.md agree on."""
import ast
import json
import os
import re
import socket
import time

import numpy as np
import pytest
import requests

from classifier import kserve, transport
from classifier.settings import Settings
from classifier.errors import CODES

from svc_support import SIZE, Server, bundle_dir, model_json  # noqa: F401

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
PACKAGE = os.path.join(ROOT, "services", "classifier", "classifier")
PIXELS = SIZE * SIZE * 3


@pytest.fixture(scope="module")
def server(bundle_dir):  # noqa: F811
    with Server(bundle_dir, LOG_LEVEL="warning") as s:
        yield s


@pytest.fixture(scope="module")
def h11_server(bundle_dir):  # noqa: F811
    """HTTP_PARSER=h11 (the module's `server` runs the default, httptools, which the requirements install)."""
    with Server(bundle_dir, HTTP_PARSER="h11") as s:
        yield s


def test_the_default_parser_is_httptools_and_h11_is_a_setting_away(h11_server):
    assert transport.protocol("auto", transport.limits_from(Settings()))[1] == "httptools"
    assert "HTTP parser: h11 (HTTP_PARSER=h11)" in h11_server.stderr()


@pytest.fixture(scope="module")
def infer_url(server, bundle_dir):  # noqa: F811
    return "%s/v2/models/%s/infer" % (server.url, model_json(bundle_dir)["name"])


def expect(response, status, code, v2=True):
    """The documented error: that status, JSON in the path's shape, that code, the request id."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    if v2:
        assert isinstance(body["error"], str) and body["error"] and body["code"] == code, body
    else:
        assert body["error"]["code"] == code and body["error"]["message"], body
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert CODES[code][0] == status
    return body


def fp32(**changes):
    spec = {"name": "input", "datatype": "FP32", "shape": [1, SIZE, SIZE, 3], "data": [0.0] * PIXELS}
    spec.update(changes)
    return {"inputs": [spec]}


def binary(header, tensor):
    head = json.dumps(header).encode()
    return head + tensor, {"Inference-Header-Content-Length": str(len(head))}


def bytes_input(**changes):
    spec = {"name": "images", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}
    spec.update(changes)
    return {"inputs": [spec]}


# The 17 requests issue 9 found answered with a 500 (finding 3), each with what it gets now.
MALFORMED = {
    "empty batch": (fp32(shape=[0, SIZE, SIZE, 3], data=[]), "invalid_inference_request", "has no elements"),
    "BYTES shape [0]": (bytes_input(shape=[0], data=[]), "invalid_inference_request", "has no elements"),
    "negative dim": (fp32(shape=[-1, SIZE, SIZE, 3]), "invalid_inference_request", "shape[0]"),
    "string dim": (fp32(shape=["1", SIZE, SIZE, 3]), "invalid_inference_request", "shape[0]"),
    "float dim": (fp32(shape=[1.0, SIZE, SIZE, 3]), "invalid_inference_request", "shape[0]"),
    "null dim": (fp32(shape=[None, SIZE, SIZE, 3]), "invalid_inference_request", "shape[0]"),
    "UINT8 300": (fp32(datatype="UINT8", data=[300] + [0] * (PIXELS - 1)), "invalid_inference_request", "0 to 255"),
    "INT32 2**40": (fp32(datatype="INT32", data=[2 ** 40] + [0] * (PIXELS - 1)), "invalid_inference_request",
                    "-2147483648 to 2147483647"),
    "inputs [1]": ({"inputs": [1]}, "invalid_inference_request", "inputs[0]"),
    "input parameters 'x'": (fp32(parameters="x"), "invalid_inference_request", "inputs[0].parameters"),
    "binary_data_size 'abc'": (fp32(parameters={"binary_data_size": "abc"}), "invalid_inference_request",
                               "binary_data_size"),
    "5 binary bytes for FP32": (binary({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1],
                                                    "parameters": {"binary_data_size": 5}}]}, b"12345"),
                                "invalid_inference_request", "binary_data_size 5"),
    "BYTES element 10**15": (bytes_input(data=[10 ** 15]), "invalid_inference_request", "base64 strings"),
    "outputs ['logits']": (dict(fp32(), outputs=["logits"]), "invalid_inference_request", "outputs[0]"),
    "output parameters 5": (dict(fp32(), outputs=[{"name": "logits", "parameters": 5}]), "invalid_inference_request",
                            "outputs[0].parameters"),
    "parameters [1]": (dict(fp32(), parameters=[1]), "invalid_inference_request", "parameters"),
    "JSON 100,000 deep": ((b"[" * 100_000 + b"]" * 100_000, {}), "invalid_json", "deeper than 32"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_v2_request_gets_json_400(infer_url, case):
    request, code, says = MALFORMED[case]
    if isinstance(request, tuple):
        body, headers = request
        r = requests.post(infer_url, data=body, headers=headers, timeout=30)
    else:
        r = requests.post(infer_url, json=request, timeout=30)
    assert says in expect(r, 400, code)["error"]


def test_the_server_still_serves_after_them(infer_url):
    for case in sorted(MALFORMED):
        request = MALFORMED[case][0]
        if isinstance(request, dict):
            requests.post(infer_url, json=request, timeout=30)
    r = requests.post(infer_url, json=fp32(), timeout=30)
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"][0] == 1


def _strict_json(text):
    def refuse(name):
        raise ValueError("bare %s in the response" % name)
    return json.loads(text, parse_constant=refuse)


def test_nan_and_infinity_are_refused_and_answers_are_strict_json(infer_url):
    """Finding 7: NaN in an FP32 input once came back as bare NaN tokens in a 200."""
    nan_json = json.dumps(fp32(data=[float("nan")] + [0.0] * (PIXELS - 1)))   # Python writes the NaN token
    assert "NaN" in nan_json
    r = requests.post(infer_url, data=nan_json, timeout=30)
    assert "NaN is not a JSON number" in expect(r, 400, "invalid_json")["error"]
    for value in (np.nan, np.inf, -np.inf):
        tensor = np.zeros((1, SIZE, SIZE, 3), np.float32)
        tensor[0, 5, 5, 1] = value
        body, headers = binary({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, SIZE, SIZE, 3],
                                            "parameters": {"binary_data_size": tensor.nbytes}}]}, tensor.tobytes())
        r = requests.post(infer_url, data=body, headers=headers, timeout=30)
        assert "must be finite" in expect(r, 400, "invalid_inference_request")["error"]
    r = requests.post(infer_url, json=fp32(data=[1e39] + [0.0] * (PIXELS - 1)), timeout=30)   # inf as FP32
    assert "must be finite" in expect(r, 400, "invalid_inference_request")["error"]
    # finite inputs far outside [-1, 1] overflow this model's logits: refused, never a bare NaN
    r = requests.post(infer_url, json=fp32(data=[3e38] * PIXELS), timeout=30)
    assert "not finite" in expect(r, 400, "invalid_inference_request")["error"]
    r = requests.post(infer_url, json=fp32(data=[0.5] * PIXELS), timeout=30)
    assert r.status_code == 200
    assert [len(o["data"]) for o in _strict_json(r.text)["outputs"]] == [11, 11]


@pytest.mark.parametrize("method,path,status,code", [
    ("GET", "/no/such/page", 404, "not_found"), ("GET", "/v2/no/such/page", 404, "not_found"),
    ("DELETE", "/healthz", 405, "method_not_allowed"), ("GET", "/classify", 405, "method_not_allowed"),
    ("PUT", "/v2/models/x/infer", 405, "method_not_allowed"), ("PURGE", "/v1/model", 405, "method_not_allowed"),
    ("POST", "/v2/models/other/infer", 404, "unknown_model")])
def test_404_and_405_answer_the_documented_shape(server, method, path, status, code):
    """Finding 13: FastAPI's {"detail": ...} is gone; /v2 keeps the protocol's string `error`."""
    r = requests.request(method, server.url + path, timeout=30)
    body = expect(r, status, code, v2=path.startswith("/v2"))
    assert "detail" not in body
    if status == 405:
        assert r.headers["Allow"] and r.headers["Allow"] in json.dumps(body)


@pytest.mark.parametrize("parser,status,code", [("server", 400, "invalid_http"), ("h11_server", 405, "method_not_allowed")])
@pytest.mark.parametrize("path", ["/v1/model", "/v2/models/x/infer"])
def test_a_made_up_method(request, parser, status, code, path):
    """llhttp (httptools) refuses a method it does not know before any route is known: the parser's JSON
    400, in the plain shape on every path; h11 takes any token, and routing answers 405."""
    r = requests.request("BREW", request.getfixturevalue(parser).url + path, timeout=30)
    if parser == "h11_server":
        expect(r, status, code, v2=path.startswith("/v2"))
    else:   # refused before it was a request: no request id either
        assert r.status_code == status and r.headers["content-type"] == "application/json"
        assert r.json()["error"]["code"] == code and r.headers["connection"] == "close"


def _raw_http(port, head):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    status_line, _, rest = b"".join(chunks).partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), headers.decode("latin-1").lower(), body


@pytest.mark.parametrize("parser", ["server", "h11_server"])
@pytest.mark.parametrize("length", ["-1", "100000000000000000000", "12abc"])
def test_a_content_length_uvicorn_refuses_gets_the_json_error(request, parser, length):
    """Finding 10: the HTTP parser refuses these before the app sees the request; the service's own
    protocol classes (classifier/transport.py) answer in the JSON shape instead of uvicorn's plain text."""
    server = request.getfixturevalue(parser)
    status, headers, body = _raw_http(server.port, ("POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                                                    "Content-Length: %s\r\n\r\n" % length).encode())
    assert status == 400 and "content-type: application/json" in headers
    assert json.loads(body)["error"]["code"] == "invalid_http"
    assert requests.get(server.url + "/healthz", timeout=30).status_code == 200


@pytest.mark.parametrize("parser", ["server", "h11_server"])
def test_made_up_methods_and_paths_do_not_grow_metrics(request, parser):
    """Finding 6: 2,000 made-up methods once grew /metrics from 40 KB to 618 KB. Under h11 they reach the
    app and count as `other`; llhttp refuses them first (400 invalid_http), so they never reach it."""
    server = request.getfixturevalue(parser)
    def sample(text, labels):
        line = 'classifier_requests_total{%s} ' % labels
        return float(text.split(line)[1].split()[0]) if line in text else 0.0
    made_up, unknown = 'method="other",route="/healthz",status="405"', 'method="GET",route="other",status="404"'
    requests.request("WARMX", server.url + "/healthz", timeout=30)   # the series one of each makes, first
    requests.get(server.url + "/page/warm", timeout=30)
    text = requests.get(server.url + "/metrics", timeout=30).text
    size, counts = len(text), (sample(text, made_up), sample(text, unknown))
    refused = []
    with requests.Session() as session:
        for i in range(1000):
            refused.append(session.request("M%dX" % i, server.url + "/healthz", timeout=30).status_code)
            session.get(server.url + "/page/%d" % i, timeout=30)
    text = requests.get(server.url + "/metrics", timeout=30).text
    assert len(text) - size < 4000, len(text) - size   # a handful of new series, not thousands
    reached = 1000 if parser == "h11_server" else 0
    assert set(refused) == {405 if reached else 400}
    assert (sample(text, made_up) - counts[0], sample(text, unknown) - counts[1]) == (reached, 1000)


def test_json_headers_are_bounded_before_parsing(infer_url):
    """10 MB of empty lists once cost json.loads about 760 MB: values, then arrays and objects, are
    counted before parsing."""
    many = b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1],"data":[' + b"[]," * 200_000 + b'[]]}]}'
    r = requests.post(infer_url, data=many, timeout=30)
    assert "over the limit of 131072 (MAX_JSON_VALUES)" in expect(r, 413, "json_too_large")["error"]
    nests = b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1],"data":' + b"[" * 20 + b"[]" + b"]" * 20 + b"}]}"
    few = nests.replace(b"[" * 20 + b"[]" + b"]" * 20, b"[" + b"[[[[]]]]" * (kserve.MAX_JSON_CONTAINERS // 4 + 1) + b"]")
    r = requests.post(infer_url, data=few, timeout=30)   # many arrays, few commas
    assert "more than %d arrays and objects" % kserve.MAX_JSON_CONTAINERS in expect(r, 400, "invalid_json")["error"]
    deep = json.dumps(fp32(data=[[[[v] for v in [0.0] * 16]]] * 8)).replace("[0.0]", "[" * 30 + "0.0" + "]" * 30)
    r = requests.post(infer_url, data=deep, timeout=30)
    assert "deeper than 32" in expect(r, 400, "invalid_json")["error"]
    nested = fp32(data=np.zeros((1, SIZE, SIZE, 3)).tolist())   # nested data within both limits is fine
    assert requests.post(infer_url, json=nested, timeout=30).status_code == 200


# --- one table of codes ---------------------------------------------------------------------------
def _raised_codes():
    """(status or None, code) of every error the service's source raises, read from its syntax tree."""
    found = []
    for name in sorted(os.listdir(PACKAGE)):
        if not name.endswith(".py"):
            continue
        for node in ast.walk(ast.parse(open(os.path.join(PACKAGE, name)).read())):
            if not isinstance(node, ast.Call):
                continue
            func = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            args = [a.value if isinstance(a, ast.Constant) else None for a in node.args]
            if func == "ApiError":
                found.append((args[0], args[1]))
            elif func == "bad_request":
                found.append((400, args[0]))
            elif func == "unavailable":
                found.append((503, args[0]))
            elif func == "ProtocolError" and len(args) > 1:
                found.append((400, args[1]))
            elif func in ("error_response", "answer") and len(args) > 3 and isinstance(args[2], str):
                found.append((args[1], args[2]))
            elif func == "error_body" and len(args) > 2 and isinstance(args[1], str):
                found.append((None, args[1]))
    return [(status, code) for status, code in found if isinstance(code, str)]   # not the helpers' own bodies


def test_every_code_the_service_raises_is_in_the_table_with_its_status():
    raised = _raised_codes()
    assert len(raised) >= 15 and ("body_too_large" in {c for _, c in raised})
    for status, code in raised:
        assert code in CODES, code
        assert status is None or CODES[code][0] == status, (code, status, CODES[code])
    assert kserve.ProtocolError("x").code in CODES


def test_the_api_docs_list_every_code_with_its_status():
    doc = open(os.path.join(ROOT, "docs", "api.md")).read()
    for code, (status, _) in CODES.items():
        assert "| %d | `%s` |" % (status, code) in doc, code


def test_the_openapi_document_describes_bodies_parameters_errors_and_metrics(server, bundle_dir):  # noqa: F811
    doc = requests.get(server.url + "/openapi.json", timeout=30).json()
    classify = doc["paths"]["/classify"]["post"]
    assert {"image/jpeg", "image/png", "multipart/form-data", "application/octet-stream"} <= set(
        classify["requestBody"]["content"])
    (top_k,) = [p for p in classify["parameters"] if p["name"] == "top_k"]
    max_top_k = requests.get(server.url + "/v1/model", timeout=30).json()["serving"]["limits"]["max_top_k"]
    assert top_k["schema"] == {"type": "integer", "minimum": 1, "maximum": max_top_k, "default": min(5, max_top_k)}
    infer = doc["paths"]["/v2/models/{name}/infer"]["post"]
    content = infer["requestBody"]["content"]
    assert "inputs" in content["application/json"]["schema"]["properties"] and "application/octet-stream" in content
    assert kserve.HEADER in [p["name"] for p in infer["parameters"]]
    metrics = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert metrics and all(t.startswith("text/plain") for t in metrics)
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/V2Error" if path.startswith("/v2") else "/Error"), (path, status, ref)
                    codes = re.findall(r"`(\w+)`", response["description"])
                    assert codes and all(CODES[code][0] == int(status) for code in codes), (path, status, codes)


# --- the JSON depth scan, on its own ----------------------------------------------------------------
@pytest.mark.parametrize("text,deeper", [
    (b"[" * 32 + b"]" * 32, False), (b"[" * 33 + b"]" * 33, True), (b'{"a":' * 33 + b"1" + b"}" * 33, True),
    (b'["' + b"[" * 100 + b'"]', False),               # brackets inside a string do not count
    (b'["\\"' + b"[" * 100 + b'"]', False),            # nor after an escaped quote inside it
    (b'["\\\\"' + b"[" * 100, True),                   # an escaped backslash ends the string: these count
    (b'"' + b"[" * 100, False),                         # an unterminated string swallows the rest
])
def test_depth_scan(text, deeper):
    assert kserve.nests_deeper_than(text, 32) is deeper


def test_depth_scan_is_linear_on_hostile_input():
    for text in (b'"\\"' * 3_000_000, b"[]" * 5_000_000, b'{"a":' * 2_000_000, b"[" * 10_000_000):
        start = time.perf_counter()
        kserve.nests_deeper_than(text, 32)
        assert time.perf_counter() - start < 3, text[:10]


def test_every_exception_the_service_defines_is_a_service_error():
    """One hierarchy: a handler (or a reader) catching ServiceError catches every error the service
    raises on purpose, and anything else is a bug."""
    import importlib
    import inspect
    import pkgutil

    import classifier
    from classifier.errors import ServiceError
    defined = []
    for info in pkgutil.walk_packages(classifier.__path__, "classifier."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        defined += [obj for _, obj in inspect.getmembers(module, inspect.isclass)
                    if issubclass(obj, BaseException) and obj.__module__ == module.__name__]
    names = {c.__name__ for c in defined}
    assert {"ApiError", "SettingsError", "EngineError", "ProtocolError", "BackendError", "ClientDisconnected"} <= names
    assert [c for c in defined if not issubclass(c, ServiceError)] == []
