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
