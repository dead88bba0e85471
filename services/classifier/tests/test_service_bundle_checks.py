"""A tampered or malformed bundle is refused before the service is ready: one line on stderr naming
the file and the problem, a non-zero exit. `mbv3 verify` runs the same checks by hand."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from mbv3 import bundle as bundle_mod

from svc_support import Server, bundle_dir  # noqa: F401  (fixture)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def _edit_json(bundle, change):
    path = os.path.join(bundle, "model.json")
    with open(path) as f:
        data = json.load(f)
    data = change(data)
    with open(path, "w") as f:
        json.dump(data, f)


def _rehash(bundle, name):
    def change(data):
        data["files"][name] = {"sha256": bundle_mod.sha256(os.path.join(bundle, name)),
                               "bytes": os.path.getsize(os.path.join(bundle, name))}
        return data
    _edit_json(bundle, change)


def reversed_labels(path):
    with open(os.path.join(path, "labels.txt")) as f:
        labels = f.read().splitlines()
    with open(os.path.join(path, "labels.txt"), "w") as f:
        f.write("\n".join(reversed(labels)) + "\n")
    return "labels.txt does not match the sha256"


def changed_onnx_bytes(path):
    with open(os.path.join(path, "model.onnx"), "r+b") as f:
        f.seek(os.path.getsize(os.path.join(path, "model.onnx")) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    return "model.onnx does not match the sha256"


def fewer_classes_consistently(path):
    """num_classes 10, ten labels (their sha256 updated): only the ONNX model itself can tell."""
    with open(os.path.join(path, "labels.txt"), "w") as f:
        f.write("".join("l%d\n" % i for i in range(10)))
    _rehash(path, "labels.txt")

    def change(data):
        data["output"]["num_classes"] = 10
        data["output"]["shape"] = [-1, 10]
        return data
    _edit_json(path, change)
    return "outputs 11 classes, but model.json says num_classes 10"


def json_list(path):
    _edit_json(path, lambda data: [])
    return "expected a JSON object, got list"


def missing_output(path):
    _edit_json(path, lambda data: {k: v for k, v in data.items() if k != "output"})
    return "model.json.output is missing"


def missing_preprocessing(path):
    _edit_json(path, lambda data: {k: v for k, v in data.items() if k != "preprocessing"})
    return "model.json.preprocessing is missing"


def string_size(path):
    def change(data):
        data["preprocessing"]["size"] = ["96", 96]
        return data
    _edit_json(path, change)
    return "model.json.preprocessing.size[0] must be an integer"


def missing_file(path):
    os.remove(os.path.join(path, "model.onnx"))
    return "model.onnx is missing"


TAMPERINGS = [reversed_labels, changed_onnx_bytes, fewer_classes_consistently, json_list, missing_output,
              missing_preprocessing, string_size, missing_file]


@pytest.mark.parametrize("tamper", TAMPERINGS, ids=[t.__name__ for t in TAMPERINGS])
def test_a_tampered_bundle_is_never_served(bundle_dir, tmp_path, tamper):  # noqa: F811
    path = _copy(bundle_dir, tmp_path / "b")
    message = tamper(path)
    server = Server(path)
    try:
        code = server.proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        server.stop()
        raise AssertionError("a tampered bundle (%s) was still serving after 120 s" % tamper.__name__)
    err = server.stderr()
    assert code != 0, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if message in line]
    assert len(lines) == 1, err
    assert path in lines[0] or "model.json" in lines[0] or "model.onnx" in lines[0], lines[0]

    result = subprocess.run([sys.executable, "-m", "mbv3.cli", "verify", "--bundle", path], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.count("mbv3: error:") == 1 and message in result.stderr, result.stderr


def test_verify_passes_an_intact_bundle(bundle_dir):  # noqa: F811
    result = subprocess.run([sys.executable, "-m", "mbv3.cli", "verify", "--bundle", bundle_dir], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "ok: digits_test" in result.stdout and "11 classes, input 96x96" in result.stdout
