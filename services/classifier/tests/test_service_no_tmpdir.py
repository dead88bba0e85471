"""The service needs no writable temporary directory, so it can run on a read-only root file system
(compose runs it `read_only`; docker/tests/test_containers.py checks the container itself).

Python falls back from TMPDIR to /tmp, /var/tmp and the working directory, all writable here, so the
server is started with tempfile's directory pinned to a missing folder: the state a read-only root
leaves it in, where any temporary file fails with "No usable temporary directory"."""
import io
import os
import subprocess
import sys

import numpy as np
import requests
from PIL import Image

from svc_support import bundle_dir, free_port, wait_ready  # noqa: F401

SERVE_WITHOUT_TMPDIR = """\
import runpy, sys, tempfile
tempfile.tempdir = sys.argv[1]
try:
    tempfile.TemporaryFile()
except OSError:
    pass
else:
    sys.exit("a temporary file could still be made in " + sys.argv[1])
runpy.run_module("classifier", run_name="__main__")
"""


def bmp_bytes(side=1024, seed=0):
    """A 3 MB BMP (24-bit, uncompressed): over starlette's 1 MB spool threshold, under MAX_BODY_BYTES."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "BMP")
    return buf.getvalue()


def test_a_3mb_multipart_part_is_answered_without_a_temporary_directory(bundle_dir, tmp_path):  # noqa: F811
    missing = str(tmp_path / "no-such-dir")
    port = free_port()
    env = dict(os.environ, MODEL_DIR=str(bundle_dir), HOST="127.0.0.1", PORT=str(port), BACKEND="onnxruntime",
               TMPDIR=missing, LOG_LEVEL="warning")
    proc = subprocess.Popen([sys.executable, "-c", SERVE_WITHOUT_TMPDIR, missing], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    url = "http://127.0.0.1:%d" % port
    try:
        wait_ready(url, proc=proc)
        data = bmp_bytes()
        assert len(data) > 3 * 1024 * 1024
        r = requests.post(url + "/classify", files=[("images", ("big.bmp", data, "image/bmp"))], timeout=60)
        assert r.status_code == 200, r.text
        (part,) = r.json()["results"]
        raw = requests.post(url + "/classify", data=data, headers={"Content-Type": "image/bmp"}, timeout=60)
        assert raw.status_code == 200, raw.text
        assert part["predictions"] == raw.json()["results"][0]["predictions"]   # the whole part arrived
        assert not os.path.exists(missing)
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
