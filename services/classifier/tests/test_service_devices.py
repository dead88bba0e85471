"""Several devices in one service: four simulated Ascend devices (tests/acl_sim) serving at once, a
device lost mid-run recovering alone, the teardown of all four; and the same worker pool with two
ONNX Runtime workers. Nothing here has run on a real 310."""
import concurrent.futures
import json
import os
import re
import shutil
import signal
import sys
import threading
import time

import pytest
import requests

from classifier.backends import acl_runtime

from svc_support import Server, ThreadServer, bundle_dir, classify, jpeg_bytes  # noqa: F401

SIM_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "acl_sim")


def device_counts(metrics_text, name="classifier_device_batches_total"):
    return {m.group(1): float(m.group(2)) for m in re.finditer(r'%s\{device="([^"]+)"\} (\S+)' % name, metrics_text)}


def hammer(url, requests_, clients=16):
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(lambda i: classify(url, jpeg_bytes(size=(64, 48), seed=i)), range(requests_)))


@pytest.fixture(scope="module")
def om_bundle(bundle_dir, tmp_path_factory):  # noqa: F811
    dst = tmp_path_factory.mktemp("devices") / "bundle"
    shutil.copytree(bundle_dir, dst)
    sys.path.insert(0, SIM_DIR)
    try:
        import acl
        acl.sim_write_om(str(dst), batch_profiles=[1, 2, 4, 8])
    finally:
        sys.path.remove(SIM_DIR)
        sys.modules.pop("acl", None)
    return str(dst)


