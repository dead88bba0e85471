"""`mbv3 eval --bundle`: the serving path (Pillow decode, NumPy transform, ONNX Runtime) scored over
real TFRecords, counted as the checkpoint eval counts, on a small data set of mixed images."""
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mbv3 import bundle, bundle_eval, data, evaluate, export, fast_preprocess, onnx_classifier, train
from random_models import random_run

from conftest import assert_one_line_error, run_cli

CLASSES = ["n01", "n02", "n03"]
SIZE = 32


def _picture(h, w, seed, tint):
    """Smooth noise leaning to one colour (the class), so a few training steps learn something."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 128, (h // 5 + 2, w // 5 + 2, 3)) + np.array(tint) * 127
    return Image.fromarray(small.astype(np.uint8)).resize((w, h), Image.BICUBIC)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Images of mixed sizes, modes and formats -> TFRecords (12 held out) -> 60 smoke steps at 32 -> its bundle.
    (Trained, not random weights: a random MobileNetV3 answers one class whatever it is shown.)"""
    root = tmp_path_factory.mktemp("bundle_eval")
    for c, name in enumerate(CLASSES):
        folder = root / "images" / "train" / name
        folder.mkdir(parents=True)
        for i in range(7):
            img = _picture(40 + 13 * i, 90 - 7 * i, 10 * c + i, tint=np.eye(3)[c])
            if i % 3 == 1:
                img.convert("L").save(str(folder / ("%d.png" % i)))
            else:
                img.save(str(folder / ("%d.jpg" % i)), quality=85)
    data.build(str(root / "images"), str(root / "data"), val_split=0.5, log=lambda *_: None)
    train.train("smoke", str(root / "data"), str(root / "run"), log=lambda *_: None,
                overrides=["train.steps=60", "data.image_size=%d" % SIZE, "data.deterministic=true"])
    export.export(str(root / "run"), str(root / "bundle"), log=lambda *_: None)
    return root


def _both(root, data_dir, **kwargs):
    checkpoint_eval = evaluate.evaluate(str(root / "run"), str(data_dir), write=False, log=lambda *_: None, **kwargs)
    bundle_result = bundle_eval.evaluate(str(root / "bundle"), str(data_dir), write=False, log=lambda *_: None, **kwargs)
    return checkpoint_eval, bundle_result


def test_bundle_eval_counts_what_the_checkpoint_eval_counts(world):
    expected = data.num_examples(str(world / "data"), "validation")
    assert expected == 12
    ckpt, served = _both(world, world / "data", batch_size=5)          # 5 + 5 + 2: the partial batch counts
    assert served["examples"] == ckpt["examples"] == expected and served["skipped_records"] == 0
    assert served["image_size"] == ckpt["image_size"] == SIZE and served["weights"] == ckpt["weights"] == "ema"
    assert (served["top1"], served["top5"]) == (ckpt["top1"], ckpt["top5"])
    assert served["top1"] > 1.0 / len(CLASSES)   # better than chance: the run learned something
    # the agreement is not that of a model that answers one class whatever it sees
    shards = [str(world / "data" / s["file"]) for s in data.info(str(world / "data"))["splits"]["validation"]["shards"]]
    prep = bundle.load(str(world / "bundle")).preprocessing
    prepared = [bundle_eval._prepare(r, prep) for r in bundle_eval._records(shards, print)]
    logits = onnx_classifier.OnnxClassifier(str(world / "bundle")).logits(np.stack([image for image, _ in prepared]))
    assert len(set(np.argmax(logits, axis=1))) > 1
    assert served["checkpoint"] == ckpt["checkpoint"] and served["step"] == ckpt["step"]


def test_the_fast_path_gives_the_same_top1_on_every_image(world):
    """The service's libjpeg-turbo + OpenCV preprocessing (within one 8-bit level of the reference)
    through this trained bundle: every held-out image gets the reference's top-1."""
    shards = [str(world / "data" / s["file"]) for s in data.info(str(world / "data"))["splits"]["validation"]["shards"]]
    prep = bundle.load(str(world / "bundle")).preprocessing
    clf = onnx_classifier.OnnxClassifier(str(world / "bundle"))
    fast_transform = fast_preprocess.select("fast")[0]
    records = list(bundle_eval._records(shards, print))
    reference = np.stack([bundle_eval._prepare(r, prep)[0] for r in records])
    fast = np.stack([bundle_eval._prepare(r, prep, fast_transform)[0] for r in records])
    assert np.abs(fast - reference).max() <= 2.0 / 255 + 1e-5
    assert (clf.logits(fast).argmax(1) == clf.logits(reference).argmax(1)).all()
    result = bundle_eval.evaluate(str(world / "bundle"), str(world / "data"), write=False, log=lambda *_: None,
                                  preprocessing="fast")
    assert result["preprocessing"].startswith("fast") and result["examples"] == len(records)
    assert result["top1"] == bundle_eval.evaluate(str(world / "bundle"), str(world / "data"), write=False,
                                                  log=lambda *_: None)["top1"]


