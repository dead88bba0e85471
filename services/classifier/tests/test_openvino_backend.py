"""BACKEND=openvino: the bundle's model.onnx in OpenVINO's CPU plugin gives ONNX Runtime's logits,
refuses a model that contradicts model.json, and serves over HTTP with the same answers; BACKEND=auto
picks it on a host without Ascend devices."""
import os

import numpy as np
import pytest
import requests

from classifier import backends
from classifier.backends.base import BackendError
from classifier.backends.onnxruntime import OnnxRuntimeBackend
from classifier.backends.openvino import OpenVinoBackend
from mbv3 import bundle as bundle_mod

from svc_support import SIZE, Server, bundle_dir, classify, real_photo  # noqa: F401


@pytest.fixture(scope="module")
def loaded(bundle_dir):  # noqa: F811
    return bundle_mod.load(str(bundle_dir))


def test_logits_match_onnx_runtime(loaded):
    ov = OpenVinoBackend(loaded.file(bundle_mod.ONNX), loaded.info, threads=2, max_batch=8)
    ort = OnnxRuntimeBackend(loaded.file(bundle_mod.ONNX), loaded.info, threads=2, max_batch=8)
    rng = np.random.default_rng(0)
    for n in (1, 3, 8):   # the static batch-1 model, the dynamic one, the static max_batch one
        batch = rng.uniform(-1, 1, (n, SIZE, SIZE, 3)).astype(np.float32)
        a, b = ov.run(batch), ort.run(batch)
        assert a.shape == b.shape == (n, loaded.info.num_classes) and a.dtype == np.float32
        assert np.abs(a - b).max() <= 1e-3 * np.abs(b).max()   # float32 in both (bfloat16 would be ~2e-2)
        assert (a.argmax(1) == b.argmax(1)).all()
    first = ov.run(batch[:1])
    ov.run(batch[1:2])
    assert np.array_equal(first, ov.run(batch[:1]))   # each answer is its own copy, not the request's buffer
    assert ov.describe().startswith("openvino 2") and ov.max_batch == 8
    ov.close()
    ov.close()


@pytest.mark.parametrize("backend_class", [OpenVinoBackend, OnnxRuntimeBackend])
def test_a_lone_image_runs_on_its_own_model_with_more_threads(loaded, backend_class):
    """threads=1, alone_threads=2 (two workers on two CPUs): run() at batch 1 and run_alone() are two
    models or sessions of 1 and 2 threads with the same answers; OpenVINO's one-thread models are not
    pinned (each would start from the first core)."""
    kwargs = {"cache_dir": ""} if backend_class is OpenVinoBackend else {}
    b = backend_class(loaded.file(bundle_mod.ONNX), loaded.info, threads=1, max_batch=8, alone_threads=2, **kwargs)
    x = np.random.default_rng(1).uniform(-1, 1, (1, SIZE, SIZE, 3)).astype(np.float32)
    one, alone = b.run(x), b.run_alone(x)
    assert np.abs(one - alone).max() <= 1e-4 * np.abs(one).max() and one.argmax() == alone.argmax()
    assert "1 " in b.describe() and "a lone image 2" in b.describe(), b.describe()
    if backend_class is OpenVinoBackend:
        alone_model, batch_model = b._alone.get_compiled_model(), b._single.get_compiled_model()
        assert (alone_model.get_property("INFERENCE_NUM_THREADS"), batch_model.get_property("INFERENCE_NUM_THREADS")) == (2, 1)
        assert batch_model.get_property("ENABLE_CPU_PINNING") is False
    else:
        assert (b.single.get_session_options().intra_op_num_threads,
                b.batched.get_session_options().intra_op_num_threads) == (2, 1)
    b.close()


def test_a_model_that_contradicts_model_json_is_refused(loaded, tmp_path):
    info = loaded.info
    plain = info.to_dict()
    plain["output"]["num_classes"] = info.num_classes + 1
    plain["output"]["shape"] = [plain["output"]["shape"][0], info.num_classes + 1]
    wrong = bundle_mod.ModelInfo.from_dict(plain)
    assert wrong.num_classes == info.num_classes + 1
    with pytest.raises(BackendError, match="num_classes") as e:
        OpenVinoBackend(loaded.file(bundle_mod.ONNX), wrong, threads=1, max_batch=8)
    assert e.value.fatal
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(BackendError, match="openvino cannot load") as e:
        OpenVinoBackend(str(bad), info, threads=1, max_batch=8)
    assert e.value.fatal


def test_cache_dir(loaded, tmp_path):
    cache = tmp_path / "ov-cache"
    cache.mkdir()
    OpenVinoBackend(loaded.file(bundle_mod.ONNX), loaded.info, threads=1, max_batch=4, cache_dir=str(cache)).close()
    assert os.listdir(cache)   # OpenVINO wrote its compiled blobs there, and nowhere else was needed


def test_auto_prefers_the_cpu_backend_the_benchmark_chose(loaded):
    plan = backends.plan(backend="auto", device_ids=(0,), cpu_workers=1, threads=1, max_batch=4, cpus=2)
    assert plan.backend == backends.CPU_PREFERENCE[0] and plan.why.startswith("BACKEND=auto: using %s" % plan.backend)
    backend = backends.create(loaded, backend=plan.backend, threads=plan.threads, max_batch=plan.max_batch)
    assert backend.name == plan.backend
    backend.close()


def test_serves_over_http_with_onnx_runtimes_answers(bundle_dir):  # noqa: F811
    photo = real_photo()
    answers = {}
    for name in ("openvino", "onnxruntime"):
        with Server(bundle_dir, BACKEND=name) as s:
            r = classify(s.url, photo, top_k=3)
            assert r.status_code == 200, r.text
            answers[name] = [p["index"] for p in r.json()["results"][0]["predictions"]]
            serving = requests.get(s.url + "/v1/model", timeout=10).json()["serving"]
            assert serving["backend"].startswith(name)
    assert answers["openvino"] == answers["onnxruntime"]
