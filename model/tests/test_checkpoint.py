import os

import numpy as np
import pytest
import tensorflow as tf

from mbv3 import checkpoint, net
from mbv3.errors import CheckpointError

from conftest import random_values

SMALL = dict(variant="small", multiplier=0.5, num_classes=7)


def _specs(variant="small", multiplier=0.5, num_classes=7):
    return net.variable_specs(net.resolve(variant, multiplier), num_classes)


def test_save_then_read_roundtrip(write_checkpoint):
    prefix, values = write_checkpoint(step=123, **SMALL)
    reader = checkpoint.Reader(os.path.dirname(prefix))  # a directory means its latest checkpoint
    assert reader.prefix == prefix and reader.step == 123
    got, report = checkpoint.read_values(prefix, _specs())
    assert report.step == 123 and not report.used_ema and not report.unexpected
    for name, value in values.items():
        np.testing.assert_array_equal(got[name], value)


def test_architecture_detection_for_every_variant():
    for variant in net.VARIANTS:
        for multiplier in (0.75, 1.0):
            shapes = {n: s.shape for n, s in _specs(variant, multiplier, 1001).items()}
            shapes["global_step"] = ()
            arch = checkpoint.detect_architecture(shapes)
            assert (arch.variant, arch.multiplier, arch.num_classes) == (variant, multiplier, 1001)
    shapes = {n: s.shape for n, s in _specs("large", 1.0, 1001).items()}
    del shapes["MobilenetV3/Conv_1/weights"]
    with pytest.raises(CheckpointError, match="match no MobileNetV3 variant"):
        checkpoint.detect_architecture(shapes)


def test_keeps_last_k_and_state_names_latest(tmp_path):
    values = random_values(**SMALL)
    for step in (10, 20, 30, 40):
        checkpoint.save(str(tmp_path), step, values, keep=2)
    names = sorted(os.listdir(str(tmp_path)))
    assert names == ["checkpoint", "model.ckpt-30.data-00000-of-00001", "model.ckpt-30.index",
                     "model.ckpt-40.data-00000-of-00001", "model.ckpt-40.index"]
    state = tf.train.get_checkpoint_state(str(tmp_path))
    assert os.path.basename(state.model_checkpoint_path) == "model.ckpt-40"
    assert [os.path.basename(p) for p in state.all_model_checkpoint_paths] == ["model.ckpt-30", "model.ckpt-40"]


def test_failed_save_leaves_previous_latest_intact(tmp_path, monkeypatch):
    values = random_values(**SMALL)
    checkpoint.save(str(tmp_path), 5, values)

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(checkpoint.os, "replace", crash)
    with pytest.raises(RuntimeError):
        checkpoint.save(str(tmp_path), 6, values)
    monkeypatch.undo()
    assert not [n for n in os.listdir(str(tmp_path)) if n.startswith(".tmp")]  # no temporary leftovers
    assert checkpoint.Reader(str(tmp_path)).step == 5


def test_ema_shadows(write_checkpoint):
    specs = _specs()
    raw = random_values(seed=1, **SMALL)
    shadows = {n + checkpoint.EMA_SUFFIX: v + 1 for n, v in raw.items()}
    prefix, _ = write_checkpoint(extra=dict(shadows, **raw), **SMALL)
    got, report = checkpoint.read_values(prefix, specs, use_ema=True)
    assert report.used_ema
    name = "MobilenetV3/Conv/weights"
    np.testing.assert_array_equal(got[name], raw[name] + 1)
    got, report = checkpoint.read_values(prefix, specs)  # auto: shadows present, so used
    assert report.used_ema
    got, report = checkpoint.read_values(prefix, specs, use_ema=False)
    np.testing.assert_array_equal(got[name], raw[name])
    assert checkpoint.Reader(prefix).has_ema
    assert not report.unexpected  # shadows are recognised, not "unexpected"


def test_ema_requested_but_absent(write_checkpoint):
    prefix, _ = write_checkpoint(**SMALL)
    with pytest.raises(CheckpointError, match="no EMA shadow for MobilenetV3/"):
        checkpoint.read_values(prefix, _specs(), use_ema=True)


def test_shape_mismatch_names_the_variable(write_checkpoint):
    prefix, _ = write_checkpoint(**SMALL)
    with pytest.raises(CheckpointError, match=r"shape mismatch for MobilenetV3/Logits/Conv2d_1c_1x1/weights: "
                                              r"checkpoint has \[1, 1, 1024, 7\], model expects \[1, 1, 1024, 12\]"):
        checkpoint.read_values(prefix, _specs(num_classes=12))
    wide = _specs(multiplier=1.0)
    with pytest.raises(CheckpointError, match="shape mismatch for MobilenetV3/Conv/weights"):
        checkpoint.read_values(prefix, wide)


def test_reinitialise_classifier_for_other_classes(write_checkpoint):
    prefix, values = write_checkpoint(**SMALL)
    model = net.MobileNetV3("small", 0.5, num_classes=12)
    fresh = model.variables["MobilenetV3/Logits/Conv2d_1c_1x1/weights"].numpy().copy()
    report = checkpoint.load_into(model.variables, model.specs, prefix, reinit_classifier=True)
    assert sorted(report.reinitialized) == ["MobilenetV3/Logits/Conv2d_1c_1x1/biases",
                                            "MobilenetV3/Logits/Conv2d_1c_1x1/weights"]
    np.testing.assert_array_equal(model.variables["MobilenetV3/Conv/weights"].numpy(), values["MobilenetV3/Conv/weights"])
    np.testing.assert_array_equal(model.variables["MobilenetV3/Logits/Conv2d_1c_1x1/weights"].numpy(), fresh)


