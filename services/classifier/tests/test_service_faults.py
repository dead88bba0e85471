"""Faults and lifecycle: backend failures, a full queue, readiness during a slow load, SIGTERM drain,
bad settings. Backends are injected into a real server (uvicorn on a thread) where needed."""
import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests

from classifier.backends.base import BackendError
from classifier.backends.onnxruntime import OnnxRuntimeBackend
from mbv3 import bundle as bundle_mod

from svc_support import Server, ThreadServer, bundle_dir, classify, jpeg_bytes  # noqa: F401


class Flaky(OnnxRuntimeBackend):
    """ONNX Runtime with scripted failures: `plan` maps run number -> "fail" | "fatal" | seconds to sleep."""
    plan = {}
    runs = 0
    created = 0
    threads = set()

    def __init__(self, *args):
        type(self).created += 1
        type(self).threads.add(threading.current_thread().name)
        delay = self.plan.get("load")
        if delay:
            time.sleep(delay)
        super().__init__(*args)

    def run(self, batch):
        type(self).runs += 1
        type(self).threads.add(threading.current_thread().name)
        action = self.plan.get(type(self).runs)
        if action == "fail":
            raise BackendError("injected failure")
        if action == "fatal":
            raise BackendError("injected device loss", fatal=True)
        if isinstance(action, (int, float)):
            time.sleep(action)
        if self.plan.get("every"):
            time.sleep(self.plan["every"])
        return super().run(batch)

    def run_alone(self, batch):   # a lone image's run follows the same script
        return self.run(batch)


@pytest.fixture
def flaky():
    Flaky.plan, Flaky.runs, Flaky.created, Flaky.threads = {}, 0, 0, set()
    yield Flaky


def factory(bundle, *, threads, max_batch, **choices):
    """backends.create's signature; always the scripted ONNX Runtime backend."""
    return Flaky(bundle.file(bundle_mod.ONNX), bundle.info, threads, max_batch)


def test_failed_batch_answers_503_then_recovers(bundle_dir, flaky):  # noqa: F811
    with ThreadServer({"MODEL_DIR": bundle_dir, "CPU_WORKERS": 1}, factory) as s:
        flaky.plan = {flaky.runs + 1: "fail"}
        r = classify(s.url, jpeg_bytes())
        assert r.status_code == 503 and r.json()["error"]["code"] == "backend_error"
        assert r.headers["Retry-After"]
        assert classify(s.url, jpeg_bytes()).status_code == 200
        assert flaky.created == 1


def test_failure_of_a_micro_batch_answers_503_for_its_images(bundle_dir, flaky):  # noqa: F811
    with ThreadServer({"MODEL_DIR": bundle_dir, "MAX_BATCH": 8, "MAX_DELAY_MS": 50, "CPU_WORKERS": 1}, factory) as s:
        # the first run is slow, so the other requests queue up and the second run is a batch: fail it
        flaky.plan = {flaky.runs + 1: 0.5, flaky.runs + 2: "fail"}
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda i: classify(s.url, jpeg_bytes(seed=i)), range(6)))
        failed = [r for r in responses if r.status_code == 503]
        # how many images share the failed run depends on arrival timing; each of them gets the 503
        assert failed and all(r.json()["error"]["code"] == "backend_error" for r in failed)
        assert {r.status_code for r in responses} == {200, 503}
        assert 'classifier_backend_errors_total{fatal="false"} 1.0' in requests.get(s.url + "/metrics").text
        assert classify(s.url, jpeg_bytes()).status_code == 200


def test_fatal_failure_reloads_the_backend_on_its_thread(bundle_dir, flaky):  # noqa: F811
    # every backend is bound to the thread that loaded it, as pyACL is: it loads, runs and reloads there
    with ThreadServer({"MODEL_DIR": bundle_dir, "CPU_WORKERS": 1}, factory) as s:
        flaky.plan = {flaky.runs + 1: "fatal"}
        assert classify(s.url, jpeg_bytes()).status_code == 503
        assert classify(s.url, jpeg_bytes()).status_code == 200
        assert flaky.created == 2
        assert len(flaky.threads) == 1 and next(iter(flaky.threads)).startswith("cpu0")  # one owner thread
        metrics = requests.get(s.url + "/metrics").text
        assert 'classifier_backend_errors_total{fatal="true"} 1.0' in metrics


def test_full_queue_answers_503_with_retry_after(bundle_dir, flaky):  # noqa: F811
    with ThreadServer({"MODEL_DIR": bundle_dir, "MAX_QUEUE": 2, "MAX_BATCH": 1, "CPU_WORKERS": 1}, factory) as s:
        flaky.plan = {"every": 0.3}
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(lambda i: classify(s.url, jpeg_bytes(seed=i)), range(12)))
        codes = [r.status_code for r in responses]
        assert 200 in codes and 503 in codes and set(codes) <= {200, 503}
        full = [r for r in responses if r.status_code == 503]
        assert all(r.json()["error"]["code"] == "queue_full" and r.headers["Retry-After"] for r in full)
        flaky.plan = {}
        assert classify(s.url, jpeg_bytes()).status_code == 200


