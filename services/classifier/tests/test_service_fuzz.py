"""Property-based fuzzing of every endpoint of a real server on loopback (`python -m classifier`).

schemathesis generates requests from the service's own OpenAPI document, valid and invalid ones, and
checks every answer against it (status documented for the operation, body matching its schema);
hypothesis mutates valid KServe v2 requests (JSON and binary) and sends methods, paths and bodies no
schema describes. Whatever arrives, the answer is never a 5xx, and every 4xx is JSON in the error
shape of its path with a code from errors.CODES and that code's status."""
import base64
import copy
import io
import json

import hypothesis
import numpy as np
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, strategies as st
from PIL import Image
from schemathesis.checks import positive_data_acceptance
from schemathesis.generation.modes import GenerationMode

from classifier.errors import CODES, is_v2

from svc_support import SIZE, Server, bundle_dir, model_json  # noqa: F401

SETTINGS = dict(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def server(bundle_dir):  # noqa: F811
    # warning, not info: Server pipes stderr and reads it only at exit, so a log line per request for
    # hundreds of requests would fill the pipe and block the server's event loop
    with Server(bundle_dir, MAX_BODY_BYTES=1_000_000, LOG_LEVEL="warning") as s:
        yield s


def check_answer(path, response):
    """No 5xx; a 4xx is JSON in its path's error shape, with a known code and that code's status."""
    status = response.status_code
    assert status < 500, (path, status, response.text[:500])
    if status < 400:
        return
    ctype = response.headers.get("content-type", "")
    ctype = ctype[0] if isinstance(ctype, list) else ctype   # schemathesis' Response keeps a list per header
    assert ctype.startswith("application/json"), (path, status, response.text[:300])
    body = response.json()
    refused = isinstance(body.get("error"), dict) and body["error"].get("code") == "invalid_http"
    if is_v2(path) and not refused:   # the HTTP parser's refusal comes before any path is known
        assert isinstance(body.get("error"), str) and body["error"], body
        code = body.get("code")
    else:
        assert isinstance(body.get("error"), dict) and body["error"].get("message"), body
        code = body["error"].get("code")
    assert code in CODES and CODES[code][0] == status, (path, status, body)
    assert "Traceback" not in response.text


# --- 1. schemathesis: every operation in the OpenAPI document -------------------------------------------
# (hypothesis drives each operation's strategies here: schemathesis 4.32's own pytest loader breaks on pytest 9)
OPERATIONS = [("POST", "/classify"), ("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"), ("GET", "/v1/model"),
              ("GET", "/v2"), ("GET", "/v2/health/live"), ("GET", "/v2/health/ready"), ("GET", "/v2/models/{name}"),
              ("GET", "/v2/models/{name}/ready"), ("POST", "/v2/models/{name}/infer")]


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(server.url + "/openapi.json")


def test_the_operation_list_is_the_documents(api_schema):
    document = api_schema.raw_schema["paths"]
    assert sorted((m.upper(), p) for p, ops in document.items() for m in ops) == sorted(OPERATIONS)


@pytest.mark.parametrize("method,path", OPERATIONS)
def test_every_operation_answers_as_documented(api_schema, bundle_dir, method, path):  # noqa: F811
    operation = api_schema[path][method]
    names = [None, {"name": model_json(bundle_dir)["name"]}] if "{name}" in path else [None]   # None: generated
    cases = st.one_of(*[operation.as_strategy(generation_mode=mode, path_parameters=name)
                        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) for name in names])

    statuses = []

    @hypothesis.given(cases)
    @hypothesis.settings(max_examples=100 if method == "POST" else 30, **SETTINGS)
    def run(case):
        response = case.call(timeout=30)
        statuses.append(response.status_code)
        check_answer(case.formatted_path, response)
        # a body the schema allows can still be refused: random bytes are a valid image/png body, not a PNG
        case.validate_response(response, excluded_checks=[positive_data_acceptance])
    run()
    assert statuses
    if method == "POST" or "{name}" in path:   # the refusals were exercised, not only the happy path
        assert len(statuses) >= 25 and any(400 <= s < 500 for s in statuses), statuses


# --- 2. hypothesis: v2 inference requests mutated from valid ones ------------------------------------------
def _png():
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 10, 30)).save(buf, "PNG")
    return buf.getvalue()


