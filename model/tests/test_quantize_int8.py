"""`mbv3 quantize --precision int8` on a small random bundle and small TFRecords: the quantized
models and their two records (OpenVINO's IR model-int8.xml/.bin, ONNX Runtime's QDQ model-int8.onnx),
each run by its engine, the ONNX one by `mbv3 eval/predict --precision int8`, and the refusals: too
few or corrupt calibration images, a calibration set of other classes, an --output in use, a drop
past the threshold (nothing written). The weights are random, so accuracy is chance: the run that
records passes --force where it must; the trained digits run in test_train_e2e.py holds int8 to the
1-point threshold."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from mbv3 import bundle, bundle_eval, cli, data, onnx_classifier, precision
from random_models import random_bundle

from conftest import assert_one_line_error, run_cli

CLASSES = ["n01", "n02", "n03"]
SIZE = 32
QUIET = dict(log=lambda *_: None, speed_seconds=0.05)


def _jpegs(folder, count, rng, start=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        pixels = rng.integers(0, 255, (24 + 2 * (i % 8), 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(str(folder / ("%d.jpg" % i)), quality=85)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A random bundle of 4 classes (background + 3) at 32x32; TFRecords of 36 train and 12 held-out
    JPEGs; and, quantized once through the CLI with --output, its int8 copy."""
    root = tmp_path_factory.mktemp("int8")
    rng = np.random.default_rng(0)
    for name in CLASSES:
        _jpegs(root / "images" / "train" / name, 16, rng)
    data.build(str(root / "images"), str(root / "data"), val_split=0.25, log=lambda *_: None)
    random_bundle(root / "bundle", num_classes=len(CLASSES) + 1, image_size=SIZE)
    result = run_cli("quantize", "--bundle", root / "bundle", "--precision", "int8", "--data", root / "data",
                     "--output", root / "int8", "--force", "--batch-size", "5")
    assert result.returncode == 0, result.stderr[-3000:]
    (root / "quantize.out").write_text(result.stdout)
    (root / "quantize.err").write_text(result.stderr)
    return root


@pytest.fixture
def fresh(world, tmp_path):
    shutil.copytree(str(world / "bundle"), str(tmp_path / "bundle"))
    return tmp_path / "bundle"


def test_records_one_variant_per_engine_for_the_quantized_file(world):
    printed = json.loads((world / "quantize.out").read_text())
    assert [v["engine"] for v in printed] == ["openvino", "onnxruntime"]
    assert "warning: 36 usable calibration images" in (world / "quantize.err").read_text()
    source = bundle.load(str(world / "bundle"), verify=True).info
    assert source.variants is None and not (world / "bundle" / precision.INT8_FILE).exists()   # --output: a copy
    out = bundle.load(str(world / "int8"), verify=True).info             # every listed file matches its sha256
    assert out.files[bundle.ONNX] == source.files[bundle.ONNX]
    files = {"openvino": (precision.INT8_IR, precision.INT8_IR_WEIGHTS), "onnxruntime": (precision.INT8_FILE,)}
    for engine, plain in zip(precision.ENGINES, printed):
        variant = out.variant("int8", engine)
        assert variant is not None and precision.as_json([variant]) == [plain]
        assert precision.int8_files(engine) == files[engine]
        shas = [bundle.sha256(str(world / "int8" / name)) for name in files[engine]]
        assert [out.files[name].sha256 for name in files[engine]] == shas
        assert (variant.file, variant.model_sha256) == (files[engine][0], shas[0])
        assert (variant.weights, variant.weights_sha256) == ((files[engine][1], shas[1]) if engine == "openvino"
                                                             else (None, None))
        assert variant.source_sha256 == source.files[bundle.ONNX].sha256
        assert variant.calibration == bundle.Calibration(
            source=str(world / "data"), split="train", images=36, method=variant.calibration.method)
        assert variant.calibration.method.startswith("nncf 3.4.0 post-training quantization (%s backend" % (
            "openvino" if engine == "openvino" else "onnx"))
        assert variant.split == "validation" and variant.examples == 12 and variant.max_top1_drop == 1.0
        assert variant.forced == (variant.top1_drop > 1.0)
        assert abs(variant.top1_drop - 100 * (variant.float32.top1 - variant.reduced.top1)) < 1e-6
        assert variant.speed.batch == 8 and variant.speed.float32 > 0 and variant.speed.reduced > 0
    # the two engines ran the same float32 model over the same images
    assert out.variant("int8", "openvino").float32 == out.variant("int8", "onnxruntime").float32


def _held_out(world):
    folder = str(world / "data")
    files = data.shard_files(folder, data.load(folder).split("validation", folder)[1])
    prep = bundle.load(str(world / "int8")).info.preprocessing
    return np.stack([image for batch in bundle_eval.prepared_batches(files, prep, 16) for image, _ in batch])


