import errno
import os

import numpy as np
import pytest
import tensorflow as tf

from mbv3 import checkpoint, net, specs
from mbv3.errors import CheckpointError

from conftest import random_values

SMALL = dict(variant="small", multiplier=0.5, num_classes=7)


def _specs(variant="small", multiplier=0.5, num_classes=7):
    return specs.variable_specs(specs.resolve(variant, multiplier), num_classes)


def test_save_then_read_roundtrip(write_checkpoint):
    prefix, values = write_checkpoint(step=123, **SMALL)
    reader = checkpoint.Reader(os.path.dirname(prefix))  # a directory means its latest checkpoint
    assert reader.prefix == prefix and reader.step == 123
    got, report = checkpoint.read_values(prefix, _specs())
    assert report.step == 123 and not report.used_ema and not report.unexpected
    for name, value in values.items():
        np.testing.assert_array_equal(got[name], value)


def test_architecture_detection_for_every_variant():
    for variant in specs.VARIANTS:
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


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _saveV2_enospc(prefix, **kwargs):
    """What TF's SaveV2 does on a full disk (as seen on a full tmpfs): part of a `.tempstate` file, then this."""
    partial = "%s.data-00000-of-00001.tempstate123" % prefix
    with open(partial, "wb") as f:
        f.write(b"\0" * 1000)
    raise tf.errors.ResourceExhaustedError(None, None, "{{function_node __wrapped__SaveV2}} %s; No space left on "
                                           "device [Op:SaveV2]" % partial)


@pytest.mark.parametrize("where", ["writing the tensors", "renaming into place", "writing the state file"])
def test_failed_save_is_one_error_and_leaves_the_previous_latest(tmp_path, monkeypatch, where):
    values = random_values(**SMALL)
    checkpoint.save(str(tmp_path), 5, values)
    before = {n: (tmp_path / n).read_bytes() for n in os.listdir(str(tmp_path))}
    if where == "writing the tensors":
        monkeypatch.setattr(tf.raw_ops, "SaveV2", _saveV2_enospc)
    elif where == "renaming into place":
        real = os.replace
        monkeypatch.setattr(checkpoint.os, "replace", lambda a, b: _enospc() if b.endswith(".index") else real(a, b))
    else:
        monkeypatch.setattr(os, "fsync", _enospc)  # fileio's flush of the state file's temporary
    with pytest.raises(CheckpointError) as caught:
        checkpoint.save(str(tmp_path), 6, values)
    monkeypatch.undo()
    message = str(caught.value)
    assert message.startswith("cannot save checkpoint %s: " % (tmp_path / "model.ckpt-6")), message
    assert "No space left on device" in message and "model.ckpt-5 is still the latest" in message, message
    assert "\n" not in message and ".tempstate" not in message
    # no temporary, no half-placed files, the state file as it was
    assert {n: (tmp_path / n).read_bytes() for n in os.listdir(str(tmp_path))} == before
    assert checkpoint.latest(str(tmp_path)).endswith("model.ckpt-5")


def test_failed_save_on_a_full_file_system(tiny_fs):
    """A real full disk: TensorFlow's SaveV2 runs out of space, nothing is lost, and a save after
    space is freed works."""
    run = os.path.join(tiny_fs.path, "run")
    values = random_values(**SMALL)
    checkpoint.save(run, 5, values)
    before = tiny_fs.listing()
    assert tiny_fs.fill(leave=64 << 10) < 1 << 20
    with pytest.raises(CheckpointError, match=r"cannot save checkpoint %s: No space left on device "
                                              r"\(model.ckpt-5 is still the latest\)$" % (run + "/model.ckpt-6")):
        checkpoint.save(run, 6, values)
    assert tiny_fs.listing() == before
    assert checkpoint.latest(run) == os.path.join(run, "model.ckpt-5")
    tiny_fs.empty_filler()
    assert checkpoint.save(run, 6, values) == checkpoint.latest(run) == os.path.join(run, "model.ckpt-6")


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
    assert isinstance(arch, specs.Architecture) and arch.describe() == "small 0.5, 7 classes"
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


def test_latest_follows_a_moved_run_whose_state_file_has_absolute_paths(tmp_path):
    """What TF1's Saver writes by default, then the folder is moved or copied to another machine."""
    values = random_values(**SMALL)
    for step in (10, 20):
        checkpoint.save(str(tmp_path / "old"), step, values)
    os.rename(str(tmp_path / "old"), str(tmp_path / "new"))
    (tmp_path / "new" / "checkpoint").write_text(
        'model_checkpoint_path: "%s/model.ckpt-20"\n' % (tmp_path / "old") +
        "".join('all_model_checkpoint_paths: "%s/model.ckpt-%d"\n' % (tmp_path / "old", s) for s in (10, 20)))
    lines = []
    assert checkpoint.latest(str(tmp_path / "new"), lines.append) == str(tmp_path / "new" / "model.ckpt-20")
    assert lines == []


