"""ATC command generation and the model.json record (ATC itself needs CANN: a fake stands in)."""
import dataclasses
import json
import os
import re
import stat
import sys

import pytest

from mbv3 import atc, bundle, checkpoint, export
from mbv3.errors import MbV3Error

from random_models import random_run

from conftest import assert_one_line_error, random_values, run_cli


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("atc")
    prefix = checkpoint.save(str(root / "run"), 1, random_values("small", 0.35, 11))
    export.export(prefix, str(root / "bundle"), image_size=96, log=lambda *_: None)
    return str(root / "bundle")


def _fake_atc(tmp_path, exit_code=0):
    """An `atc` that writes <--output>.om (or fails), recording its arguments."""
    path = tmp_path / "atc"
    path.write_text("#!/bin/sh\necho \"$@\" > %s/atc-args\nfor a in \"$@\"; do case $a in --output=*) out=${a#--output=};; "
                    "esac; done\n[ %d -eq 0 ] && echo om > \"$out.om\"\nexit %d\n" % (tmp_path, exit_code, exit_code))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_default_command(bundle_dir):
    meta = bundle.load(bundle_dir).info
    args = atc.command(bundle_dir, meta)
    assert args[0] == "atc" and "--framework=3" in args and "--model=%s/model.pb" % bundle_dir in args
    assert "--input_shape=input:-1,96,96,3" in args and "--input_format=NHWC" in args
    assert "--dynamic_batch_size=1,2,4,8,16,32" in args and "--soc_version=Ascend310" in args
    assert "--output_type=FP32" in args and "--output=%s/model" % bundle_dir in args
    assert not any(a.startswith("--insert_op_conf") for a in args)


def test_variants_of_the_command(bundle_dir):
    meta = bundle.load(bundle_dir).info
    static = atc.command(bundle_dir, meta, "Ascend310P3", batch_profiles=[])
    assert "--input_shape=input:1,96,96,3" in static and "--soc_version=Ascend310P3" in static
    assert not any(a.startswith("--dynamic_batch_size") for a in static)
    with_aipp = atc.command(bundle_dir, meta, aipp=True, batch_profiles=[4, 1, 2], precision_mode="allow_fp32_to_fp16")
    assert "--insert_op_conf=%s/aipp.cfg" % bundle_dir in with_aipp and "--dynamic_batch_size=1,2,4" in with_aipp
    assert "--precision_mode=allow_fp32_to_fp16" in with_aipp
    for bad in ("Ascend", "ascend310", "310P3", "Ascend 310P3", "Ascend310P3;reboot", "Ascend91"):
        with pytest.raises(MbV3Error, match="soc_version '%s': it is \"Ascend\" plus the chip name `npu-smi info` "
                                            "reports" % re.escape(bad)):
            atc.command(bundle_dir, meta, bad)
    for good in ("Ascend310", "Ascend310P3", "Ascend910A", "Ascend910ProB", "Ascend910B3", "Ascend910_9391"):
        assert "--soc_version=" + good in atc.command(bundle_dir, meta, good)
    with pytest.raises(MbV3Error, match="2 to 100 positive batch profiles"):
        atc.command(bundle_dir, meta, batch_profiles=[8])


def test_aipp_folds_the_normalisation(bundle_dir):
    text = atc.aipp_config(bundle.load(bundle_dir).info)
    assert "input_format: RGB888_U8" in text and "src_image_size_w: 96" in text
    for c in range(3):   # (x - 127.5) / 127.5 == (x / 255 - 0.5) / 0.5: the bundle's [-1, 1]
        assert "min_chn_%d: 127.5" % c in text and "var_reci_chn_%d: 0.00784313725490196" % c in text