def test_missing_and_unexpected_variables(write_checkpoint):
    values = random_values(**SMALL)
    del values["MobilenetV3/expanded_conv_2/project/weights"]
    prefix = checkpoint.save(os.path.join(os.path.dirname(write_checkpoint()[0]), "partial"), 1, values)
    with pytest.raises(CheckpointError, match="lacks 1 model variables .first: MobilenetV3/expanded_conv_2/project/weights"):
        checkpoint.read_values(prefix, _specs())
    values = random_values(**SMALL)
    values["MobilenetV3/Extra/weights"] = np.zeros(3, np.float32)
    values["MobilenetV3/Conv/weights/Momentum"] = np.zeros((3, 3, 3, 8), np.float32)  # an optimizer slot
    prefix = checkpoint.save(os.path.join(os.path.dirname(prefix), "extra"), 1, values)
    _, report = checkpoint.read_values(prefix, _specs())
    assert report.unexpected == ["MobilenetV3/Extra/weights"]


def test_missing_and_corrupt_checkpoints(tmp_path, write_checkpoint):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        checkpoint.Reader(str(tmp_path / "nope" / "model.ckpt-1"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint found in directory"):
        checkpoint.Reader(str(tmp_path / "empty"))
    prefix, _ = write_checkpoint(**SMALL)
    with open(prefix + ".index", "wb") as f:
        f.write(b"this is not a checkpoint index")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        checkpoint.read_values(prefix, _specs())


def test_truncated_data_file(write_checkpoint):
    prefix, _ = write_checkpoint(**SMALL)
    data = prefix + ".data-00000-of-00001"
    size = os.path.getsize(data)
    with open(data, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(CheckpointError):
        checkpoint.read_values(prefix, _specs())


def test_interoperates_with_tf1_saver(tmp_path):
    """What slim's tools do: graph-mode variables by name, tf.compat.v1.train.Saver save/restore."""
    values = random_values(**SMALL)
    graph = tf.Graph()
    with graph.as_default():
        for name, value in values.items():
            tf.compat.v1.get_variable(name, initializer=value)
        step = tf.compat.v1.train.get_or_create_global_step()
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(step.assign(42))
            saver.save(sess, str(tmp_path / "slim" / "model.ckpt"), global_step=step)
    reader = checkpoint.Reader(str(tmp_path / "slim"))
    assert reader.step == 42
    arch = checkpoint.detect_architecture(reader.shapes)
    assert (arch.variant, arch.multiplier, arch.num_classes) == ("small", 0.5, 7)
    got, _ = checkpoint.read_values(reader.prefix, _specs())
    for name in values:
        np.testing.assert_array_equal(got[name], values[name])

    # and the other way: what we write, a TF1 Saver restores by name
    shifted = {n: v * 2 for n, v in values.items()}
    ours = checkpoint.save(str(tmp_path / "ours"), 7, shifted)
    graph = tf.Graph()
    with graph.as_default():
        variables = {n: tf.compat.v1.get_variable(n, shape=v.shape, dtype=tf.float32) for n, v in values.items()}
        step = tf.compat.v1.train.get_or_create_global_step()
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            saver.restore(sess, tf.train.latest_checkpoint(str(tmp_path / "ours")))
            assert sess.run(step) == 7
            restored = sess.run(variables)
    assert ours.endswith("model.ckpt-7")
    for name in values:
        np.testing.assert_array_equal(restored[name], shifted[name])


def test_latest_is_none_only_when_there_is_no_checkpoint(tmp_path):
    assert checkpoint.latest(str(tmp_path / "missing")) is None
    assert checkpoint.latest(str(tmp_path)) is None
    prefix = checkpoint.save(str(tmp_path), 7, random_values(**SMALL))
    assert checkpoint.latest(str(tmp_path)) == prefix


@pytest.mark.parametrize("damage", ["garbled state file", "state names a deleted checkpoint"])
def test_latest_refuses_checkpoint_files_it_cannot_resolve(tmp_path, damage):
    values = random_values(**SMALL)
    for step in (10, 20, 30):
        checkpoint.save(str(tmp_path), step, values, keep=3)
    if damage == "garbled state file":
        (tmp_path / "checkpoint").write_text("model_checkpoint_path: {{{ not a proto\n")
    else:   # two older ones remain: which to resume is a guess, so it is the user's call
        for name in os.listdir(str(tmp_path)):
            if name.startswith("model.ckpt-30"):
                os.remove(str(tmp_path / name))
    with pytest.raises(CheckpointError, match="holds checkpoint files but no checkpoint to resume"):
        checkpoint.latest(str(tmp_path))


def test_init_on_a_damaged_run_stops_instead_of_overwriting_it(tmp_path):
    """`mbv3 init` and the trainer's resume ask the same checkpoint.latest."""
    from conftest import assert_one_line_error, run_cli
    for step in (10, 20):
        checkpoint.save(str(tmp_path / "run"), step, random_values(**SMALL))
    (tmp_path / "run" / "checkpoint").write_text("garbage {")
    before = sorted(os.listdir(str(tmp_path / "run")))
    result = run_cli("init", "--model-dir", str(tmp_path / "run"))
    assert_one_line_error(result, "holds checkpoint files but no checkpoint to resume")
    assert sorted(os.listdir(str(tmp_path / "run"))) == before
