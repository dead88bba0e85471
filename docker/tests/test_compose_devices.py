"""Several Ascend chips for the `infer` service, checked with `docker-compose config` (no engine,
no card): `make infer DEVICES=...` (docker/infer_devices.py's override) and the Ascend Docker
Runtime variant (docker/compose.ascend-runtime.yaml). What the service makes of the environment
each gives it is checked with the service's own settings loader."""
import json
import os
import subprocess
import sys

import pytest

from classifier import settings as settings_mod

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
SCRIPT = os.path.join(ROOT, "docker", "infer_devices.py")
SHARED = ["/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc"]


def compose_config(*files, env=None, profile="ascend", service="infer"):
    """`service` as `docker-compose config` renders compose.yaml with `files` over it."""
    args = [a for f in ("compose.yaml",) + files for a in ("-f", f)]
    result = subprocess.run([os.path.join(BIN, "docker-compose")] + args + ["--profile", profile, "config", "--format",
                                                                           "json"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                            timeout=60, env=dict(os.environ, **(env or {})))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["services"][service]


def devices(service):
    return [d["source"] if isinstance(d, dict) else d.split(":")[0] for d in service.get("devices") or []]


def service_settings(service):
    env = {k: v for k, v in service["environment"].items() if v is not None}
    return settings_mod.load(environ=env, dotenv=None)


def override(tmp_path, chips):
    result = subprocess.run([sys.executable, SCRIPT, chips], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)
    assert result.returncode == 0, result.stderr
    path = tmp_path / "compose.infer-devices.yaml"
    path.write_text(result.stdout)
    return str(path)


@pytest.mark.parametrize("chips,ids", [("0", (0,)), ("0,1,2,3", (0, 1, 2, 3)), ("6,2", (0, 1))])
def test_devices_mount_the_listed_chips_and_number_them_from_0(tmp_path, chips, ids):
    infer = compose_config(override(tmp_path, chips), env={"DEVICE": "5"})   # DEVICES replaces the one-chip DEVICE
    assert devices(infer) == ["/dev/davinci%s" % c for c in chips.split(",")] + SHARED
    assert service_settings(infer).device_ids == ids
    mounts = {v["target"]: v for v in infer["volumes"]}
    assert mounts["/models/bundle"]["read_only"] and mounts["/usr/local/Ascend/driver"]["read_only"]


def test_one_chip_by_default():
    infer = compose_config(env={"DEVICE": "3"})
    assert devices(infer) == ["/dev/davinci3"] + SHARED and service_settings(infer).device_ids == (0,)


@pytest.mark.parametrize("chips,message", [
    ("", "DEVICES='': give the host's chips as a comma-separated list of numbers, e.g. 0,1,2,3"),
    ("0-3", "DEVICES='0-3': give the host's chips as a comma-separated list of numbers, e.g. 0,1,2,3"),
    ("1,1", "DEVICES='1,1': a chip is listed twice"),
])
def test_bad_devices_get_one_line(chips, message):
    result = subprocess.run([sys.executable, SCRIPT, chips], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == ["infer_devices: error: " + message]


def test_the_ascend_runtime_variant_mounts_nothing_itself_and_serves_every_chip_it_is_given():
    infer = compose_config("docker/compose.ascend-runtime.yaml", env={"DEVICES": "0,1,2,3", "BUNDLE": "/srv/b"})
    assert infer["runtime"] == "ascend" and devices(infer) == []
    assert [(v["source"], v["target"], v["read_only"]) for v in infer["volumes"]] == [("/srv/b", "/models/bundle", True)]
    env = infer["environment"]
    assert env["ASCEND_VISIBLE_DEVICES"] == "0,1,2,3"
    assert service_settings(infer).device_ids == settings_mod.ALL_DEVICES   # pyACL counts what the runtime mounted
    assert infer["read_only"] and infer["cap_drop"] == ["ALL"] and infer["group_add"]   # the hardening stays
    assert compose_config("docker/compose.ascend-runtime.yaml")["environment"]["ASCEND_VISIBLE_DEVICES"] == "0"


def dry_run(**variables):
    env = {k: v for k, v in os.environ.items() if k not in ("DEVICE", "DEVICES", "ASCEND_RUNTIME", "MAKEFLAGS")}
    result = subprocess.run(["make", "-n", "-C", ROOT, "infer", "COMPOSE=docker-compose"]
                            + ["%s=%s" % kv for kv in sorted(variables.items())],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, env=env)
    assert result.returncode == 0, result.stdout
    return result.stdout.replace("\\\n", " ")


def test_make_infer_picks_the_compose_files_from_devices_and_ascend_runtime():
    assert "COMPOSE_FILE" not in dry_run(DEVICE="2")
    several = dry_run(DEVICES="0,1")
    assert 'docker/infer_devices.py "0,1" > build/compose.infer-devices.yaml' in several
    assert "COMPOSE_FILE=compose.yaml:build/compose.infer-devices.yaml docker-compose up infer" in " ".join(several.split())
    runtime = " ".join(dry_run(ASCEND_RUNTIME="1", DEVICES="0,1").split())
    assert "DEVICES=0,1" in runtime and "COMPOSE_FILE=compose.yaml:docker/compose.ascend-runtime.yaml" in runtime