def test_build_records_the_om_in_model_json(bundle_dir, tmp_path):
    fake = _fake_atc(tmp_path)
    record = atc.build(bundle_dir, "Ascend310P3", [1, 2, 4, 8], aipp=True, atc=fake, log=lambda *_: None)
    assert dataclasses.asdict(record) == {"file": "model.om", "batch_profiles": [1, 2, 4, 8], "aipp": True,
                                          "soc_version": "Ascend310P3", "input_dtype": "uint8"}
    loaded = bundle.load(bundle_dir, verify=True)           # sha256s of model.om and aipp.cfg recorded
    assert loaded.metadata["om"] == dataclasses.asdict(record) and {"model.om", "aipp.cfg"} <= set(loaded.metadata["files"])
    assert "--dynamic_batch_size=1,2,4,8" in (tmp_path / "atc-args").read_text()


def test_failures_are_one_line_and_leave_model_json_alone(bundle_dir, tmp_path):
    before = open(os.path.join(bundle_dir, "model.json")).read()
    result = run_cli("om", "--bundle", bundle_dir, "--atc", _fake_atc(tmp_path, exit_code=3))
    assert_one_line_error(result, "ATC failed (exit 3)")
    result = run_cli("om", "--bundle", bundle_dir, "--atc", str(tmp_path / "no-such-atc"))
    assert_one_line_error(result, "not found")
    assert open(os.path.join(bundle_dir, "model.json")).read() == before
    shown = run_cli("om", "--bundle", bundle_dir, "--print", "--aipp")
    assert shown.returncode == 0 and shown.stdout.startswith("atc --framework=3") and "aipp_op {" in shown.stdout
    assert json.loads(before)["format"] == "mbv3-bundle"


def test_a_run_trained_at_64_yields_an_om_for_64(tmp_path):
    """Export with no size flag takes 64 from the run; `mbv3 om` takes it (and the normalisation) from the bundle."""
    prefix = random_run(tmp_path / "run", image_size=64)
    export.export(prefix, str(tmp_path / "bundle"), log=lambda *_: None)
    shown = run_cli("om", "--bundle", tmp_path / "bundle", "--print", "--aipp")
    assert shown.returncode == 0, shown.stderr
    command, config = shown.stdout.split("\n", 1)
    assert "--input_shape=input:-1,64,64,3" in command.split() and "--dynamic_batch_size=1,2,4,8,16,32" in command
    assert "src_image_size_w: 64" in config and "src_image_size_h: 64" in config
    assert config.count("min_chn_") == 3 and "var_reci_chn_0: 0.00784313725490196" in config
    fake = _fake_atc(tmp_path)
    atc.build(str(tmp_path / "bundle"), "Ascend310", [1, 2, 4], aipp=True, atc=fake, log=lambda *_: None)
    assert "--input_shape=input:-1,64,64,3" in (tmp_path / "atc-args").read_text().split()
    assert "src_image_size_h: 64" in (tmp_path / "bundle" / "aipp.cfg").read_text()


# `npu-smi info` as Huawei documents it (Ascend/ModelZoo-PyTorch's ACL_PyTorch READMEs: two 310P3 cards)
NPU_SMI_310P3 = """\
+--------------------------------------------------------------------------------------------------------+
| npu-smi 22.0.0                       Version: 22.0.2                                                   |
+-------------------+-----------------+------------------------------------------------------+
| NPU     Name      | Health          | Power(W)     Temp(C)           Hugepages-Usage(page) |
| Chip    Device    | Bus-Id          | AICore(%)    Memory-Usage(MB)                        |
+===================+=================+======================================================+
| 0       310P3     | OK              | 15.8         42                0    / 0              |
| 0       0         | 0000:82:00.0    | 0            1074 / 21534                            |
+===================+=================+======================================================+
| 1       310P3     | OK              | 15.4         43                0    / 0              |
| 0       1         | 0000:89:00.0    | 0            1070 / 21534                            |
+===================+=================+======================================================+
"""


def _fake_npu_smi(tmp_path, output, exit_code=0):
    """An `npu-smi` on PATH that prints `output` for `npu-smi info`."""
    folder = tmp_path / "npu-smi-bin"
    folder.mkdir(parents=True)
    (folder / "out.txt").write_text(output)
    path = folder / "npu-smi"
    path.write_text("#!/bin/sh\n[ \"$1\" = info ] && cat %s\nexit %d\n" % (folder / "out.txt", exit_code))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return dict(os.environ, PATH="%s:%s" % (folder, os.environ.get("PATH", "")))


