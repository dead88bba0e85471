import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from mbv3 import bundle, checkpoint, config, export, net, specs, tf_preprocess, onnx_classifier
from mbv3.errors import MbV3Error
from random_models import random_run

from conftest import assert_one_line_error, random_values, run_cli


@pytest.fixture(scope="module")
def large_bundle(tmp_path_factory):
    """V3_LARGE 1.0, 1001 classes, random weights with non-trivial batch-norm statistics."""
    root = tmp_path_factory.mktemp("export")
    values = random_values("large", 1.0, 1001, seed=3)
    prefix = checkpoint.save(str(root / "run"), 5000, values)
    meta = export.export(prefix, str(root / "bundle"), log=lambda *_: None)
    return root, prefix, values, meta


def _tf_model(values, variant="large", multiplier=1.0, num_classes=1001, numerics=None):
    model = net.MobileNetV3(variant, multiplier, num_classes, numerics)
    for name, value in values.items():
        model.variables[name].assign(value)
    return model


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_onnx_and_frozen_graph_match_the_tf_model(large_bundle, batch):
    root, _, values, _ = large_bundle
    model = _tf_model(values)
    images = np.random.default_rng(batch).uniform(-1, 1, (batch, 224, 224, 3)).astype(np.float32)
    expected = model(images).numpy()
    scale = np.abs(expected).max()
    assert scale > 1.0  # real signal, not near-zero logits

    onnx_logits = onnx_classifier.OnnxClassifier(str(root / "bundle")).logits(images)
    graph_def = tf.compat.v1.GraphDef()
    with open(str(root / "bundle" / "model.pb"), "rb") as f:
        graph_def.ParseFromString(f.read())
    frozen_logits = export.run_frozen(graph_def, images)
    assert onnx_logits.shape == frozen_logits.shape == (batch, 1001)
    assert np.abs(onnx_logits - expected).max() <= 1e-4 * scale
    assert np.abs(frozen_logits - expected).max() <= 1e-4 * scale


def test_frozen_graph_contract(large_bundle):
    root = large_bundle[0]
    graph_def = tf.compat.v1.GraphDef()
    with open(str(root / "bundle" / "model.pb"), "rb") as f:
        graph_def.ParseFromString(f.read())
    nodes = {n.name: n for n in graph_def.node}
    placeholder = nodes["input"]
    assert placeholder.op == "Placeholder"
    assert placeholder.attr["dtype"].type == tf.float32.as_datatype_enum
    assert [d.size for d in placeholder.attr["shape"].shape.dim] == [-1, 224, 224, 3]
    assert nodes["logits"].op == "Identity"
    assert set(n.op for n in graph_def.node) <= export.TF115_OPS
    assert not [n for n in graph_def.node if "Variable" in n.op]


def test_metadata_labels_and_hashes(large_bundle):
    root, prefix, _, meta = large_bundle
    loaded = bundle.load(str(root / "bundle"), verify=True)
    assert loaded.metadata == meta
    assert meta["source"] == {"checkpoint": prefix, "step": 5000, "weights": "raw"}
    assert meta["architecture"]["variant"] == "large" and meta["architecture"]["trainable_parameters"] == 5484313
    assert meta["input"] == {"name": "input", "shape": [-1, 224, 224, 3], "layout": "NHWC", "dtype": "float32",
                             "range": [-1.0, 1.0]}
    assert meta["output"]["name"] == "logits" and meta["output"]["num_classes"] == 1001
    assert meta["labels"]["label_offset"] == 1
    assert meta["preprocessing"]["crop_fraction"] == 0.875 and meta["preprocessing"]["resize"] == "bilinear"
    assert meta["verification"]["onnx_vs_frozen_graph"]["relative"] <= 1e-4
    assert set(meta["files"]) == {"model.onnx", "model.pb", "labels.txt"}
    labels = loaded.labels
    assert len(labels) == 1001 and labels[0] == "background"
    assert labels[1].startswith("tench") and labels[282] == "tabby, tabby cat" and labels[1000].startswith("toilet tissue")
    with open(str(root / "bundle" / "labels.txt")) as f:
        assert len(f.read().splitlines()) == 1001