def test_latest_is_none_only_when_there_is_no_checkpoint(tmp_path):
    assert checkpoint.latest(str(tmp_path / "missing")) is None
    assert checkpoint.latest(str(tmp_path)) is None
    prefix = checkpoint.save(str(tmp_path), 7, random_values(**SMALL))
    assert checkpoint.latest(str(tmp_path)) == prefix


def _damage(prefix, how):
    data, index = prefix + ".data-00000-of-00001", prefix + ".index"
    if how == "truncated data":
        with open(data, "r+b") as f:
            f.truncate(os.path.getsize(data) // 2)
    elif how == "changed byte":  # TensorFlow's CRC32C per tensor notices
        with open(data, "r+b") as f:
            f.seek(os.path.getsize(data) // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
    elif how == "truncated index":
        with open(index, "r+b") as f:
            f.truncate(os.path.getsize(index) // 2)
    elif how == "empty index":
        open(index, "wb").close()
    elif how == "deleted":
        os.remove(data)
        os.remove(index)
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("damage", ["truncated data", "changed byte", "truncated index", "empty index", "deleted"])
def test_latest_passes_over_an_unreadable_newest_checkpoint(tmp_path, damage):
    values = random_values(**SMALL)
    for step in (10, 20, 30):
        checkpoint.save(str(tmp_path), step, values, keep=3)
    _damage(str(tmp_path / "model.ckpt-30"), damage)
    lines = []
    assert checkpoint.latest(str(tmp_path), lines.append) == str(tmp_path / "model.ckpt-20")
    assert len(lines) == 1 and lines[0].startswith("passing over unreadable checkpoint %s: " % (tmp_path / "model.ckpt-30"))
    assert "\n" not in lines[0]
    # a directory means the same everywhere: eval, export and inspect read the newest readable one
    assert checkpoint.Reader(str(tmp_path)).step == 20
    # an explicit prefix means exactly that checkpoint
    if damage != "deleted":
        with pytest.raises(CheckpointError, match="model.ckpt-30"):
            checkpoint.read_values(str(tmp_path / "model.ckpt-30"), _specs())


def test_latest_takes_checkpoints_by_step_when_the_state_file_is_garbled(tmp_path):
    values = random_values(**SMALL)
    for step in (10, 20, 30):
        checkpoint.save(str(tmp_path), step, values, keep=3)
    (tmp_path / "checkpoint").write_text("model_checkpoint_path: {{{ not a proto\n")
    _damage(str(tmp_path / "model.ckpt-30"), "truncated data")
    lines = []
    assert checkpoint.latest(str(tmp_path), lines.append) == str(tmp_path / "model.ckpt-20")
    assert "unreadable checkpoint state file" in lines[0] and "model.ckpt-30" in lines[1]
    checkpoint.save(str(tmp_path), 40, values, keep=3)  # the next save writes a good state file
    assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "model.ckpt-40")


@pytest.mark.parametrize("damage", ["every checkpoint unreadable", "only a state file"])
def test_latest_refuses_checkpoint_files_of_which_none_is_readable(tmp_path, damage):
    """Never "no checkpoint, start at step 0" while a run's files are there."""
    values = random_values(**SMALL)
    for step in (10, 20):
        checkpoint.save(str(tmp_path), step, values)
    for step in (10, 20):
        _damage(str(tmp_path / ("model.ckpt-%d" % step)), "truncated data" if damage.startswith("every") else "deleted")
    with pytest.raises(CheckpointError, match="holds checkpoint files but no readable checkpoint") as caught:
        checkpoint.latest(str(tmp_path), lambda line: None)
    assert "(model.ckpt-20: " in str(caught.value)   # the newest, and why
    assert ("missing (no .index file)" in str(caught.value)) == (damage == "only a state file")


def test_init_refuses_a_directory_with_checkpoint_files_readable_or_not(tmp_path):
    from conftest import assert_one_line_error, run_cli
    for step in (10, 20):
        checkpoint.save(str(tmp_path / "run"), step, random_values(**SMALL))
    _damage(str(tmp_path / "run" / "model.ckpt-20"), "truncated data")
    (tmp_path / "run" / "checkpoint").write_text("garbage {")
    before = sorted(os.listdir(str(tmp_path / "run")))
    result = run_cli("init", "--model-dir", str(tmp_path / "run"))
    assert_one_line_error(result, "%s already holds checkpoint files (model.ckpt-20)" % (tmp_path / "run"))
    assert sorted(os.listdir(str(tmp_path / "run"))) == before


def test_temporary_names_are_recognised_exactly():
    ours = [".tmp-model.ckpt-60-1234.index", ".tmp-model.ckpt-60-1234.data-00000-of-00001",
            ".tmp-model.ckpt-60-1234.data-00000-of-00001.tempstate8443426958102744207", "checkpoint.tmp-77"]
    theirs = ["model.ckpt-60.index", ".tmp-notes", ".tmp-model.ckpt-60.index", "checkpoint", "config.yaml.tmp-77",
              "checkpoint.tmp-", "checkpoint.tmp-77.bak", "my.tmp-model.ckpt-60-1234.index"]
    assert [n for n in ours + theirs if checkpoint.is_temporary(n)] == ours
