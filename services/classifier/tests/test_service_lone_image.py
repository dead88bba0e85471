"""Where a lone image runs: never on the event loop (a decode there would stall every connection),
on its device's thread in one hop when the engine is idle, and through the batcher when requests
arrive together. A real server (uvicorn on a thread) with an ONNX Runtime backend that records the
thread and batch size of every run."""
import concurrent.futures
import threading
import time

import pytest
import requests

from classifier.backends.onnxruntime import OnnxRuntimeBackend
from mbv3 import bundle as bundle_mod

from svc_support import ThreadServer, bundle_dir, classify, jpeg_bytes  # noqa: F401


class Recording(OnnxRuntimeBackend):
    """ONNX Runtime that records (thread name, images) of every run, and the lone-image runs
    (run_alone) apart, each run `delay` s longer."""
    runs = []
    alone = []
    delay = 0.0

    def run(self, batch):
        type(self).runs.append((threading.current_thread().name, len(batch)))
        time.sleep(self.delay)
        return super().run(batch)

    def run_alone(self, batch):
        type(self).alone.append(threading.current_thread().name)
        return self.run(batch)


@pytest.fixture
def recording():
    Recording.delay = 0.0
    yield Recording


def factory(bundle, *, threads, max_batch, alone_threads=0, **choices):
    return Recording(bundle.file(bundle_mod.ONNX), bundle.info, threads, max_batch, alone_threads=alone_threads)


def serve(bundle, **settings):
    """One CPU worker unless told: where a lone image runs is then one thread to name."""
    return ThreadServer(dict({"MODEL_DIR": bundle, "CPU_WORKERS": 1}, **settings), factory)


def lone_runs(server, recording, n=3):
    """The threads the next n lone requests ran on."""
    recording.runs, recording.alone = [], []
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


def test_a_lone_image_runs_alone_on_every_cpu_and_batches_on_the_workers_share(bundle_dir, recording):  # noqa: F811
    """Two workers of one thread (CPU_WORKERS=2 THREADS=0 on a machine with two or more CPUs): each
    lone request runs through run_alone, on a session with every CPU's thread, on the worker that ran
    last (its threads still awake); a burst's batches run through run(), on the workers' threads."""
    from classifier.settings import available_cpus
    with serve(bundle_dir, CPU_WORKERS=2) as s:
        threads = lone_runs(s, recording, n=4)
        assert len(recording.alone) == 4 and len(threads) == 1, recording.alone
        devices = requests.get(s.url + "/v1/model").json()["serving"]["devices"]
        cpus = max(1, available_cpus())
        assert all("%s intra-op threads, a lone image %s" % (max(1, cpus // 2), cpus) in d["backend"]
                   for d in devices), devices
        recording.delay, recording.runs, recording.alone = 0.05, [], []
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert list(pool.map(lambda i: classify(s.url, jpeg_bytes(seed=i)).status_code, range(16))) == [200] * 16
        assert sum(images for _, images in recording.runs) == 16   # a lone run is recorded there too
        assert len(recording.alone) < 8, recording.alone   # only requests that found both workers idle


def test_one_hop_max_pixels_0_decodes_on_the_pool(bundle_dir, recording):  # noqa: F811
    with serve(bundle_dir, ONE_HOP_MAX_PIXELS=0) as s:
        threads = lone_runs(s, recording)
        assert len(threads) == 1 and next(iter(threads)).startswith("cpu0")


def test_liveness_answers_while_a_lone_image_is_being_run(bundle_dir, recording):  # noqa: F811
    """A lone image whose run takes 1.5 s: /healthz, asked meanwhile, answers in well under that."""
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
