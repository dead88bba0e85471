"""`pip install './services/classifier[cpu]'` must give the service `make venv` gives: the package's
dependencies plus its `cpu` extra name exactly the packages requirements/service.txt pins (with the
files it includes), and `[fast]` the fast parts of requirements/service-ascend.txt."""
import os
import re

try:
    import tomllib
except ImportError:   # Python < 3.11
    tomllib = None

import pytest
from svc_support import bundle_dir  # noqa: F401  (fixture)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
REQ = os.path.join(ROOT, "requirements")


def requirement_names(path):
    names = set()
    for line in open(path):
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            names |= requirement_names(os.path.join(os.path.dirname(path), line[3:].strip()))
        elif line:
            names.add(re.split(r"[<>=!~\[; ]", line, 1)[0].lower())
    return names


def project():
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    with open(os.path.join(ROOT, "services", "classifier", "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def names(specs):
    return {re.split(r"[<>=!~\[; ]", spec, 1)[0].lower() for spec in specs}


def test_the_cpu_extra_installs_what_requirements_service_pins():
    p = project()
    installed = names(p["dependencies"]) | names(p["optional-dependencies"]["cpu"])
    assert installed == requirement_names(os.path.join(REQ, "service.txt")) | {"mbv3"}


def test_the_fast_extra_is_the_ascend_images_fast_parts():
    p = project()
    fast = names(p["optional-dependencies"]["fast"])
    assert fast == {"httptools", "simplejpeg", "opencv-python-headless"}
    assert fast <= requirement_names(os.path.join(REQ, "service-ascend.txt"))


def test_a_fresh_venv_with_the_cpu_extra_serves_with_the_fast_parts(tmp_path, bundle_dir):  # noqa: F811
    """The pip route of the README, for real: a new venv, `pip install ./model './services/classifier[cpu]'`
    (held to requirements/service.txt's versions, so it installs what CI tested), then the service
    with every setting at its default picks OpenVINO, libjpeg-turbo + OpenCV and httptools, and
    TensorFlow is nowhere. Needs PyPI (as `make venv` does); about a minute."""
    import subprocess
    import sys

    import requests
    from svc_support import Server

    import shutil
    # copies: a build from the checkout would leave build/ and *.egg-info there, and a stale build/lib
    # would ship modules the sources no longer have
    sources = {}
    for name, path in (("model", ("model",)), ("classifier", ("services", "classifier"))):
        sources[name] = str(tmp_path / name)
        shutil.copytree(os.path.join(ROOT, *path), sources[name],
                        ignore=shutil.ignore_patterns("build", "*.egg-info", "tests", "benchmarks", "__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    done = subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "-c", os.path.join(REQ, "service.txt"), sources["model"], sources["classifier"] + "[cpu]"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:]
    with Server(bundle_dir, [python, "-m", "classifier"], BACKEND="", PREPROCESSING="", HTTP_PARSER="",
                PYTHONPATH="") as s:
        serving = requests.get(s.url + "/v1/model", timeout=10).json()["serving"]
        log = s.stderr()
    assert serving["backend"].startswith("openvino "), serving["backend"]
    assert serving["preprocessing"].startswith("fast (simplejpeg "), serving["preprocessing"]
    assert "HTTP parser: httptools" in log, log[-2000:]
    assert "BACKEND=auto: using openvino" in log, log[-2000:]
    probe = subprocess.run([python, "-c", "import importlib.util as u; print(u.find_spec('tensorflow') is None)"],
                           stdout=subprocess.PIPE, universal_newlines=True, check=True)
    assert probe.stdout.strip() == "True"