def test_onnx_graph_has_no_layout_transposes_inside(large_bundle):
    import onnx
    model = onnx.load(str(large_bundle[0] / "bundle" / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Transpose") <= 1       # only the NHWC input's; one per conv would be ~60
    assert ops.count("Conv") == 64 and "BatchNormalization" not in ops   # batch norm folded into convs


def test_onnx_has_dynamic_batch_and_plain_names(large_bundle):
    clf = onnx_classifier.OnnxClassifier(str(large_bundle[0] / "bundle"))
    inp, out = clf.session.get_inputs()[0], clf.session.get_outputs()[0]
    assert inp.name == "input" and out.name == "logits"
    assert inp.shape[0] == "batch" and inp.shape[1:] == [224, 224, 3]


def test_ema_weights_are_exported(tmp_path):
    raw = random_values("small", 0.75, 11, seed=4)
    shadows = {n + checkpoint.EMA_SUFFIX: v * 0.5 for n, v in raw.items()}
    prefix = checkpoint.save(str(tmp_path / "run"), 9, dict(raw, **shadows))
    meta = export.export(prefix, str(tmp_path / "ema"), image_size=96, log=lambda *_: None)
    assert meta["source"]["weights"] == "ema"
    meta_raw = export.export(prefix, str(tmp_path / "raw"), use_ema=False, image_size=96, log=lambda *_: None)
    assert meta_raw["source"]["weights"] == "raw"
    images = np.random.default_rng(0).uniform(-1, 1, (2, 96, 96, 3)).astype(np.float32)
    halved = _tf_model({n: v * 0.5 for n, v in raw.items()}, "small", 0.75, 11)(images).numpy()
    got = onnx_classifier.OnnxClassifier(str(tmp_path / "ema")).logits(images)
    np.testing.assert_allclose(got, halved, atol=1e-4 * np.abs(halved).max())
    assert len(bundle.load(str(tmp_path / "ema")).labels) == 11


def test_the_runs_batch_norm_epsilon_is_exported(tmp_path):
    """A run trained with another bn_epsilon is frozen with it: inference normalises with it too."""
    prefix = random_run(tmp_path / "run", variant="small", multiplier=0.35, num_classes=11, image_size=32,
                        overrides=["model.bn_epsilon=0.5"])
    export.export(prefix, str(tmp_path / "b"), log=lambda *_: None)
    values, _ = checkpoint.read_values(prefix, specs.variable_specs(specs.resolve("small", 0.35), 11))
    images = np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    run_eps = _tf_model(values, "small", 0.35, 11, net.Numerics(bn_epsilon=0.5))(images).numpy()
    default_eps = _tf_model(values, "small", 0.35, 11)(images).numpy()
    got = onnx_classifier.OnnxClassifier(str(tmp_path / "b")).logits(images)
    scale = np.abs(run_eps).max()
    np.testing.assert_allclose(got, run_eps, atol=1e-4 * scale)
    assert np.abs(run_eps - default_eps).max() > 1e-2 * scale   # the epsilon matters at this size


def test_reexport_replaces_an_earlier_bundle(tmp_path):
    prefix = checkpoint.save(str(tmp_path / "run"), 1, random_values("small", 0.35, 3))
    out = str(tmp_path / "b")
    export.export(prefix, out, image_size=64, log=lambda *_: None)
    meta = export.export(prefix, out, image_size=64, version="2", log=lambda *_: None)
    assert bundle.load(out, verify=True).metadata["version"] == "2" == meta["version"]
    assert sorted(os.listdir(str(tmp_path))) == ["b", "run"]


def test_refusals_leave_nothing_behind(tmp_path):
    prefix = checkpoint.save(str(tmp_path / "run"), 1, random_values("small", 0.35, 3))
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(MbV3Error, match="not a model bundle; refusing"):
        export.export(prefix, str(tmp_path / "precious"), log=lambda *_: None)
    with pytest.raises(MbV3Error, match="holds MobileNetV3 small 0.35, 3 classes, not large"):
        export.export(prefix, str(tmp_path / "x"), variant="large", log=lambda *_: None)
    with pytest.raises(MbV3Error, match="has a 3-class classifier, not 1001"):
        export.export(prefix, str(tmp_path / "x"), num_classes=1001, log=lambda *_: None)
    assert sorted(os.listdir(str(tmp_path))) == ["precious", "run"]
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


def test_failure_midway_removes_the_partial_bundle(tmp_path, monkeypatch):
    prefix = checkpoint.save(str(tmp_path / "run"), 1, random_values("small", 0.35, 3))

    def broken(*args, **kwargs):
        raise MbV3Error("ONNX model disagrees with the frozen graph")
    monkeypatch.setattr(export, "verify", broken)
    with pytest.raises(MbV3Error):
        export.export(prefix, str(tmp_path / "out"), image_size=64, log=lambda *_: None)
    assert sorted(os.listdir(str(tmp_path))) == ["run"]


def test_labels_file_and_labels_beside_the_checkpoint(tmp_path):
    prefix = checkpoint.save(str(tmp_path / "run"), 1, random_values("small", 0.35, 3))
    (tmp_path / "mine.txt").write_text("cat\ndog\n")
    meta = export.export(prefix, str(tmp_path / "b1"), image_size=64, labels_file=str(tmp_path / "mine.txt"),
                         log=lambda *_: None)
    assert bundle.load(str(tmp_path / "b1")).labels == ["background", "cat", "dog"]
    assert meta["labels"]["label_offset"] == 1
    (tmp_path / "run" / "labels.txt").write_text("none\nleft\nright\n")
    meta = export.export(prefix, str(tmp_path / "b2"), image_size=64, log=lambda *_: None)
    assert bundle.load(str(tmp_path / "b2")).labels == ["none", "left", "right"]
    assert meta["labels"]["label_offset"] == 0
    (tmp_path / "bad.txt").write_text("one\n")
    with pytest.raises(MbV3Error, match="has 1 labels; the model has 3 classes"):
        export.export(prefix, str(tmp_path / "b3"), image_size=64, labels_file=str(tmp_path / "bad.txt"),
                      log=lambda *_: None)


@pytest.mark.parametrize("case", ["missing", "corrupt", "variant", "unwritable", "not-a-bundle-dir"])
def test_cli_errors_are_one_line(tmp_path, case):
    prefix = checkpoint.save(str(tmp_path / "run"), 1, random_values("small", 0.35, 3))
    out = tmp_path / "bundle"
    if case == "missing":
        result = run_cli("export", "--checkpoint", tmp_path / "nothing", "--output", out)
        assert_one_line_error(result, "no checkpoint at")
    elif case == "corrupt":
        with open(prefix + ".index", "wb") as f:
            f.write(os.urandom(200))
        result = run_cli("export", "--checkpoint", prefix, "--output", out)
        assert_one_line_error(result, "cannot read checkpoint")
    elif case == "variant":
        result = run_cli("export", "--checkpoint", prefix, "--output", out, "--variant", "large")
        assert_one_line_error(result, "not large")
    elif case == "unwritable":
        (tmp_path / "afile").write_text("")
        result = run_cli("export", "--checkpoint", prefix, "--output", tmp_path / "afile" / "bundle")
        assert_one_line_error(result, "cannot write to")
    else:
        out.mkdir()
        (out / "x").write_text("")
        result = run_cli("export", "--checkpoint", prefix, "--output", out)
        assert_one_line_error(result, "refusing to overwrite")
    leftovers = [n for n in os.listdir(str(tmp_path)) if n.startswith(".") or n == "bundle" and case != "not-a-bundle-dir"]
    assert not leftovers


# --- a checkpoint in its training run's folder: export takes what the run trained with ------------

ANIMALS = ["background", "cat", "dog", "eel"]


@pytest.fixture
def run48(tmp_path):
    """A run trained at 48x48 with EMA weights and its own labels (as `mbv3 train` leaves the folder)."""
    return random_run(tmp_path / "run", num_classes=4, image_size=48, step=30, ema=True, labels=ANIMALS)


def test_export_takes_size_preprocessing_weights_and_labels_from_the_run(run48, tmp_path):
    logs = []
    meta = export.export(str(tmp_path / "run"), str(tmp_path / "b"), log=logs.append)   # no flags at all
    assert meta["input"]["shape"] == [-1, 48, 48, 3]
    assert meta["preprocessing"] == dataclasses.asdict(tf_preprocess.eval_record(48))
    assert meta["preprocessing"]["size"] == [48, 48] and meta["preprocessing"]["crop_fraction"] == 0.875
    assert meta["source"] == {"checkpoint": run48, "step": 30, "weights": "ema", "run": str(tmp_path / "run")}
    assert bundle.load(str(tmp_path / "b"), verify=True).labels == ANIMALS
    assert onnx_classifier.OnnxClassifier(str(tmp_path / "b")).session.get_inputs()[0].shape[1:] == [48, 48, 3]
    assert "from the run %s: input 48x48, central 87.5%% crop, EMA weights, 4 labels" % (tmp_path / "run") in logs
    # flags that agree with the run are no contradiction (the labels file may leave out background)
    (tmp_path / "same.txt").write_text("cat\ndog\neel\n")
    meta = export.export(run48, str(tmp_path / "b"), image_size=48, use_ema=True, labels_file=str(tmp_path / "same.txt"),
                         log=lambda *_: None)
    assert "differs_from_run" not in meta["source"] and meta["preprocessing"]["size"] == [48, 48]


@pytest.mark.parametrize("case", ["size", "weights", "labels"])
def test_a_flag_that_contradicts_the_run_is_an_error_naming_both_values(run48, tmp_path, case):
    (tmp_path / "other.txt").write_text("cat\nfox\neel\n")
    flags, fragments = {
        "size": (dict(image_size=224), ["--image-size 224", "data.image_size: 48"]),
        "weights": (dict(use_ema=False), ["--no-ema", "has EMA weights"]),
        "labels": (dict(labels_file=str(tmp_path / "other.txt")), ["class 2 is 'fox'", "but 'dog' in the run's"]),
    }[case]
    with pytest.raises(MbV3Error) as error:
        export.export(run48, str(tmp_path / "b"), log=lambda *_: None, **flags)
    for fragment in fragments + ["contradicts the run", "--override-run"]:
        assert fragment in str(error.value)
    assert "\n" not in str(error.value) and not (tmp_path / "b").exists()


def test_cli_contradiction_is_one_line_and_the_override_is_recorded(run48, tmp_path):
    out = tmp_path / "bundle"
    result = run_cli("export", "--checkpoint", tmp_path / "run", "--output", out, "--image-size", "64")
    assert_one_line_error(result, "--image-size 64 contradicts the run", "data.image_size: 48", "--override-run")
    assert not out.exists()
    (tmp_path / "other.txt").write_text("cat\nfox\neel\n")
    result = run_cli("export", "--checkpoint", tmp_path / "run", "--output", out, "--image-size", "64", "--no-ema",
                     "--labels", tmp_path / "other.txt", "--override-run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "overridden with --override-run: labels %s instead of %s" % (tmp_path / "other.txt", tmp_path / "run" / "labels.txt") \
        in result.stderr and "preprocessing.size 64x64 instead of 48x48, source.weights raw instead of ema" in result.stderr
    loaded = bundle.load(str(out), verify=True)
    assert loaded.metadata["source"]["run"] == str(tmp_path / "run")
    assert loaded.metadata["source"]["differs_from_run"] == {
        "preprocessing.size": {"run": [48, 48], "bundle": [64, 64]},
        "source.weights": {"run": "ema", "bundle": "raw"},
        "labels": {"run": str(tmp_path / "run" / "labels.txt"), "bundle": str(tmp_path / "other.txt")}}
    assert loaded.info.source.weights == "raw" and loaded.labels[2] == "fox" and loaded.preprocessing.size == [64, 64]


def test_a_config_that_does_not_describe_the_checkpoint_is_refused(run48, tmp_path):
    config.load("smoke", ["model.multiplier=0.75", "data.image_size=48"]).save(str(tmp_path / "run"))
    with pytest.raises(MbV3Error, match="holds MobileNetV3 small 0.35, but .*config.yaml says small 0.75: it is not this "
                                        "checkpoint's run"):
        export.export(run48, str(tmp_path / "b"), override_run=True, log=lambda *_: None)
    config.load("smoke", ["data.image_size=48", "model.num_classes=1001"]).save(str(tmp_path / "run"))
    with pytest.raises(MbV3Error, match="4-class classifier, but .* says model.num_classes: 1001"):
        export.export(run48, str(tmp_path / "b"), log=lambda *_: None)
    assert not (tmp_path / "b").exists()


def test_a_bare_checkpoint_keeps_the_defaults_and_says_so(tmp_path):
    checkpoint.save(str(tmp_path / "ema"), 540000, random_values("small", 0.35, 5), basename="model")
    result = run_cli("export", "--checkpoint", tmp_path / "ema", "--output", tmp_path / "b")
    assert result.returncode == 0, result.stderr[-2000:]
    stated = [line for line in result.stderr.splitlines() if line.startswith("bare checkpoint")]
    assert stated == ["bare checkpoint (no config.yaml beside it): input 224x224 (the default; --image-size sets "
                      "another), TF-slim's eval preprocessing (central 87.5% crop, pixels to [-1, 1]), raw weights"]
    meta = bundle.load(str(tmp_path / "b")).metadata
    assert meta["preprocessing"]["size"] == [224, 224] and "run" not in meta["source"]
    meta = export.export(str(tmp_path / "ema"), str(tmp_path / "b"), image_size=96, log=lambda *_: None)
    assert meta["input"]["shape"] == [-1, 96, 96, 3] and "differs_from_run" not in meta["source"]


def test_model_json_is_plain_json(large_bundle):
    with open(str(large_bundle[0] / "bundle" / "model.json")) as f:
        assert json.load(f)["format"] == "mbv3-bundle"
