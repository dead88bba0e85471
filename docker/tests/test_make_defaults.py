"""The Makefile passes a setting on only when the user sets it, so each default lives in the program
it configures: `mbv3 om`'s in atc.py, the service's in its settings.py, compose.yaml's for the
containers, the recipe's train.init_from. Checked with `make -n`, which prints and runs nothing."""
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_n(target, env, **variables):
    return subprocess.run(["make", "-n", "-C", ROOT, target, "COMPOSE=docker-compose"]
                          + ["%s=%s" % kv for kv in sorted(variables.items())],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, env=env)


def dry_run(target, **variables):
    env = {k: v for k, v in os.environ.items()
           if k not in ("SOC_VERSION", "PROFILES", "DEVICE", "DEVICES", "ASCEND_RUNTIME", "INIT_FROM", "HOST", "PORT",
                         "MAKEFLAGS", "ASCEND_CHIP", "ASCEND_INFER_BASE_IMAGE")}
    result = make_n(target, env, **variables)
    assert result.returncode == 0, result.stdout
    lines = [l for l in result.stdout.replace("\\\n", " ").splitlines() if "mbv3" in l or "compose" in l]
    assert lines, result.stdout
    return lines[-1]


def test_om_passes_the_soc_version_and_profiles_only_when_set():
    line = dry_run("om")
    assert "--soc-version" not in line and "--batch-profiles" not in line
    line = dry_run("om", SOC_VERSION="Ascend310P3", PROFILES="1 4")
    assert "--soc-version Ascend310P3" in line and "--batch-profiles 1 4" in line


def test_finetune_npu_passes_init_from_only_when_set():
    assert "init_from" not in dry_run("finetune-npu")
    assert "--set train.init_from=/runs/x/model.ckpt-5" in dry_run("finetune-npu", INIT_FROM="/runs/x/model.ckpt-5")


# empty values reach the program, which reads them as unset: the service (settings.load) and compose
# (`${PORT:-8000}`, `${DEVICE:-0}`)
@pytest.mark.parametrize("target,unset,given", [
    ("serve", 'HOST="" PORT=""', 'HOST="0.0.0.0" PORT="8123"'),
    ("serve-container", "PORT= ", "PORT=8123 "),
    ("infer", "DEVICE= PORT= ", "DEVICE=3 PORT=8123 "),
    ("finetune-npu", "DEVICE= ", "DEVICE=3 "),
])
def test_host_port_and_device_are_passed_empty_unless_set(target, unset, given):
    assert unset in dry_run(target)
    assert given in dry_run(target, PORT="8123", DEVICE="3", HOST="0.0.0.0")


def test_one_chip_choice_sets_the_infer_base_and_oms_soc_version():
    """ASCEND_CHIP (atc.py's CHIPS; unset: its DEFAULT_CHIP) picks the infer image's base from the
    Makefile's table and reaches `mbv3 om` only when set; an unknown chip stops make."""
    from mbv3 import atc
    makefile = open(os.path.join(ROOT, "Makefile")).read()
    bases = dict(re.findall(r"^ASCEND_INFER_BASE_(\w+) = (\S+)$", makefile, re.M))
    assert sorted(bases) == sorted(atc.CHIPS)
    # without make: compose's and the Dockerfile's fallback are the default chip's base
    compose = open(os.path.join(ROOT, "compose.yaml")).read()
    assert '"${ASCEND_INFER_BASE_IMAGE:-%s}"' % bases[atc.DEFAULT_CHIP] in compose
    dockerfile = open(os.path.join(ROOT, "docker", "infer-ascend.Dockerfile")).read()
    assert re.search(r"^ARG BASE_IMAGE=%s$" % re.escape(bases[atc.DEFAULT_CHIP]), dockerfile, re.M)
    for target in ("images", "infer"):
        line = dry_run(target)
        assert "ASCEND_INFER_BASE_IMAGE=%s " % bases[atc.DEFAULT_CHIP] in line and "ASCEND_CHIP" not in line
        for chip in atc.CHIPS:
            line = dry_run(target, ASCEND_CHIP=chip)
            assert "ASCEND_CHIP=%s ASCEND_INFER_BASE_IMAGE=%s " % (chip, bases[chip]) in line
        assert "ASCEND_INFER_BASE_IMAGE=local/base " in dry_run(target, ASCEND_CHIP="310P3",
                                                                 ASCEND_INFER_BASE_IMAGE="local/base")
    assert "ASCEND_CHIP" not in dry_run("om")
    assert "ASCEND_CHIP=310P3 " in dry_run("om", ASCEND_CHIP="310P3")
    env = {k: v for k, v in os.environ.items() if k not in ("ASCEND_CHIP", "ASCEND_INFER_BASE_IMAGE", "MAKEFLAGS")}
    refused = make_n("images", env, ASCEND_CHIP="910B3")
    assert refused.returncode != 0 and "ASCEND_CHIP=910B3: no infer image base for it" in refused.stdout
