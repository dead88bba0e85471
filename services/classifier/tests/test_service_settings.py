"""Thread pools follow the CPUs the process may really use: its affinity, capped by a container's
cgroup CPU quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`), rounded up."""
import math
import os

import pytest

from classifier import settings as settings_mod


def _v2(root, text):
    root.mkdir(exist_ok=True)
    (root / "cpu.max").write_text(text)
    return str(root)


def _v1(root, quota, period):
    (root / "cpu").mkdir(parents=True, exist_ok=True)
    (root / "cpu" / "cpu.cfs_quota_us").write_text(quota)
    (root / "cpu" / "cpu.cfs_period_us").write_text(period)
    return str(root)


@pytest.mark.parametrize("write,expected", [
    (lambda r: _v2(r, "150000 100000\n"), 1.5),
    (lambda r: _v2(r, "max 100000\n"), None),
    (lambda r: _v1(r, "200000\n", "100000\n"), 2.0),
    (lambda r: _v1(r, "-1\n", "100000\n"), None),
    (lambda r: str(r), None),
    (lambda r: _v2(r, "garbage"), None),
])
def test_cgroup_quota(tmp_path, write, expected):
    assert settings_mod._cgroup_cpu_quota(write(tmp_path / "cg")) == expected


def test_available_cpus_takes_the_quota_rounded_up(monkeypatch):
    affinity = len(os.sched_getaffinity(0))
    monkeypatch.setattr(settings_mod, "_cgroup_cpu_quota", lambda: 0.5)
    assert settings_mod.available_cpus() == 1
    monkeypatch.setattr(settings_mod, "_cgroup_cpu_quota", lambda: 1000.25)
    assert settings_mod.available_cpus() == affinity
    monkeypatch.setattr(settings_mod, "_cgroup_cpu_quota", lambda: None)
    assert settings_mod.available_cpus() == affinity
    monkeypatch.setattr(settings_mod, "_cgroup_cpu_quota", lambda: 1.5)
    assert settings_mod.load(environ={}, dotenv=None).preprocess_workers == min(affinity, math.ceil(1.5))
    assert settings_mod.load(environ={"PREPROCESS_WORKERS": "5"}, dotenv=None).preprocess_workers == 5


def test_an_empty_value_means_the_default_or_the_layer_below(tmp_path):
    """compose.yaml passes `${VAR:-}` and `make serve` HOST="$(HOST)": empty when the user set nothing."""
    names = [f.name for f in settings_mod.fields(settings_mod.Settings)]
    assert settings_mod.load(environ={name: "" for name in names}, dotenv=None) == settings_mod.Settings()
    dotenv = tmp_path / ".env"
    dotenv.write_text("MAX_BATCH=16\nPORT=\n")
    s = settings_mod.load(environ={"MAX_BATCH": "", "MAX_QUEUE": "32"}, dotenv=str(dotenv), LOG_LEVEL="")
    assert (s.MAX_BATCH, s.PORT, s.MAX_QUEUE, s.LOG_LEVEL) == (16, settings_mod.Settings.PORT, 32, "info")
    assert s.MAX_IMAGES_PER_REQUEST == 32   # its default still follows a smaller MAX_QUEUE
    with pytest.raises(settings_mod.SettingsError, match="MAX_BATCH=' ' is not a valid int"):
        settings_mod.load(environ={"MAX_BATCH": " "}, dotenv=None)   # only the empty string means unset


@pytest.mark.parametrize("environ,ids", [
    ({}, (0,)),
    ({"DEVICE_IDS": "0,1,2,3"}, (0, 1, 2, 3)),
    ({"DEVICE_IDS": " 3, 1 "}, (3, 1)),
    ({"DEVICE_IDS": "ALL"}, settings_mod.ALL_DEVICES),
    ({"DEVICE_ID": "2"}, (2,)),                         # the single-device name is a one-item list
    ({"DEVICE_ID": "2", "DEVICE_IDS": ""}, (2,)),       # compose passes an unset DEVICE_IDS as empty
])
def test_device_ids(environ, ids):
    assert settings_mod.load(environ=environ, dotenv=None).device_ids == ids


def test_device_id_in_the_environment_overrides_device_ids_in_dotenv(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("DEVICE_IDS=0,1\n")
    assert settings_mod.load(environ={"DEVICE_ID": "3"}, dotenv=str(dotenv)).device_ids == (3,)


@pytest.mark.parametrize("environ,message", [
    ({"DEVICE_IDS": "0,,1"}, "DEVICE_IDS='0,,1': a comma-separated list of device numbers (0,1,2,3) or all"),
    ({"DEVICE_IDS": "0,-1"}, "DEVICE_IDS='0,-1': a comma-separated list of device numbers (0,1,2,3) or all"),
    ({"DEVICE_IDS": "1,1"}, "DEVICE_IDS='1,1': a device is listed twice"),
    ({"DEVICE_ID": "0,1"}, "DEVICE_ID='0,1' is not a device number (DEVICE_IDS takes a list)"),
    ({"DEVICE_ID": "1", "DEVICE_IDS": "0,1"}, "set DEVICE_IDS or DEVICE_ID, not both"),
    ({"CPU_WORKERS": "-1"}, "THREADS and CPU_WORKERS must not be negative"),
])
def test_bad_device_settings(environ, message):
    with pytest.raises(settings_mod.SettingsError) as e:
        settings_mod.load(environ=environ, dotenv=None)
    assert str(e.value) == message
