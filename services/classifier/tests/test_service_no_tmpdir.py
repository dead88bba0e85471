"""The service needs no writable temporary directory, so it can run on a read-only root file system
(compose runs it `read_only`; docker/tests/test_containers.py checks the container itself).

Python falls back from TMPDIR to /tmp, /var/tmp and the working directory, all writable here, so the
server is started with tempfile's directory pinned to a missing folder: the state a read-only root
leaves it in, where any temporary file fails with "No usable temporary directory"."""
import io
import os
import sys

import numpy as np
import requests
from PIL import Image

from svc_support import Server, bundle_dir  # noqa: F401

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
    with Server(bundle_dir, argv=[sys.executable, "-c", SERVE_WITHOUT_TMPDIR, missing], TMPDIR=missing,
                LOG_LEVEL="warning") as server:
        data = bmp_bytes()
        assert len(data) > 3 * 1024 * 1024
        r = requests.post(server.url + "/classify", files=[("images", ("big.bmp", data, "image/bmp"))], timeout=60)
        assert r.status_code == 200, r.text
        (part,) = r.json()["results"]
        raw = requests.post(server.url + "/classify", data=data, headers={"Content-Type": "image/bmp"}, timeout=60)
        assert raw.status_code == 200, raw.text
        assert part["predictions"] == raw.json()["results"][0]["predictions"]   # the whole part arrived
        assert not os.path.exists(missing)
