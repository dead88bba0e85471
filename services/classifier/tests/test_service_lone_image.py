"""Where a lone image runs: never on the event loop (a decode there would stall every connection),
on its device's thread in one hop when the engine is idle, and through the batcher when requests
arrive together. A real server (uvicorn on a thread) with an ONNX Runtime backend that records the
thread and batch size of every run."""
import concurrent.futures
import threading
import time

import pytest

from classifier.backends.onnxruntime import OnnxRuntimeBackend
from mbv3 import bundle as bundle_mod

from svc_support import ThreadServer, bundle_dir, classify, jpeg_bytes  # noqa: F401


class Recording(OnnxRuntimeBackend):
    """ONNX Runtime that records (thread name, images) of every run after warm-up, each run `delay` s longer."""
    runs = []
    delay = 0.0

    def run(self, batch):
        type(self).runs.append((threading.current_thread().name, len(batch)))
        time.sleep(self.delay)
        return super().run(batch)


@pytest.fixture
def recording():
    Recording.delay = 0.0
    yield Recording


def factory(bundle, *, threads, max_batch, **choices):
    return Recording(bundle.file(bundle_mod.ONNX), bundle.info, threads, max_batch)


def serve(bundle, **settings):
    return ThreadServer(dict({"MODEL_DIR": bundle}, **settings), factory)


def lone_runs(server, recording, n=3):
    """The threads the next n lone requests ran on."""
    recording.runs = []
    for i in range(n):
        r = classify(server.url, jpeg_bytes(seed=i))
        assert r.status_code == 200, r.text
    assert [images for _, images in recording.runs] == [1] * n
    return {name for name, _ in recording.runs}


def test_a_lone_image_runs_in_one_hop_on_the_device_thread(bundle_dir, recording):  # noqa: F811
    with serve(bundle_dir) as s:
        threads = lone_runs(s, recording)
        assert len(threads) == 1 and next(iter(threads)).startswith("cpu0"), threads
        assert s.thread.name not in threads


def test_one_hop_max_pixels_0_decodes_on_the_pool(bundle_dir, recording):  # noqa: F811
    with serve(bundle_dir, ONE_HOP_MAX_PIXELS=0) as s:
        threads = lone_runs(s, recording)
        assert len(threads) == 1 and next(iter(threads)).startswith("cpu0")


def test_liveness_answers_while_a_lone_image_is_being_run(bundle_dir, recording):  # noqa: F811
    """A lone image whose run takes 1.5 s: /healthz, asked meanwhile, answers in well under that."""
    import requests
    recording.delay = 1.5
    with serve(bundle_dir) as s:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            slow = pool.submit(classify, s.url, jpeg_bytes())
            time.sleep(0.3)
            start = time.perf_counter()
            assert requests.get(s.url + "/healthz", timeout=5).status_code == 200
            took = time.perf_counter() - start
            assert not slow.done(), "the lone request ended before the probe: the test proves nothing"
            assert slow.result().status_code == 200
        assert took < 0.5, took


def test_a_burst_is_batched(bundle_dir, recording):  # noqa: F811
    """8 clients at once, 4 requests each, runs made slow enough that requests overlap: the batcher
    forms batches, on the device's thread."""
    recording.delay = 0.05
    with serve(bundle_dir, MAX_BATCH=8, MAX_DELAY_MS=20) as s:
        recording.runs = []

        def client(i):
            return [classify(s.url, jpeg_bytes(seed=10 * i + j)).status_code for j in range(4)]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = [c for codes in pool.map(client, range(8)) for c in codes]
        assert statuses == [200] * 32
        sizes = [images for _, images in recording.runs]
        assert sum(sizes) == 32
        assert max(sizes) > 1 and len(sizes) <= 16, sizes
        assert all(name.startswith("cpu0") for name, _ in recording.runs), recording.runs