def test_not_ready_until_loaded_and_warmed(bundle_dir, flaky):  # noqa: F811
    import uvicorn
    from classifier import settings as settings_mod
    from classifier.app import create_app
    from svc_support import free_port
    flaky.plan = {"load": 2.0}
    port = free_port()
    app = create_app(settings_mod.load(environ={}, dotenv=None, MODEL_DIR=bundle_dir, PORT=port), factory)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = "http://127.0.0.1:%d" % port
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                live = requests.get(url + "/healthz", timeout=1)
                break
            except requests.RequestException:
                time.sleep(0.05)
        assert live.status_code == 200
        ready = requests.get(url + "/readyz")
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "not_ready" and ready.headers["Retry-After"]
        assert classify(url, jpeg_bytes()).status_code == 503
        assert requests.get(url + "/v2/health/ready").status_code == 503
        deadline = time.time() + 30
        while requests.get(url + "/readyz").status_code != 200 and time.time() < deadline:
            time.sleep(0.1)
        assert classify(url, jpeg_bytes()).status_code == 200
    finally:
        server.should_exit = True
        thread.join(30)


def test_image_over_the_pixel_limit(bundle_dir):  # noqa: F811
    with ThreadServer({"MODEL_DIR": bundle_dir, "MAX_IMAGE_PIXELS": 5000}) as s:
        r = classify(s.url, jpeg_bytes(size=(100, 80)))
        assert r.status_code == 413 and r.json()["error"]["code"] == "image_too_large"
        assert "100x80" in r.json()["error"]["message"]


def test_sigterm_drains_in_flight_requests(bundle_dir):  # noqa: F811
    server = Server(bundle_dir, MAX_BATCH=4, PREPROCESS_WORKERS=1)
    with server:
        image = jpeg_bytes(size=(1600, 1200))   # slow enough to decode that requests are in flight
        results = []

        finished = []

        def send(i):
            try:
                results.append(classify(server.url, image).status_code)
                finished.append(time.time())
            except requests.ConnectionError:
                results.append("refused")
        threads = [threading.Thread(target=send, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        deadline = time.time() + 30
        while not finished and time.time() < deadline:   # the first answered, the others in flight
            time.sleep(0.005)
        server.proc.send_signal(signal.SIGTERM)
        signalled = time.time()
        for t in threads:
            t.join(60)
        code = server.proc.wait(60)
        err = server.stderr()
    answered = [r for r in results if r != "refused"]
    assert code == 0, err[-2000:]
    assert answered and set(answered) == {200}, results     # nothing accepted was dropped or failed
    assert any(t > signalled for t in finished)              # and some of them finished after SIGTERM
    assert "Waiting for application shutdown" in err and "Application shutdown complete" in err
    assert time.time() - signalled < 60


@pytest.mark.parametrize("env,message", [
    ({"BACKEND": "gpu"}, "BACKEND='gpu': choose one of auto, onnxruntime, openvino, acl"),
    ({"MAX_BATCH": "lots"}, "MAX_BATCH='lots' is not a valid int"),
    ({"MAX_IMAGES_PER_REQUEST": "300"},
     "MAX_IMAGES_PER_REQUEST (300) must not exceed MAX_QUEUE (256): such a request could never be queued"),
    ({"PREPROCESS_MEMORY_MB": "0"}, "PREPROCESS_MEMORY_MB must be at least 1, got 0"),
    ({"BODY_GRACE_SECONDS": "-1"}, "MAX_DELAY_MS, MAX_WAIT_SECONDS, PREPROCESS_WORKERS, ONE_HOP_MAX_PIXELS and "
                                   "BODY_GRACE_SECONDS must not be negative"),
    ({"HTTP_PARSER": "fast"}, "HTTP_PARSER='fast': choose one of auto, httptools, h11"),
    ({"MODEL_DIR": "/nonexistent/bundle"},
     "MODEL_DIR=/nonexistent/bundle: no model bundle at /nonexistent/bundle (not a directory)"),
])
def test_bad_settings_stop_startup_with_one_line(bundle_dir, env, message):  # noqa: F811
    full = dict(os.environ, MODEL_DIR=bundle_dir, PORT="1")
    full.update(env)
    result = subprocess.run([sys.executable, "-m", "classifier"], env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert result.returncode == 2
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0] == "classifier: error: " + message, result.stderr
