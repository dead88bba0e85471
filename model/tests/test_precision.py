"""`mbv3 quantize --precision bf16` end to end on a small random bundle and small TFRecords: the record
it writes into model.json (and nothing else in the bundle changes), and its refusals: a top-1 drop
past the threshold without --force, a CPU without native bfloat16, a missing split, a corrupt data set."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from mbv3 import bundle, cli, data, precision
from random_models import random_bundle

from conftest import assert_one_line_error, run_cli

CLASSES = ["n01", "n02", "n03"]
SIZE = 32
GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "model-json-at-format-1.json")


def _native_bf16():
    import openvino as ov
    return precision.NATIVE["bf16"] in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


# the tests that record without --force need this CPU to run bf16 (the refusal on one that does not is
# tested with injected capabilities)
needs_bf16 = pytest.mark.skipif(not _native_bf16(), reason="this CPU has no native bf16")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A random bundle of 4 classes (background + 3) at 32x32, and 9 held-out JPEGs as TFRecords."""
    root = tmp_path_factory.mktemp("quantize")
    rng = np.random.default_rng(0)
    for name in CLASSES:
        folder = root / "images" / "train" / name
        folder.mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 255, (24 + 4 * i, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(str(folder / ("%d.jpg" % i)), quality=85)
    data.build(str(root / "images"), str(root / "data"), val_split=0.5, log=lambda *_: None)
    random_bundle(root / "bundle", num_classes=len(CLASSES) + 1, image_size=SIZE)
    return root


@pytest.fixture
def fresh(world, tmp_path):
    """A copy of the bundle each test may write into."""
    shutil.copytree(str(world / "bundle"), str(tmp_path / "bundle"))
    return tmp_path / "bundle"


def _quantize(capsys, *args):
    """cli.main in process: (exit status, stdout, stderr lines)."""
    rc = cli.main(["quantize", "--precision", "bf16"] + [str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err.splitlines()


@needs_bf16
def test_records_a_validated_bf16_variant(world, fresh):
    before = bundle.load(str(fresh)).info
    result = run_cli("quantize", "--bundle", fresh, "--precision", "bf16", "--data", world / "data", "--split", "val",
                     "--batch-size", "4")
    assert result.returncode == 0, result.stderr[-2000:]
    (printed,) = json.loads(result.stdout)
    held_out = data.num_examples(str(world / "data"), "validation")
    assert held_out == 9 and printed["examples"] == held_out and printed["split"] == "validation"
    assert "float32 top-1" in result.stderr and "recorded bf16 for openvino in" in result.stderr
    after = bundle.load(str(fresh), verify=True).info      # model.onnx and labels untouched, sha256s hold
    variant = after.variant("bf16", "openvino")
    assert variant is not None and precision.as_json([variant]) == [printed]
    assert variant.speed.batch == 8 and variant.speed.float32 > 0 and variant.speed.reduced > 0
    assert variant.native and not variant.forced and variant.device == "CPU" and variant.file is None
    assert variant.model_sha256 == after.files[bundle.ONNX].sha256
    assert variant.top1_drop <= variant.max_top1_drop == 0.5 and 0 <= variant.top1_agreement <= 1
    assert abs(variant.top1_drop - 100 * (variant.float32.top1 - variant.reduced.top1)) < 1e-6
    # only the record was added: everything else of model.json reads back as it was
    assert {k: v for k, v in after.to_dict().items() if k != "variants"} == before.to_dict()
    # a second validation replaces the first rather than adding another, and shows its progress
    logs = []
    precision.measure(str(fresh), str(world / "data"), batch_size=2, progress_seconds=0, log=logs.append,
                      speed_seconds=0.05)
    assert len(bundle.load(str(fresh)).info.variants) == 1
    assert any(line.startswith("quantize: 2/9 images (22.2%)") for line in logs), logs
    assert any(line.startswith("openvino: float32 top-1") and "batch 8: " in line for line in logs), logs


def _losing(monkeypatch):
    """bf16 that answers background (no image's label) for every image: its top-1 falls to 0."""
    real = precision._Compiled.logits

    def logits(self, batch):
        out = real(self, batch)
        if self.runs_as == "bf16":
            out[:, 0] = out.max() + 1.0
        return out
    monkeypatch.setattr(precision._Compiled, "logits", logits)


@needs_bf16
def test_a_drop_past_the_threshold_is_refused_unless_forced(world, fresh, capsys, monkeypatch):
    _losing(monkeypatch)
    text = (fresh / bundle.METADATA).read_text()
    rc, out, err = _quantize(capsys, "--bundle", fresh, "--data", world / "data", "--max-top1-drop", "0")
    if rc == 0:   # a random model may score no image right in float32: then nothing can drop
        f32_top1 = json.loads(out)[0]["float32"]["top1"]
        assert f32_top1 == 0
        pytest.skip("float32 top-1 is 0 on this random bundle")
    assert rc == 1 and out == ""
    assert err[-1].startswith("mbv3: error: bf16 loses ") and "--max-top1-drop 0" in err[-1], err
    assert (fresh / bundle.METADATA).read_text() == text            # nothing recorded
    rc, out, err = _quantize(capsys, "--bundle", fresh, "--data", world / "data", "--max-top1-drop", "0", "--force")
    assert rc == 0, err
    variant = bundle.load(str(fresh)).info.variant("bf16", "openvino")
    assert variant.forced and not variant.within_threshold and variant.reduced.top1 == 0.0
    assert variant.top1_agreement < 1.0


def test_a_cpu_without_native_bf16_is_refused_unless_forced(world, fresh):
    text = (fresh / bundle.METADATA).read_text()
    with pytest.raises(precision.MbV3Error, match="has no native bf16"):
        precision.measure(str(fresh), str(world / "data"), capabilities=["FP32", "INT8"], log=lambda *_: None,
                          speed_seconds=0.05)
    assert (fresh / bundle.METADATA).read_text() == text
    (variant,) = precision.measure(str(fresh), str(world / "data"), capabilities=["FP32"], force=True,
                                   log=lambda *_: None, speed_seconds=0.05)
    assert variant.forced and not variant.native


def test_a_missing_split_and_a_corrupt_data_set_are_one_line(world, fresh, tmp_path):
    result = run_cli("quantize", "--bundle", fresh, "--precision", "bf16", "--data", world / "data", "--split", "test")
    assert_one_line_error(result, "has no shards for split 'test'")
    broken = tmp_path / "data"
    shutil.copytree(str(world / "data"), str(broken))
    (broken / "dataset.json").write_text('{"format": "mbv3-tfrecords", "format_version": 1, "splits": [')
    result = run_cli("quantize", "--bundle", fresh, "--precision", "bf16", "--data", broken)
    assert_one_line_error(result, "dataset.json")
    # shards that are not TFRecords: nothing usable is read, and nothing is recorded
    shutil.rmtree(str(broken))
    shutil.copytree(str(world / "data"), str(broken))
    for shard in json.loads((broken / "dataset.json").read_text())["splits"]["validation"]["shards"]:
        (broken / shard["file"]).write_bytes(b"\x00" * 64)
    text = (fresh / bundle.METADATA).read_text()
    result = run_cli("quantize", "--bundle", fresh, "--precision", "bf16", "--data", broken)
    assert result.returncode == 1 and result.stderr.splitlines()[-1].startswith("mbv3: error: no usable validation")
    assert (fresh / bundle.METADATA).read_text() == text


def test_the_record_round_trips_and_is_checked():
    with open(GOLDEN) as f:
        plain = json.load(f)
    info = bundle.ModelInfo.from_dict(dict(plain))
    sha = info.files[bundle.ONNX].sha256
    record = {"precision": "bf16", "engine": "openvino", "engine_version": "2026.4.1", "device": "CPU",
              "device_name": "a CPU", "model_sha256": sha, "data": "/d", "split": "validation", "examples": 10,
              "float32": {"top1": 0.9, "top5": 1.0}, "reduced": {"top1": 0.9, "top5": 1.0}, "top1_agreement": 1.0,
              "max_top1_drop": 0.5, "top1_drop": 0.0, "forced": False, "native": True,
              "validated": "2026-12-07T17:00:00Z"}
    plain["variants"] = [record]
    info = bundle.ModelInfo.from_dict(plain)
    assert bundle.ModelInfo.from_dict(json.loads(info.to_json())).to_dict() == info.to_dict()
    assert info.variant("bf16", "openvino").reduced.top1 == 0.9 and info.variant("int8", "openvino") is None
    info.files[bundle.ONNX].sha256 = "0" * 64     # a re-exported model.onnx: the record no longer speaks for it
    assert info.variant("bf16", "openvino") is None
    for change, fragment in ((dict(precision="fp8"), "precision must be one of"),
                             (dict(precision="int8"), "needs its model file"),
                             (dict(file="model.onnx"), "names no file"),
                             (dict(top1_agreement=1.5), "top1_agreement must be a fraction"),
                             (dict(examples="many"), "must be an integer")):
        plain["variants"] = [dict(record, **change)]
        with pytest.raises(bundle.BundleError, match=fragment):
            bundle.ModelInfo.from_dict(plain)
