"""The HTTP API against a real server on a loopback port (ONNX Runtime backend)."""
import concurrent.futures
import io
import os
import re
import struct
import zlib

import numpy as np
import pytest
import requests
from PIL import Image

from mbv3 import fast_preprocess
from mbv3.onnx_classifier import OnnxClassifier

from svc_support import SIZE, Server, bundle_dir, classify, jpeg_bytes, model_json, real_photo  # noqa: F401


@pytest.fixture(scope="module")
def server(bundle_dir):  # noqa: F811
    with Server(bundle_dir, MAX_BODY_BYTES=2_000_000, MAX_BATCH=8, MAX_DELAY_MS=5) as s:
        yield s


def _expect_error(response, status, code):
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body["error"]["code"] == code and body["error"]["message"]
    assert "Traceback" not in response.text


def test_classify_a_photo(server, bundle_dir):  # noqa: F811
    photo = real_photo()
    r = classify(server.url, photo, top_k=3)
    assert r.status_code == 200, r.text
    body = r.json()
    meta = model_json(bundle_dir)
    assert body["model"] == {"name": meta["name"], "version": meta["version"]}
    (result,) = body["results"]
    preds = result["predictions"]
    assert len(preds) == 3 and [p["score"] for p in preds] == sorted([p["score"] for p in preds], reverse=True)
    assert set(result["timings_ms"]) == {"preprocess", "queue", "inference"}
    # the same numbers as running the bundle in-process: the service's decode and preprocessing
    # (PREPROCESSING=auto), ONNX Runtime (the service's BACKEND=auto may be OpenVINO), softmax
    clf = OnnxClassifier(bundle_dir)
    x = fast_preprocess.select("auto")[0](photo, clf.bundle.preprocessing)[None]
    expected = clf.classify(x, 3)[0]
    assert [p["index"] for p in preds] == [i for i, _, _ in expected]
    np.testing.assert_allclose([p["score"] for p in preds], [s for _, _, s in expected], rtol=1e-4)
    assert preds[0]["label"] == expected[0][1]


def test_request_id_is_echoed_or_made(server):
    r = classify(server.url, jpeg_bytes(), )
    assert re.fullmatch("[0-9a-f]{32}", r.headers["X-Request-ID"]) and r.json()["request_id"] == r.headers["X-Request-ID"]
    made = {requests.get(server.url + "/healthz").headers["X-Request-ID"] for _ in range(20)}
    assert len(made) == 20 and r.headers["X-Request-ID"] not in made
    r = requests.post(server.url + "/classify", data=jpeg_bytes(), headers={"Content-Type": "image/jpeg",
                                                                             "X-Request-ID": "trace-42"})
    assert r.headers["X-Request-ID"] == "trace-42" and r.json()["request_id"] == "trace-42"


def test_multipart_with_several_images(server):
    files = [("a", ("one.jpg", jpeg_bytes(seed=1), "image/jpeg")), ("b", ("two.png", _png(), "image/png")),
             ("note", (None, "just a field"))]
    r = requests.post(server.url + "/classify", files=files, params={"top_k": 2})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["filename"] for x in results] == ["one.jpg", "two.png"]
    assert all(len(x["predictions"]) == 2 for x in results)


def _png(mode="RGB", size=(50, 40)):
    buf = io.BytesIO()
    Image.new(mode, size, color=128 if mode in ("L", "P") else (10, 200, 30)).save(buf, "PNG")
    return buf.getvalue()