PNG = _png()
FP32 = np.random.default_rng(0).uniform(-1, 1, (1, SIZE, SIZE, 3)).astype(np.float32)
OUTPUTS = [{"name": "probabilities", "parameters": {"binary_data": False}}]
BASES = {   # name: (JSON header, binary tensor data or None), each one a valid request
    "bytes-json": ({"id": "r1", "inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                                            "data": [base64.b64encode(PNG).decode()]}], "outputs": OUTPUTS}, None),
    "bytes-binary": ({"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                                  "parameters": {"binary_data_size": 4 + len(PNG)}}], "outputs": OUTPUTS},
                     len(PNG).to_bytes(4, "little") + PNG),
    "fp32-binary": ({"parameters": {"binary_data_output": True},
                     "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, SIZE, SIZE, 3],
                                 "parameters": {"binary_data_size": FP32.nbytes}}]}, FP32.tobytes()),
}
PLACES = [(), ("id",), ("parameters",), ("parameters", "binary_data_output"), ("inputs",), ("inputs", 0),
          ("inputs", 0, "name"), ("inputs", 0, "datatype"), ("inputs", 0, "shape"), ("inputs", 0, "shape", 0),
          ("inputs", 0, "data"), ("inputs", 0, "data", 0), ("inputs", 0, "parameters"),
          ("inputs", 0, "parameters", "binary_data_size"), ("outputs",), ("outputs", 0), ("outputs", 0, "name"),
          ("outputs", 0, "parameters"), ("outputs", 0, "parameters", "binary_data")]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=2 ** 31, max_value=10 ** 30),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                    st.sampled_from(["FP32", "BYTES", "UINT8", "INT32", "FP16", "input", "images", "logits", ""]))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)
mutations = st.lists(st.tuples(st.sampled_from(PLACES), json_values), max_size=3)


def _put(request, place, value):
    if not place:
        return value
    node = request
    for key in place[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(key, {})
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return request
    key = place[-1]
    if isinstance(node, dict) or (isinstance(node, list) and isinstance(key, int) and key < len(node)):
        node[key] = value
    return request


def test_mutated_v2_requests_get_json_4xx_never_5xx(server, bundle_dir):  # noqa: F811
    url = "%s/v2/models/%s/infer" % (server.url, model_json(bundle_dir)["name"])
    statuses = []

    @hypothesis.given(st.sampled_from(sorted(BASES)), mutations, st.one_of(st.none(), st.binary(max_size=64)),
                      st.one_of(st.none(), st.floats(width=32)), st.integers(-3, 3), st.binary(max_size=8))
    @hypothesis.settings(max_examples=600, **SETTINGS)
    def run(base, changes, other_tensor, planted, delta, trailing):
        head, tensor = copy.deepcopy(BASES[base])
        for place, value in changes:
            head = _put(head, place, value)
        if tensor is None:
            r = requests.post(url, data=json.dumps(head).encode(), timeout=30)   # NaN and Infinity tokens included
        else:
            if other_tensor is not None:
                tensor = other_tensor
            elif planted is not None and base == "fp32-binary":   # NaN, Inf or any float in the first element
                tensor = np.float32(planted).tobytes() + tensor[4:]
            header = json.dumps(head).encode()
            r = requests.post(url, data=header + tensor + trailing, timeout=30,
                              headers={"Inference-Header-Content-Length": str(len(header) + delta)})
        statuses.append(r.status_code)
        check_answer("/v2/models/x/infer", r)
    run()
    assert 200 in statuses and 400 in statuses, sorted(set(statuses))   # both sides of the validation were reached


# --- 3. hypothesis: methods, paths and bodies outside the schema -------------------------------------------
PATHS = ["/classify", "/healthz", "/readyz", "/metrics", "/v1/model", "/v2", "/v2/health/live", "/v2/health/ready",
         "/v2/models/{model}", "/v2/models/{model}/ready", "/v2/models/{model}/infer", "/v2/models/other/infer",
         "/docs", "/openapi.json", "/", "/nope", "/v2/nope", "/classify/extra", "/v2/models/{model}/versions/1/infer"]
METHODS = st.one_of(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
                    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=12))
CONTENT_TYPES = st.sampled_from(["image/jpeg", "image/png", "application/json", "multipart/form-data",
                                 "multipart/form-data; boundary=x", "text/plain", "application/octet-stream", ""])


def test_any_method_path_and_body_gets_json_4xx_never_5xx(server, bundle_dir):  # noqa: F811
    model = model_json(bundle_dir)["name"]
    statuses = []

    @hypothesis.given(METHODS, st.sampled_from(PATHS), CONTENT_TYPES, st.binary(max_size=256),
                      st.sampled_from([None, "", "0", "abc", "-1", "5", "99999"]), st.sampled_from([None, "0", "3", "x"]))
    @hypothesis.settings(max_examples=150, **SETTINGS)
    def run(method, path, ctype, body, hlen, top_k):
        path = path.format(model=model)
        headers = {"Content-Type": ctype} if ctype else {}
        if hlen is not None:
            headers["Inference-Header-Content-Length"] = hlen
        r = requests.request(method, server.url + path, data=body, headers=headers,
                             params={"top_k": top_k} if top_k is not None else None, timeout=30)
        statuses.append(r.status_code)
        if method == "HEAD":   # no body to check
            assert r.status_code < 500
        else:
            check_answer(path, r)
    run()
    assert {200, 400, 404, 405} <= set(statuses), sorted(set(statuses))