def test_each_engines_int8_model_answers_like_the_other(world):
    """Two quantizations of one model on the same calibration images: ONNX Runtime's QDQ file and
    OpenVINO's IR (read by OpenVINO from the .xml, its weights from the .bin beside it)."""
    import openvino as ov
    images = _held_out(world)
    ort = onnx_classifier.OnnxClassifier(str(world / "int8"), precision="int8")
    assert ort.model_file == precision.INT8_FILE
    core = ov.Core()

    def openvino_logits(name, p):
        compiled = core.compile_model(core.read_model(str(world / "int8" / name)), "CPU", precision.openvino_config(p, 0))
        return compiled.create_infer_request().infer({0: images})[0]
    ours, theirs = ort.logits(images), openvino_logits(precision.INT8_IR, "int8")
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= 0.9
    assert np.abs(ours - theirs).max() < 0.25 * np.abs(ours).max()
    f32 = onnx_classifier.OnnxClassifier(str(world / "int8")).logits(images)
    assert not np.array_equal(f32, ours)                      # another model, not model.onnx again
    assert not np.allclose(openvino_logits(bundle.ONNX, "f32"), theirs, rtol=0, atol=1e-6)


def test_eval_and_predict_run_the_int8_file(world):
    result = run_cli("eval", "--bundle", world / "int8", "--data", world / "data", "--precision", "int8")
    assert result.returncode == 0, result.stderr[-2000:]
    scored = json.loads(result.stdout)
    assert scored["precision"] == "int8" and scored["model_file"] == precision.INT8_FILE
    assert scored["written_to"].endswith(".eval-validation-int8.json")
    recorded = bundle.load(str(world / "int8")).info.variant("int8", "onnxruntime")
    assert (scored["top1"], scored["top5"]) == (recorded.reduced.top1, recorded.reduced.top5)
    image = world / "images" / "train" / "n01" / "0.jpg"
    result = run_cli("predict", "--bundle", world / "int8", "--precision", "int8", "--top-k", "1", image)
    assert result.returncode == 0 and result.stdout.splitlines()[1].startswith("  1. "), result.stderr
    for command in (("eval", "--bundle", world / "bundle", "--data", world / "data", "--precision", "int8"),
                    ("predict", "--bundle", world / "bundle", "--precision", "int8", image)):
        assert_one_line_error(run_cli(*command), "records no int8 variant validated on ONNX Runtime")


def test_a_new_model_onnx_voids_the_records(world):
    info = bundle.load(str(world / "int8")).info
    assert info.variant("int8", "onnxruntime") is not None
    info.files[bundle.ONNX].sha256 = "0" * 64            # re-exported: the int8 file came from another model
    assert info.variant("int8", "onnxruntime") is None and info.variant("int8", "openvino") is None
    for name, engine in ((precision.INT8_FILE, "onnxruntime"), (precision.INT8_IR, "openvino"),
                         (precision.INT8_IR_WEIGHTS, "openvino")):
        info = bundle.load(str(world / "int8")).info
        info.files[name].sha256 = "1" * 64                 # a different file than the one measured
        other = "openvino" if engine == "onnxruntime" else "onnxruntime"
        assert info.variant("int8", engine) is None and info.variant("int8", other) is not None, name
        del info.files[name]
        assert "is not listed in files" in info.check(), name


def test_a_variant_names_its_weights_with_its_model(world):
    """An IR's weights go with its graph: a record naming one without the other, or a path, is refused."""
    info = bundle.load(str(world / "int8")).info
    for change in (dict(weights_sha256=None), dict(weights=None), dict(file=None),
                   dict(weights="../model-int8.bin")):
        variant = info.variant("int8", "openvino")
        broken = bundle.PrecisionVariant(**dict(vars(variant), **change))
        assert broken.check() is not None, change


