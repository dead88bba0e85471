"""Shared pieces of the service tests (a uniquely named module: model/tests has its own conftest).

The service runs as a real uvicorn server on a loopback port: in a subprocess (`python -m classifier`)
when the test needs signals or the environment, in a thread when it injects a backend."""
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
SIZE = 96


def make_bundle(path, variant="small", multiplier=0.5, num_classes=11, size=SIZE, seed=0, notice=None):
    """A real bundle from random weights (TensorFlow is available to tests, never to the service)."""
    from random_models import random_bundle
    return random_bundle(path, variant, multiplier, num_classes, size, seed, name="digits_test", notice=notice)


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("svc") / "bundle")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, timeout=60, server=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server is not None and server.proc.poll() is not None:
            raise AssertionError("server exited with %s: %s" % (server.proc.returncode, server.stderr()[-3000:]))
        try:
            if requests.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise AssertionError("server at %s not ready after %ss" % (url, timeout))


class Server:
    """`python -m classifier` (or `argv`) in a subprocess."""

    def __init__(self, bundle, argv=None, **env):
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        full = dict(os.environ, MODEL_DIR=str(bundle), HOST="127.0.0.1", PORT=str(self.port), BACKEND="onnxruntime",
                    LOG_LEVEL="info")
        full.update({k: str(v) for k, v in env.items()})
        self.proc = subprocess.Popen(argv or [sys.executable, "-m", "classifier"], env=full, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, universal_newlines=True)
        # drained as it comes: a full pipe would block the server's logging, and with it the server
        self._err = []
        self._drain = threading.Thread(target=lambda: self._err.extend(self.proc.stderr), daemon=True)
        self._drain.start()

    def stderr(self):
        """What the server wrote to stderr; all of it once the process has exited."""
        if self.proc.poll() is not None:
            self._drain.join(30)
        return "".join(self._err)

    def __enter__(self):
        wait_ready(self.url, server=self)
        return self

    def stop(self, sig=None):
        import signal
        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode, self.stderr()

    def __exit__(self, *exc):
        self.stop()


class ThreadServer:
    """The app in a uvicorn server on a thread, for tests that inject a backend."""

    def __init__(self, settings_overrides, backend_factory=None):
        import uvicorn
        from classifier import settings as settings_mod
        from classifier import transport
        from classifier.app import create_app
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        settings = settings_mod.load(environ={}, dotenv=None, HOST="127.0.0.1", PORT=self.port, **settings_overrides)
        self.app = create_app(settings, backend_factory)
        self.server = uvicorn.Server(transport.server_config(self.app, settings, log_level="warning")[0])
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        wait_ready(self.url)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


def jpeg_bytes(size=(120, 90), seed=0, quality=90, mode="RGB"):
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.convert(mode).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def real_photo():
    """A real photograph that ships with matplotlib (Grace Hopper), as JPEG bytes."""
    import matplotlib.cbook
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
        return f.read()


def classify(url, data, content_type="image/jpeg", **params):
    return requests.post(url + "/classify", data=data, headers={"Content-Type": content_type}, params=params, timeout=60)


def model_json(bundle):
    with open(os.path.join(bundle, "model.json")) as f:
        return json.load(f)


def variant_record(info, precision, engine, speed=None, **changes):
    """A PrecisionVariant as `mbv3 quantize` writes it for `info`'s current files (int8: the engine's
    files, precision.int8_files, listed in info.files; else model-int8.onnx, one QDQ file for both
    engines as earlier bundles have it). speed: (float32, reduced) images/s, or None. The figures are
    made up: the command that measures them is tested in model/tests."""
    from mbv3 import bundle as bundle_mod
    from mbv3 import precision as variants
    int8 = precision == "int8"
    names = variants.int8_files(engine) if int8 else (bundle_mod.ONNX,)
    if names[0] not in info.files:
        names = (variants.INT8_FILE,)
    weights = names[1] if len(names) > 1 else None
    fields = dict(precision=precision, engine=engine, engine_version="1.0", device="CPU", device_name="a CPU",
                  model_sha256=info.files[names[0]].sha256, data="/data",
                  split="validation", examples=500, float32=bundle_mod.Accuracy(0.91, 0.99),
                  reduced=bundle_mod.Accuracy(0.905, 0.99), top1_agreement=0.99, max_top1_drop=1.0, top1_drop=0.5,
                  forced=False, native=True, validated="2026-12-07T17:00:00Z",
                  file=names[0] if int8 else None, weights=weights,
                  weights_sha256=info.files[weights].sha256 if weights else None,
                  source_sha256=info.files[bundle_mod.ONNX].sha256 if int8 else None,
                  calibration=bundle_mod.Calibration("/data", "train", 32, "test") if int8 else None,
                  speed=bundle_mod.Speed(8, 2, speed[0], speed[1]) if speed else None)
    fields.update(changes)
    return bundle_mod.PrecisionVariant(**fields)