def test_cli_prints_and_writes_json_beside_the_bundle(world):
    result = run_cli("eval", "--bundle", world / "bundle", "--data", world / "data", "--batch-size", "7")
    assert result.returncode == 0, result.stderr[-2000:]
    printed = json.loads(result.stdout)
    written = str(world / "bundle") + ".eval-validation.json"
    assert printed["written_to"] == written and os.path.dirname(written) == str(world)
    with open(written) as f:
        assert json.load(f) == {k: v for k, v in printed.items() if k != "written_to"}
    assert printed["examples"] == 12 and printed["runtime"].startswith("onnxruntime ")
    assert printed["onnx_sha256"] == bundle.load(str(world / "bundle")).info.files["model.onnx"].sha256
    assert "ONNX Runtime): top-1 %.4f  top-5 %.4f  over 12 validation images" % (printed["top1"], printed["top5"]) \
        in result.stderr
    bundle.load(str(world / "bundle"), verify=True)     # nothing inside the bundle changed


def test_an_unwritable_result_file_loses_nothing(world, tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_eval, "result_path", lambda bundle_dir, split, precision: str(tmp_path / "gone" / "r.json"))
    logs = []
    result = bundle_eval.evaluate(str(world / "bundle"), str(world / "data"), log=logs.append)
    assert result["examples"] == 12 and "written_to" not in result
    assert any(line.startswith("warning: cannot write %s" % (tmp_path / "gone" / "r.json")) for line in logs)


def test_a_corrupt_record_is_skipped_and_counted_by_both(world, tmp_path):
    bad = tmp_path / "data"
    shutil.copytree(str(world / "data"), str(bad))
    meta = json.loads((bad / "dataset.json").read_text())
    shard = meta["splits"]["validation"]["shards"][0]
    path = str(bad / shard["file"])
    records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
    garbage = data.make_example(b"\xff\xd8 not really a jpeg", "JPEG", 64, 64, 2, "n02", "n02", "bad.jpg")
    with tf.io.TFRecordWriter(path) as writer:
        for r in records[:3] + [garbage.SerializeToString()] + records[3:]:
            writer.write(r)
    shard["records"] += 1
    meta["splits"]["validation"]["written"] += 1
    meta["splits"]["validation"]["num_examples"] += 1
    (bad / "dataset.json").write_text(json.dumps(meta))
    ckpt, served = _both(world, bad, batch_size=4)
    for result in (ckpt, served):
        assert (result["examples"], result["skipped_records"], result["expected_examples"]) == (12, 1, 13)
    assert (served["top1"], served["top5"]) == (ckpt["top1"], ckpt["top5"])


def test_a_damaged_shard_is_reported_not_fatal(world, tmp_path):
    bad = tmp_path / "data"
    shutil.copytree(str(world / "data"), str(bad))
    shard = str(bad / data.info(str(bad))["splits"]["validation"]["shards"][0]["file"])
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) // 2)
    logs = []
    result = bundle_eval.evaluate(str(world / "bundle"), str(bad), write=False, log=logs.append)
    assert 0 < result["examples"] < 12
    assert any(line.startswith("warning: %s is damaged" % shard) for line in logs)
    assert "warning: read %d examples (+0 skipped) but dataset.json lists 12" % result["examples"] in logs


def test_progress_shows_images_per_second(world):
    logs = []
    bundle_eval.evaluate(str(world / "bundle"), str(world / "data"), batch_size=2, progress_seconds=0, write=False,
                         log=logs.append)
    progress = [line for line in logs if line.startswith("eval: ")]
    assert progress and all(" img/s, ETA " in line and "/12 images (" in line for line in progress)


@pytest.mark.parametrize("case", ["classes", "image-size", "ema", "threads", "not-a-bundle", "no-data"])
def test_bad_input_is_one_line(world, tmp_path, case):
    base = ["eval", "--bundle", world / "bundle", "--data", world / "data"]
    if case == "classes":
        other = random_run(tmp_path / "run", num_classes=11, image_size=SIZE)
        export.export(other, str(tmp_path / "b11"), log=lambda *_: None)
        result = run_cli("eval", "--bundle", tmp_path / "b11", "--data", world / "data")
        assert_one_line_error(result, "bundle has 11 classes, data set", "has 4")
    elif case == "image-size":
        assert_one_line_error(run_cli(*base, "--image-size", "64"), "--image-size applies to --checkpoint")
    elif case == "ema":
        assert_one_line_error(run_cli(*base, "--no-ema"), "--ema/--no-ema applies to --checkpoint")
    elif case == "threads":
        assert_one_line_error(run_cli("eval", "--checkpoint", world / "run", "--data", world / "data", "--threads", "2"),
                              "--threads applies to --bundle")
    elif case == "not-a-bundle":
        assert_one_line_error(run_cli("eval", "--bundle", world / "run", "--data", world / "data"),
                              "is not a model bundle")
    else:
        assert_one_line_error(run_cli(*base[:3], "--data", tmp_path / "missing"), "no data set at")
