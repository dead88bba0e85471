"""KServe v2 / Open Inference Protocol with the official Triton client (tritonclient[http]),
binary tensor data (its default) and JSON, FP32 tensors and BYTES tensors of encoded images."""
import base64

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from mbv3 import fast_preprocess
from mbv3.onnx_classifier import OnnxClassifier

from svc_support import SIZE, Server, bundle_dir, jpeg_bytes, model_json, real_photo  # noqa: F401


@pytest.fixture(scope="module")
def server(bundle_dir):  # noqa: F811
    with Server(bundle_dir, MAX_BATCH=4) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    c = httpclient.InferenceServerClient(url="127.0.0.1:%d" % server.port)
    yield c
    c.close()


def test_health_and_metadata(client, bundle_dir):  # noqa: F811
    name = model_json(bundle_dir)["name"]
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
    meta = client.get_model_metadata(name)
    assert meta["name"] == name
    assert {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]} == {
        "input": ("FP32", [-1, SIZE, SIZE, 3]), "images": ("BYTES", [-1])}
    assert [o["name"] for o in meta["outputs"]] == ["logits", "probabilities"]
    with pytest.raises(InferenceServerException):
        client.get_model_metadata("no_such_model")


@pytest.mark.parametrize("binary", [True, False])
def test_fp32_tensor_matches_onnx_runtime(client, bundle_dir, binary):  # noqa: F811
    name = model_json(bundle_dir)["name"]
    batch = np.random.default_rng(1).uniform(-1, 1, (3, SIZE, SIZE, 3)).astype(np.float32)
    inp = httpclient.InferInput("input", list(batch.shape), "FP32")
    inp.set_data_from_numpy(batch, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("logits", binary_data=binary),
               httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
    result = client.infer(name, inputs=[inp], outputs=outputs, request_id="req-7")
    logits = result.as_numpy("logits")
    expected = OnnxClassifier(bundle_dir).logits(batch)
    assert logits.shape == (3, 11)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    np.testing.assert_allclose(result.as_numpy("probabilities").sum(axis=1), 1.0, rtol=1e-5)
    assert result.get_response()["id"] == "req-7"


def test_bytes_tensor_of_encoded_images(client, bundle_dir):  # noqa: F811
    name = model_json(bundle_dir)["name"]
    images = [real_photo(), jpeg_bytes(seed=3)]
    inp = httpclient.InferInput("images", [2], "BYTES")
    inp.set_data_from_numpy(np.array(images, dtype=np.object_))
    result = client.infer(name, inputs=[inp], outputs=[httpclient.InferRequestedOutput("logits")])
    clf = OnnxClassifier(bundle_dir)
    transform = fast_preprocess.select("auto")[0]   # what the service decodes with (PREPROCESSING=auto)
    expected = clf.logits(np.stack([transform(b, clf.bundle.preprocessing) for b in images]))
    np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_plain_json_request_and_errors(server, bundle_dir):  # noqa: F811
    name = model_json(bundle_dir)["name"]
    url = "%s/v2/models/%s/infer" % (server.url, name)
    body = {"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(jpeg_bytes()).decode()]}], "outputs": [{"name": "probabilities"}]}
    r = requests.post(url, json=body)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["name"] == "probabilities" and out["shape"] == [1, 11] and abs(sum(out["data"]) - 1) < 1e-4
    bad = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 8, 8, 3], "data": [0.0] * 192}]}
    r = requests.post(url, json=bad)
    assert r.status_code == 400 and "must be [N,%d,%d,3]" % (SIZE, SIZE) in r.json()["error"]
    r = requests.post(url, data=b"not json")
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    r = requests.post(url, json={"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1],
                                             "data": [base64.b64encode(b"text").decode()]}]})
    assert r.status_code == 400 and "not an image" in r.json()["error"]
    r = requests.post("%s/v2/models/other/infer" % server.url, json=body)
    assert r.status_code == 404 and "unknown model" in r.json()["error"]
