"""The whole service on BACKEND=acl, through the pyACL simulator (tests/acl_sim), in a subprocess:
HTTP in, the .om (simulated: the bundle's ONNX model behind pyACL's rules) out, teardown checked
from outside the process by the simulator's exit report. Nothing here has run on a real 310."""
import concurrent.futures
import json
import os
import shutil
import signal
import sys

import numpy as np
import pytest
import requests

from mbv3 import fast_preprocess, numpy_preprocess
from mbv3.onnx_classifier import OnnxClassifier

from svc_support import SIZE, Server, bundle_dir, classify, jpeg_bytes, model_json, real_photo  # noqa: F401

SIM_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "acl_sim")


def _om_bundle(src, dst, **om):
    shutil.copytree(src, dst)
    sys.path.insert(0, SIM_DIR)
    try:
        import acl
        acl.sim_write_om(str(dst), **om)
    finally:
        sys.path.remove(SIM_DIR)
        sys.modules.pop("acl", None)
    return str(dst)


@pytest.mark.parametrize("om", [dict(batch_profiles=[1, 2, 4, 8]), dict(batch_profiles=[1, 4], aipp=True)],
                         ids=["dynamic-batch", "aipp-uint8"])
def test_service_on_the_acl_backend(bundle_dir, tmp_path, om):  # noqa: F811
    bundle = _om_bundle(bundle_dir, tmp_path / "bundle", **om)
    report = tmp_path / "acl-exit.json"
    path = os.pathsep.join([SIM_DIR] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env = dict(BACKEND="auto", MAX_BATCH=8, PYTHONPATH=path, ACL_SIM_EXIT_REPORT=str(report))
    server = Server(bundle, **env)
    with server:
        ready = requests.get(server.url + "/readyz").json()
        assert ready["backend"].startswith("acl")
        photo = real_photo()
        r = classify(server.url, photo, top_k=3)
        assert r.status_code == 200, r.text
        served = r.json()["results"][0]["predictions"]
        clf = OnnxClassifier(bundle)
        x = fast_preprocess.select("auto")[0](photo, clf.bundle.preprocessing)[None]   # the service's transform
        expected = clf.classify(x, 3)[0]
        assert [p["index"] for p in served] == [i for i, _, _ in expected]
        # AIPP: the service sends rounded uint8 pixels and the device normalises them, so scores move slightly
        np.testing.assert_allclose([p["score"] for p in served], [s for _, _, s in expected],
                                   rtol=1e-4, atol=0.01 if om.get("aipp") else 1e-6)
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda i: classify(server.url, jpeg_bytes(seed=i)).status_code, range(48)))
        assert codes == [200] * 48
        metrics = requests.get(server.url + "/metrics").text
        assert float(metrics.split("classifier_batch_size_sum ")[1].split()[0]) > float(
            metrics.split("classifier_batch_size_count ")[1].split()[0])   # the profiles were used for batches
        code, err = server.stop(signal.SIGTERM)
    assert code == 0, err[-2000:]
    exit_report = json.loads(report.read_text())
    assert exit_report["finalized"] and exit_report["leaks"] == [] and exit_report["errors"] == [], exit_report
    assert exit_report["executes"] >= 10
    by_thread = exit_report["calls_by_thread"]
    device = [t for t in by_thread if t.startswith("device0")]
    assert len(device) == 1 and "acl.mdl.execute" in by_thread[device[0]]    # one thread owns the device
    # elsewhere: start-up's plan (BACKEND=auto probes the device: init, count, set then reset, no context
    # and no model) and the process's exit
    probing = {"acl.init", "acl.rt.get_device_count", "acl.rt.set_device", "acl.rt.reset_device", "acl.finalize"}
    assert all(set(calls) <= probing for t, calls in by_thread.items() if t != device[0]), by_thread


def test_mbv3_om_then_serve_the_om_on_acl(bundle_dir, tmp_path):  # noqa: F811
    """`mbv3 om` (ATC replaced by tests/fake_atc.py) records the build in model.json; the service's
    ACL backend then serves the .om by that record: batch profiles and AIPP uint8 input."""
    import subprocess
    bundle = str(tmp_path / "bundle")
    shutil.copytree(bundle_dir, bundle)
    wrapper = tmp_path / "atc"
    wrapper.write_text("#!/bin/sh\nexec %s %s \"$@\"\n" % (sys.executable, os.path.join(os.path.dirname(SIM_DIR), "fake_atc.py")))
    wrapper.chmod(0o755)
    result = subprocess.run([sys.executable, "-c", "import sys; from mbv3.cli import main; sys.exit(main())", "om",
                             "--bundle", bundle, "--atc", str(wrapper), "--batch-profiles", "1", "2", "4", "--aipp"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert model_json(bundle)["om"] == {"file": "model.om", "batch_profiles": [1, 2, 4], "aipp": True,
                                        "soc_version": "Ascend310", "input_dtype": "uint8"}
    path = os.pathsep.join([SIM_DIR] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    with Server(bundle, BACKEND="acl", PYTHONPATH=path) as server:
        assert "acl" in requests.get(server.url + "/readyz").json()["backend"]
        photo = real_photo()
        served = classify(server.url, photo, top_k=1).json()["results"][0]["predictions"][0]
        meta = model_json(bundle)
        x = numpy_preprocess.eval_transform(numpy_preprocess.decode(photo), SIZE, meta["preprocessing"])[None]
        assert served["index"] == OnnxClassifier(bundle).classify(x, 1)[0][0][0]
