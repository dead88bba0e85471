"""Where a lone image runs: on the event loop when nothing else is in the server and the backend may
run on any thread (no thread hop), on its device's thread when the backend is bound to it (pyACL),
and through the batcher when requests arrive together. A real server (uvicorn on a thread) with an
ONNX Runtime backend that records the thread and batch size of every run."""
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
    Recording.thread_bound, Recording.delay = OnnxRuntimeBackend.thread_bound, 0.0
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


def test_a_lone_image_runs_on_the_event_loop(bundle_dir, recording):  # noqa: F811
    with serve(bundle_dir) as s:
        assert lone_runs(s, recording) == {s.thread.name}   # uvicorn's loop runs on the server's thread


def test_on_loop_max_pixels_0_keeps_it_on_the_device_thread(bundle_dir, recording):  # noqa: F811
    with serve(bundle_dir, ON_LOOP_MAX_PIXELS=0) as s:
        threads = lone_runs(s, recording)
        assert len(threads) == 1 and next(iter(threads)).startswith("cpu0")


def test_an_image_over_on_loop_max_pixels_is_not_run_on_the_loop(bundle_dir, recording):  # noqa: F811
    with serve(bundle_dir, ON_LOOP_MAX_PIXELS=120 * 90 - 1) as s:   # jpeg_bytes() is 120x90
        threads = lone_runs(s, recording)
        assert len(threads) == 1 and next(iter(threads)).startswith("cpu0")


def test_a_thread_bound_backend_never_runs_on_the_loop(bundle_dir, recording):  # noqa: F811
    recording.thread_bound = True
    with serve(bundle_dir) as s:
        threads = lone_runs(s, recording)
        assert len(threads) == 1 and next(iter(threads)).startswith("cpu0")


def test_a_burst_is_batched_not_run_one_at_a_time_on_the_loop(bundle_dir, recording):  # noqa: F811
    """8 clients at once, 4 requests each, runs made slow enough that requests overlap: the batcher
    forms batches. Had each request that found the engine idle run on the loop, every run would hold
    one image and run on the loop's thread."""
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
        on_loop = [name for name, _ in recording.runs if name == s.thread.name]
        assert len(on_loop) <= 2, recording.runs