def test_soc_version_comes_from_the_user_then_the_serving_chip_and_npu_smi_only_when_asked(bundle_dir, tmp_path,
                                                                                             monkeypatch):
    assert atc.npu_smi_chips(NPU_SMI_310P3) == ["310P3", "310P3"]
    assert atc.npu_smi_chips(NPU_SMI_310P3.replace("310P3", "910B3").replace("| OK ", "| Warning ")) == ["910B3"] * 2
    assert atc.npu_smi_chips(NPU_SMI_310P3.replace("310P3", "310")) == ["310", "310"]   # Atlas 300I: Ascend310
    assert atc.CHIPS[atc.DEFAULT_CHIP] == atc.DEFAULT_SOC_VERSION
    for chip, soc in atc.CHIPS.items():   # every serving chip's key is npu-smi's name for it
        assert soc == "Ascend" + chip and atc.check_soc_version(soc) == soc
    # a 910 host (the fine-tune machine) does not decide the target unless asked with "auto"
    env = _fake_npu_smi(tmp_path, NPU_SMI_310P3.replace("310P3", "910B3"))
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.delenv("ASCEND_CHIP", raising=False)
    env.pop("ASCEND_CHIP", None)
    assert atc.resolve_soc_version("Ascend310P3") == ("Ascend310P3", "given")
    assert atc.resolve_soc_version()[0] == atc.DEFAULT_SOC_VERSION
    assert atc.resolve_soc_version(None, "310P3") == ("Ascend310P3", "ASCEND_CHIP=310P3")
    assert atc.resolve_soc_version("auto")[0] == "Ascend910B3"
    with pytest.raises(MbV3Error, match="ASCEND_CHIP '910B3': one of 310, 310P3"):
        atc.resolve_soc_version(None, "910B3")
    shown = run_cli("om", "--bundle", bundle_dir, "--print", env=env)
    assert shown.returncode == 0 and "--soc_version=%s" % atc.DEFAULT_SOC_VERSION in shown.stdout.split(), shown.stderr
    assert "the default serving chip %s" % atc.DEFAULT_CHIP in shown.stderr
    shown = run_cli("om", "--bundle", bundle_dir, "--print", env=dict(env, ASCEND_CHIP="310P3"))
    assert shown.returncode == 0 and "--soc_version=Ascend310P3" in shown.stdout.split(), shown.stderr
    shown = run_cli("om", "--bundle", bundle_dir, "--print", "--soc-version", "auto", env=env)
    assert shown.returncode == 0 and "--soc_version=Ascend910B3" in shown.stdout.split(), shown.stderr
    assert "soc_version Ascend910B3 (the chip `npu-smi info` reports on this machine" in shown.stderr
    mixed = NPU_SMI_310P3.replace("| 1       310P3", "| 1       310  ")
    monkeypatch.setenv("PATH", _fake_npu_smi(tmp_path / "mixed", mixed)["PATH"])
    with pytest.raises(MbV3Error, match="lists several chips \\(310, 310P3\\); give --soc-version"):
        atc.resolve_soc_version("auto")
    broken = _fake_npu_smi(tmp_path / "broken", "dcmi module initialize failed. ret is -8005\n", exit_code=8)
    assert_one_line_error(run_cli("om", "--bundle", bundle_dir, "--print", "--soc-version", "auto", env=broken),
                          "`npu-smi info` (exit 8) named no chip: dcmi module initialize failed", "--soc-version")
    bare = dict(os.environ, PATH=os.path.dirname(sys.executable))   # no npu-smi
    bare.pop("ASCEND_CHIP", None)
    assert_one_line_error(run_cli("om", "--bundle", bundle_dir, "--print", "--soc-version", "auto", env=bare),
                          "--soc-version auto: no `npu-smi` on this machine")
    assert_one_line_error(run_cli("om", "--bundle", bundle_dir, "--print", "--soc-version", "Ascend-910B", env=bare),
                          "soc_version 'Ascend-910B'")