def test_four_devices_serve_at_once_and_tear_down_cleanly(om_bundle, tmp_path):
    """DEVICE_IDS=all in a process that sees four devices: four workers, batches on every device,
    each device's pyACL calls on its own thread, and a teardown that leaves nothing behind."""
    report = tmp_path / "acl-exit.json"
    path = os.pathsep.join([SIM_DIR] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    server = Server(om_bundle, BACKEND="acl", DEVICE_IDS="all", MAX_BATCH=4, PYTHONPATH=path, ACL_SIM_DEVICES=4,
                    ACL_SIM_DEVICE_MS=40, ACL_SIM_EXIT_REPORT=str(report))
    with server:
        ready = requests.get(server.url + "/readyz").json()
        assert ready["status"] == "ready" and ready["devices"] == {str(d): "ready" for d in range(4)}
        responses = hammer(server.url, 96, clients=32)
        assert [r.status_code for r in responses] == [200] * 96
        counts = device_counts(requests.get(server.url + "/metrics").text)
        assert sorted(counts) == ["0", "1", "2", "3"] and min(counts.values()) >= 2, counts   # spread over all four
        devices = requests.get(server.url + "/v1/model").json()["serving"]["devices"]
        assert [(d["device"], d["state"]) for d in devices] == [(str(i), "ready") for i in range(4)]
        assert sum(d["images"] for d in devices) >= 96 and all(d["backend"].startswith("acl device %s," % d["device"])
                                                               for d in devices)
        code, err = server.stop(signal.SIGTERM)
    assert code == 0, err[-2000:]
    exit_report = json.loads(report.read_text())
    assert exit_report["finalized"] and exit_report["leaks"] == [] and exit_report["errors"] == [], exit_report
    by_thread = exit_report["devices_by_thread"]
    workers = sorted(t for t in by_thread if t.startswith("device"))
    assert [by_thread[t] for t in workers] == [[0], [1], [2], [3]], by_thread   # each device on its own thread
    assert all(by_thread[t] == [] for t in by_thread if t not in workers), by_thread   # no device call elsewhere
    calls = exit_report["calls_by_thread"]
    assert all("acl.mdl.execute" in calls[t] for t in workers)
    assert sorted(set().union(*[calls[t] for t in calls if t not in workers])) == [
        "acl.finalize", "acl.init", "acl.rt.get_device_count"]   # counting the devices, and the end


@pytest.fixture
def sim():
    """The simulator as `acl` in this process, with four devices, and a process runtime owner that
    has never called acl.init (the module's own is put back afterwards)."""
    saved = sys.modules.pop("acl", None)
    sys.path.insert(0, SIM_DIR)
    original = acl_runtime.RUNTIME
    acl_runtime.RUNTIME = acl_runtime.AclRuntime()
    try:
        import acl
        acl.sim_reset(devices=4, device_ms=20)
        yield acl
    finally:
        acl_runtime.RUNTIME = original
        sys.path.remove(SIM_DIR)
        sys.modules.pop("acl", None)
        if saved is not None:
            sys.modules["acl"] = saved


def test_a_lost_device_fails_its_batch_and_recovers_while_the_others_serve(om_bundle, sim):
    settings = {"MODEL_DIR": om_bundle, "BACKEND": "acl", "DEVICE_IDS": "0,1,2,3", "MAX_BATCH": 4}
    server = ThreadServer(settings)
    results, stop = [], threading.Event()

    def client(i):
        while not stop.is_set():
            r = classify(server.url, jpeg_bytes(size=(64, 48), seed=i))
            results.append((time.time(), r.status_code, r.json().get("error", {}).get("code")))

    with server:
        clients = [threading.Thread(target=client, args=(i,)) for i in range(12)]
        for t in clients:
            t.start()
        time.sleep(1.0)
        sim.sim_lose_device(2)
        lost = time.time()
        deadline = time.time() + 30
        while requests.get(server.url + "/readyz").json()["devices"]["2"] == "ready" and time.time() < deadline:
            time.sleep(0.05)
        ready = requests.get(server.url + "/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded"   # three of four still serve
        assert ready.json()["devices"]["2"] in ("reloading", "failed")
        time.sleep(1.5)   # reload attempts fail while the device is gone; the others keep answering
        before = device_counts(requests.get(server.url + "/metrics").text)
        sim.sim_restore_device(2)
        deadline = time.time() + 30
        while requests.get(server.url + "/readyz").json()["status"] != "ready" and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        stop.set()
        for t in clients:
            t.join(30)
        metrics = requests.get(server.url + "/metrics").text
        devices = {d["device"]: d for d in requests.get(server.url + "/v1/model").json()["serving"]["devices"]}
    failed = [(t, status, code) for t, status, code in results if status != 200]
    assert failed and len(failed) <= 4, failed   # the batch that was on device 2: at most MAX_BATCH images
    assert {(status, code) for _, status, code in failed} == {(503, "backend_error")}
    assert all(t > lost for t, _, _ in failed)
    assert len([1 for t, status, _ in results if status == 200 and t > lost]) > 20   # served meanwhile
    after = device_counts(metrics)
    assert after["2"] > before["2"], (before, after)   # device 2 serves again after its reload
    assert 'classifier_device_failures_total{device="2",fatal="true"} 1.0' in metrics
    assert not re.search(r'classifier_device_failures_total\{device="[013]"', metrics)
    assert devices["2"]["reloads"] == 1 and devices["2"]["state"] == "ready" and devices["2"]["failures"] == 1
    # the server stopped: every device released in pyACL's order, pyACL finalized once, nothing left
    state = sim.sim_state()
    assert state["finalized"] and sim.sim_leaks() == [], sim.sim_leaks()
    assert len(sim.sim_calls_named("acl.finalize")) == 1
    lost_thread = {c.thread for c in sim.sim_calls if c.name == "acl.rt.set_device" and c.args == (2,)}
    assert len(lost_thread) == 1 and {e.thread for e in sim.sim_errors} == lost_thread   # errors only on device 2's
    by_thread = sim.sim_devices_by_thread()
    assert sorted(d for t, d in by_thread.items() if d) == [[0], [1], [2], [3]], by_thread


def test_cpu_workers_share_the_load(bundle_dir):  # noqa: F811
    """The same pool on ONNX Runtime: CPU_WORKERS=2 is two sessions on two threads, cpu0 and cpu1."""
    with ThreadServer({"MODEL_DIR": bundle_dir, "BACKEND": "onnxruntime", "CPU_WORKERS": 2, "THREADS": 1}) as s:
        assert [r.status_code for r in hammer(s.url, 48)] == [200] * 48
        serving = requests.get(s.url + "/v1/model").json()["serving"]
        devices = serving["devices"]
        assert [d["device"] for d in devices] == ["cpu0", "cpu1"] and all(d["batches"] > 0 for d in devices), devices
        assert serving["threads"] == 1
        assert requests.get(s.url + "/readyz").json()["devices"] == {"cpu0": "ready", "cpu1": "ready"}


@pytest.mark.parametrize("backend,status,message", [
    ("acl", 1, "model failed to load: device 5: acl.rt.set_device(5) returned 107001 (ACL_ERROR_RT_INVALID_DEVICEID)"),
    ("auto", 2, "classifier: error: BACKEND=auto: some devices answer and some do not (device 5: no Ascend device 5"),
])
def test_a_device_that_cannot_load_stops_startup_naming_it(om_bundle, backend, status, message):
    """Ready means every configured device loaded: one that cannot (no device 5 among four) stops the
    service, rather than serving on part of its devices unnoticed; under BACKEND=auto, whose plan
    probes every device before any loads, a mix of answering and silent devices is refused too."""
    path = os.pathsep.join([SIM_DIR] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    server = Server(om_bundle, BACKEND=backend, DEVICE_IDS="0,5", PYTHONPATH=path, ACL_SIM_DEVICES=4)
    try:
        code = server.proc.wait(120)
    finally:
        server.stop()
    err = server.stderr()
    assert code == status and message in err, err[-3000:]