def _quantize(capsys, *args):
    rc = cli.main(["quantize", "--precision", "int8"] + [str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err.splitlines()


def test_calibration_sets_that_cannot_serve_are_one_line(world, fresh, tmp_path, capsys):
    text = (fresh / bundle.METADATA).read_text()
    few = tmp_path / "few"
    _jpegs(few / "a", 5, np.random.default_rng(1))
    other = tmp_path / "other-classes"
    _jpegs(other / "images" / "train" / "x", 2, np.random.default_rng(2))
    _jpegs(other / "images" / "train" / "y", 2, np.random.default_rng(3))
    data.build(str(other / "images"), str(other / "data"), log=lambda *_: None)
    used = tmp_path / "used"
    (used / "x").mkdir(parents=True)
    for args, fragment in (
            (("--calibration", few), "(5 image files) holds 5 images; calibration needs at least 32"),
            (("--calibration", tmp_path / "none"), "no calibration folder at"),
            (("--calibration-size", "10"), "--calibration-size 10: between 32 and 2000"),
            (("--calibration", other / "data"), "bundle has 4 classes, calibration data set"),
            (("--calibration-split", "validation"), "calibrating on the validation split that is scored"),
            (("--calibration", few, "--calibration-split", "train"), "applies to a TFRecord data set"),
            (("--output", used), "is not empty"),
            (("--engines", "openvino", "--max-top1-drop", "-1"), "must not be negative")):
        rc, out, err = _quantize(capsys, "--bundle", fresh, "--data", world / "data", *args)
        assert rc == 1 and out == "" and len(err) == 1 and fragment in err[0], (args, err)
    rc, out, err = _quantize(capsys, "--bundle", fresh, "--data", other / "data")
    assert rc == 1 and "bundle has 4 classes, data set" in err[-1]
    rc, out, err = cli.main(["quantize", "--precision", "bf16", "--bundle", str(fresh), "--data",
                             str(world / "data"), "--calibration-size", "64"]), *capsys.readouterr()
    assert rc == 1 and "--calibration-size applies to --precision int8" in err
    assert (fresh / bundle.METADATA).read_text() == text and sorted(os.listdir(str(fresh))) == sorted(
        os.listdir(str(world / "bundle")))


def test_a_corrupt_calibration_folder_is_one_line(world, fresh, tmp_path):
    corrupt = tmp_path / "corrupt"
    (corrupt / "a").mkdir(parents=True)
    for i in range(40):
        (corrupt / "a" / ("%d.jpg" % i)).write_bytes(b"\xff\xd8 not a jpeg %d" % i)
    result = run_cli("quantize", "--bundle", fresh, "--precision", "int8", "--data", world / "data",
                     "--calibration", corrupt)
    assert_one_line_error(result, "only 0 usable calibration images", "(40 could not be decoded); at least 32")
    assert not set(os.listdir(str(fresh))) & {precision.INT8_FILE, precision.INT8_IR, precision.INT8_IR_WEIGHTS}


def _losing(monkeypatch):
    """int8 that answers background (no image's label) for every image, on both engines."""
    for runner in (precision._Compiled, precision._Session):
        real = runner.logits

        def logits(self, batch, real=real):
            out = np.array(real(self, batch))
            if self.precision == "int8":
                out[:, 0] = out.max() + 1.0
            return out
        monkeypatch.setattr(runner, "logits", logits)


def test_a_drop_past_the_threshold_leaves_nothing_unless_forced(world, fresh, tmp_path, monkeypatch):
    """In place, calibrated on an image folder with some corrupt files: refused without --force (no
    record, no orphan int8 file, no temporary), recorded with it."""
    folder = tmp_path / "calibration"
    _jpegs(folder / "a", 34, np.random.default_rng(4))
    (folder / "a" / "broken.png").write_bytes(b"\x89PNG broken")
    _losing(monkeypatch)
    before = {name: (fresh / name).read_bytes() for name in os.listdir(str(fresh))}
    with pytest.raises(precision.MbV3Error) as refused:
        precision.measure(str(fresh), str(world / "data"), "int8", max_top1_drop=0, calibration=str(folder),
                          calibration_size=40, **QUIET)
    message = str(refused.value)
    if "loses" not in message:   # a random model may score no image right in float32: nothing can drop
        pytest.skip(message)
    assert "on openvino" in message and "on onnxruntime" in message and "nothing recorded" in message
    assert {name: (fresh / name).read_bytes() for name in os.listdir(str(fresh))} == before
    logs = []
    variants = precision.measure(str(fresh), str(world / "data"), "int8", max_top1_drop=0, calibration=str(folder),
                                 calibration_size=40, force=True, progress_seconds=0, log=logs.append,
                                 speed_seconds=0.05)
    assert any(line.startswith("calibration: ") and " img/s, ETA " in line for line in logs), logs
    assert any(line.startswith("quantize: ") and " img/s " in line for line in logs), logs
    info = bundle.load(str(fresh), verify=True).info
    assert [v.engine for v in variants] == list(precision.ENGINES)
    for variant in variants:
        assert info.variant("int8", variant.engine) == variant and variant.forced and variant.reduced.top1 == 0
        assert variant.calibration.source == str(folder) and variant.calibration.split is None
        assert variant.calibration.images == 34                # the broken file skipped
    assert sorted(os.listdir(str(fresh))) == sorted(list(before) + [precision.INT8_FILE, precision.INT8_IR,
                                                                    precision.INT8_IR_WEIGHTS])
    onnx_record = info.variant("int8", "onnxruntime")
    again = precision.measure(str(fresh), str(world / "data"), "int8", calibration=str(folder), calibration_size=40,
                              force=True, engines=["openvino"], **QUIET)
    info = bundle.load(str(fresh), verify=True).info                  # one engine's files replaced, the other's kept
    assert info.variant("int8", "openvino") == again[0] and info.variant("int8", "onnxruntime") == onnx_record
    assert [v.engine for v in info.variants] == ["onnxruntime", "openvino"]