def _bomb_png(width=100000, height=100000):
    """A tiny PNG whose header claims width x height pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("case", ["empty", "text", "truncated", "bomb", "unsupported-type", "top_k=0", "top_k=5000",
                                  "top_k=abc", "multipart-no-image", "too-large-declared", "too-large-chunked"])
def test_bad_input_gets_its_status_and_the_server_keeps_serving(server, case):
    url = server.url + "/classify"
    if case == "empty":
        _expect_error(classify(server.url, b""), 400, "empty_body")
    elif case == "text":
        _expect_error(classify(server.url, b"just some text, not an image"), 400, "invalid_image")
    elif case == "truncated":
        _expect_error(classify(server.url, jpeg_bytes(size=(400, 300))[:2000]), 400, "invalid_image")
    elif case == "bomb":
        r = classify(server.url, _bomb_png(), content_type="image/png")
        _expect_error(r, 413, "image_too_large")
        assert "10000000000 pixels" in r.json()["error"]["message"]
    elif case == "unsupported-type":
        _expect_error(classify(server.url, b"{}", content_type="application/json"), 415, "unsupported_media_type")
    elif case.startswith("top_k="):
        _expect_error(classify(server.url, jpeg_bytes(), top_k=case.split("=")[1]), 422, "invalid_top_k")
    elif case == "multipart-no-image":
        r = requests.post(url, files=[("field", (None, "no file here"))])
        _expect_error(r, 400, "no_image")
    elif case == "too-large-declared":
        _expect_error(classify(server.url, b"\xff" * 2_500_000), 413, "body_too_large")
    else:  # chunked: no Content-Length, the limit is enforced while reading
        def body():
            for _ in range(50):
                yield b"\xff" * 100_000
        r = requests.post(url, data=body(), headers={"Content-Type": "image/jpeg"})
        _expect_error(r, 413, "body_too_large")
    good = classify(server.url, jpeg_bytes(seed=7))
    assert good.status_code == 200, good.text


def test_understated_content_length_reads_only_what_was_declared(server):
    """A Content-Length that lies low frames the body: the server reads only those bytes (and answers
    for them), the rest never reaches the application and is never buffered as one body."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    payload = jpeg_bytes(size=(400, 300)) + b"\x00" * 3_000_000
    conn.putrequest("POST", "/classify")
    conn.putheader("Content-Type", "image/jpeg")
    conn.putheader("Content-Length", "1000")
    conn.endheaders()
    try:
        conn.send(payload)
    except (BrokenPipeError, ConnectionResetError):
        pass
    response = conn.getresponse()
    assert response.status == 400 and b"invalid_image" in response.read()
    conn.close()
    assert classify(server.url, jpeg_bytes(seed=8)).status_code == 200


def test_health_readiness_metrics_and_model(server, bundle_dir):  # noqa: F811
    assert requests.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = requests.get(server.url + "/readyz")
    assert ready.status_code == 200 and "onnxruntime" in ready.json()["backend"]
    model = requests.get(server.url + "/v1/model").json()
    meta = model_json(bundle_dir)
    meta["source"]["checkpoint"] = os.path.basename(meta["source"]["checkpoint"])   # no server path is shown
    assert {k: model[k] for k in meta} == meta and model["serving"]["max_batch"] == 8
    assert requests.get(server.url + "/docs").status_code == 200
    assert "/classify" in requests.get(server.url + "/openapi.json").json()["paths"]
    classify(server.url, jpeg_bytes())
    text = requests.get(server.url + "/metrics").text
    for name in ('classifier_requests_total{method="POST",route="/classify",status="200"}',
                 'classifier_stage_duration_seconds_bucket{le="0.001",stage="preprocess"}',
                 "classifier_batch_size_count", "classifier_queue_depth", "classifier_images_total",
                 'classifier_requests_total{method="POST",route="/classify",status="415"}'):
        assert name in text, name


def test_200_concurrent_requests_are_batched(server):
    images = [jpeg_bytes(seed=i, size=(160, 120)) for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(lambda i: classify(server.url, images[i % 8]), range(200)))
    assert [r.status_code for r in responses] == [200] * 200
    text = requests.get(server.url + "/metrics").text
    count = float(text.split("classifier_batch_size_count ")[1].split()[0])
    total = float(text.split("classifier_batch_size_sum ")[1].split()[0])
    assert total / count > 1.2  # concurrent requests shared backend runs
