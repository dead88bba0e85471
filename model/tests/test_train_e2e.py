"""The training system as a user drives it, through the `mbv3` command in subprocesses, on real data
nobody here made: scikit-learn's handwritten digits written as an ImageNet-layout image folder."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from mbv3 import checkpoint, data, digits

from conftest import assert_one_line_error, run_cli

CLI = [sys.executable, "-c", "import sys; from mbv3.cli import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def digits_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    assert digits.write_digits_folder(str(root / "images"), size=64) == 1797
    result = run_cli("data", "build", "--images", root / "images", "--output", root / "data", "--val-split", "0.2")
    assert result.returncode == 0, result.stderr
    meta = json.loads((root / "data" / "dataset.json").read_text())
    assert meta["num_classes"] == 11
    return root


def test_digits_converge_and_serve(digits_data, tmp_path):
    """data build -> train (digits-cpu recipe) -> eval >= 0.90 held-out top-1 -> export -> predict."""
    run = tmp_path / "run"
    start = time.time()
    result = run_cli("train", "--config", "digits-cpu", "--data", digits_data / "data", "--model-dir", run, timeout=900)
    seconds = time.time() - start
    assert result.returncode == 0, result.stderr[-3000:]
    progress = [l for l in result.stderr.splitlines() if l.startswith("step ")]
    assert progress and "step 660/660 (100.0%)" in progress[-1]
    for field in ("loss ", "top1 ", "lr ", "img/s", "ETA "):
        assert field in progress[0]
    assert (run / "config.yaml").exists() and (run / "labels.txt").exists()
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(str(run / "train")))

    result = run_cli("eval", "--checkpoint", run, "--data", digits_data / "data")
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = json.loads(result.stdout)
    assert evaluation["examples"] == data.num_examples(str(digits_data / "data"), "validation") == 359
    assert evaluation["weights"] == "ema" and evaluation["image_size"] == 64
    assert evaluation["top1"] >= 0.90, evaluation
    assert os.path.exists(evaluation["written_to"])
    print("digits: trained in %.0f s, held-out top-1 %.4f" % (seconds, evaluation["top1"]))

    # exported with no flags, the bundle is what the run trained (64x64) and scores what eval reported,
    # through the serving path (Pillow + NumPy preprocessing, ONNX Runtime)
    result = run_cli("export", "--checkpoint", run, "--output", tmp_path / "bundle")
    assert result.returncode == 0, result.stderr[-2000:]
    meta = json.loads((tmp_path / "bundle" / "model.json").read_text())
    assert meta["preprocessing"]["size"] == [64, 64] and meta["input"]["shape"] == [-1, 64, 64, 3]
    assert meta["source"]["run"] == str(run) and meta["source"]["weights"] == "ema"
    served = _bundle_eval(tmp_path / "bundle", digits_data / "data")
    assert served["examples"] == evaluation["examples"] and served["skipped_records"] == 0
    assert abs(served["top1"] - evaluation["top1"]) <= 0.005, (served, evaluation)
    print("digits: bundle eval top-1 %.4f (checkpoint eval %.4f)" % (served["top1"], evaluation["top1"]))
    fast = _bundle_eval(tmp_path / "bundle", digits_data / "data", "--preprocessing", "fast")   # the service's path
    assert fast["preprocessing"].startswith("fast") and fast["examples"] == served["examples"]
    assert abs(fast["top1"] - served["top1"]) <= 0.005, (fast, served)
    # INT8 (issue 23): quantized with NNCF on 300 train images and recorded for both engines. --force, because
    # the drop depends on the run (docs/benchmarks.md: -0.28 to 0.00 points with full bias correction on three
    # digits-cpu runs, 1.11 on a fourth, past the 1-point threshold); past 2.5 points or an agreement under 0.97
    # would be a regression here.
    result = run_cli("quantize", "--bundle", tmp_path / "bundle", "--precision", "int8", "--data",
                     digits_data / "data", "--output", tmp_path / "int8", "--force")
    assert result.returncode == 0, result.stderr[-3000:]
    int8 = json.loads(result.stdout)
    assert [v["engine"] for v in int8] == ["openvino", "onnxruntime"], result.stderr[-2000:]
    for variant in int8:
        assert variant["top1_drop"] <= 2.5 and variant["top1_agreement"] >= 0.97, variant
        assert variant["forced"] == (variant["top1_drop"] > 1.0) and variant["calibration"]["images"] == 300
        assert variant["examples"] == served["examples"] and abs(variant["float32"]["top1"] - served["top1"]) <= 0.003
        print("digits: int8 on %s top-1 %.4f (float32 %.4f), agreement %.4f, batch 8 %.0f vs %.0f img/s" % (
            variant["engine"], variant["reduced"]["top1"], variant["float32"]["top1"], variant["top1_agreement"],
            variant["speed"]["reduced"], variant["speed"]["float32"]))
    held_out = _validation_files(digits_data)[:20]
    for bundle_dir, flags in ((tmp_path / "bundle", ()), (tmp_path / "int8", ("--precision", "int8"))):
        result = run_cli("predict", "--bundle", bundle_dir, "--top-k", "1", *flags, *[p for p, _ in held_out])
        assert result.returncode == 0, result.stderr[-2000:]
        predicted = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("  1.")]
        correct = sum(p == label for p, (_, label) in zip(predicted, held_out))
        assert correct >= 17, (flags, list(zip(predicted, held_out)))


def _bundle_eval(bundle_dir, data_dir, *flags):
    result = run_cli("eval", "--bundle", bundle_dir, "--data", data_dir, *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_a_run_at_another_resolution_serves_what_it_evaluated(digits_data, tmp_path):
    """A short run at 48x48 (smoke scale): export with no size flag gives a 48x48 bundle whose eval through
    the serving path agrees with the checkpoint's."""
    run = tmp_path / "run"
    result = run_cli("train", "--config", "smoke", "--data", digits_data / "data", "--model-dir", run,
                     "--set", "data.image_size=48", "--set", "train.steps=60", "--set", "train.batch_size=32",
                     "--set", "data.deterministic=true", "--set", "data.seed=0")
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli("eval", "--checkpoint", run, "--data", digits_data / "data")
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = json.loads(result.stdout)
    # learning, not guessing (11 classes: chance is 0.09). TensorFlow's CPU kernels are not bit-reproducible,
    # so 60 steps land anywhere in 0.23-0.58 top-1 (seven runs); the check that matters is the served bundle's
    # agreement with this evaluation, below
    assert evaluation["image_size"] == 48 and evaluation["top1"] >= 0.2, evaluation
    result = run_cli("export", "--checkpoint", run, "--output", tmp_path / "bundle")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((tmp_path / "bundle" / "model.json").read_text())["preprocessing"]["size"] == [48, 48]
    assert "from the run %s: input 48x48" % run in result.stderr
    served = _bundle_eval(tmp_path / "bundle", digits_data / "data")
    assert served["image_size"] == 48 and served["examples"] == evaluation["examples"] == 359
    assert abs(served["top1"] - evaluation["top1"]) <= 0.005 and abs(served["top5"] - evaluation["top5"]) <= 0.005, \
        (served, evaluation)


def _validation_files(root):
    """(path, class name) of held-out images, read back from the validation records."""
    out = []
    for record in tf.data.TFRecordDataset(
            [str(root / "data" / s["file"]) for s in data.info(str(root / "data"))["splits"]["validation"]["shards"]]):
        example = tf.train.Example.FromString(record.numpy())
        feature = example.features.feature
        out.append((str(root / "images" / feature["image/filename"].bytes_list.value[0].decode()),
                    feature["image/class/text"].bytes_list.value[0].decode()))
    return out


def test_sigkill_then_resume(digits_data, tmp_path):
    run = tmp_path / "run"
    cmd = CLI + ["train", "--config", "smoke", "--data", str(digits_data / "data"), "--model-dir", str(run),
                 "--set", "train.steps=400", "--set", "checkpoint.every_steps=10", "--set", "log.every_steps=10"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        try:
            step = checkpoint.Reader(str(run)).step
        except Exception:
            step = None
        if step and step >= 30:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed_at = checkpoint.Reader(str(run)).step
            break
        time.sleep(0.2)
    proc.communicate()
    assert killed_at is not None and 30 <= killed_at < 400, "the run ended before it could be killed"
    assert proc.returncode == -signal.SIGKILL

    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from %s/model.ckpt-%d at step %d" % (run, killed_at, killed_at) in result.stderr
    first = [l for l in result.stderr.splitlines() if l.startswith("step ")][0]
    assert int(first.split()[1].split("/")[0]) > killed_at      # the step continues, not restarts
    reader = checkpoint.Reader(str(run))
    assert reader.step == 400 and reader.has_ema and "MobilenetV3/Conv/weights/Momentum" in reader.shapes
    result = run_cli("eval", "--checkpoint", run, "--data", digits_data / "data")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["examples"] == 359


def test_sigterm_saves_the_current_step_and_exits(digits_data, tmp_path):
    run = tmp_path / "run"
    cmd = CLI + ["train", "--config", "smoke", "--data", str(digits_data / "data"), "--model-dir", str(run),
                 "--set", "train.steps=100000", "--set", "checkpoint.every_steps=50", "--set", "log.every_steps=7"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    deadline = time.time() + 300
    while time.time() < deadline and not os.path.exists(str(run / "model.ckpt-50.index")):
        time.sleep(0.2)
    time.sleep(3)   # a few more steps (smoke steps take well under a second), so the signal's own save is tested
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    stopped = [l for l in err.splitlines() if l.startswith("stopped at step")]
    assert stopped and "rerun the same command to resume" in stopped[0]
    step = int(stopped[0].split()[3])
    assert step > 50 and checkpoint.Reader(str(run)).step == step   # the last steps were saved, not lost


def test_fine_tune_from_another_checkpoint_with_other_classes(digits_data, tmp_path):
    imagenet = tmp_path / "imagenet"
    assert run_cli("init", "--model-dir", imagenet, "--variant", "small", "--multiplier", "0.35").returncode == 0
    result = run_cli("train", "--config", "smoke", "--data", digits_data / "data", "--model-dir", tmp_path / "run",
                     "--set", "train.init_from=%s" % imagenet, "--set", "train.reinit_classifier=true",
                     "--set", "train.steps=10")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "re-initialised 2 classifier variables" in result.stderr
    assert "starting at step 0" in result.stderr
    fine, start = checkpoint.Reader(str(tmp_path / "run")), checkpoint.Reader(str(imagenet))
    assert fine.step == 10 and fine.shapes["MobilenetV3/Logits/Conv2d_1c_1x1/weights"] == (1, 1, 1024, 11)
    assert start.shapes["MobilenetV3/Logits/Conv2d_1c_1x1/weights"] == (1, 1, 1024, 1001)
    result = run_cli("train", "--config", "smoke", "--data", digits_data / "data", "--model-dir", tmp_path / "run2",
                     "--set", "train.init_from=%s" % imagenet)
    assert_one_line_error(result, "shape mismatch for MobilenetV3/Logits/Conv2d_1c_1x1/weights")


def test_corrupt_record_is_skipped_in_training_and_counted_in_eval(digits_data, tmp_path):
    import shutil
    bad = tmp_path / "data"
    shutil.copytree(str(digits_data / "data"), str(bad))
    meta = json.loads((bad / "dataset.json").read_text())
    for split in ("train", "validation"):
        shard = meta["splits"][split]["shards"][0]
        path = str(bad / shard["file"])
        records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
        garbage = data.make_example(b"\xff\xd8 not really a jpeg", "JPEG", 64, 64, 3, "3", "3", "bad.jpg")
        with tf.io.TFRecordWriter(path) as writer:
            for r in records[:5] + [garbage.SerializeToString()] + records[5:]:
                writer.write(r)
        shard["records"] += 1
        meta["splits"][split]["num_examples"] += 1
        meta["splits"][split]["written"] += 1
    (bad / "dataset.json").write_text(json.dumps(meta))
    result = run_cli("train", "--config", "smoke", "--data", bad, "--model-dir", tmp_path / "run",
                     "--set", "train.steps=200", "--set", "data.shuffle_buffer=0")
    assert result.returncode == 0, result.stderr[-3000:]   # an epoch is ~180 steps: the bad record was read
    result = run_cli("eval", "--checkpoint", tmp_path / "run", "--data", bad)
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = json.loads(result.stdout)
    assert evaluation["skipped_records"] == 1 and evaluation["examples"] == 359
    assert evaluation["expected_examples"] == 360


@pytest.mark.parametrize("case", ["no-data", "empty-dir", "config-key", "recipe", "classes"])
def test_bad_input_is_one_clear_line(digits_data, tmp_path, case):
    base = ["train", "--config", "smoke", "--model-dir", tmp_path / "run"]
    if case == "no-data":
        assert_one_line_error(run_cli(*base, "--data", tmp_path / "missing"), "missing")
    elif case == "empty-dir":
        (tmp_path / "empty").mkdir()
        assert_one_line_error(run_cli(*base, "--data", tmp_path / "empty"), "dataset.json")
    elif case == "config-key":
        assert_one_line_error(run_cli(*base, "--data", digits_data / "data", "--set", "train.lerning_rate=1"),
                              "unknown config key train.lerning_rate (did you mean train.learning_rate?)")
    elif case == "recipe":
        assert_one_line_error(run_cli("train", "--config", "gpu-8p", "--data", digits_data / "data",
                                      "--model-dir", tmp_path / "run"), "no recipe 'gpu-8p'")
    else:
        assert_one_line_error(run_cli(*base, "--data", digits_data / "data", "--set", "model.num_classes=1001"),
                              "model.num_classes is 1001 but the data set")
    assert not (tmp_path / "run").exists() or not os.listdir(str(tmp_path / "run"))


def test_eval_counts_the_last_partial_batch(digits_data, tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", "--config", "smoke", "--data", digits_data / "data", "--model-dir", run,
                   "--set", "train.steps=5").returncode == 0
    result = run_cli("eval", "--checkpoint", run, "--data", digits_data / "data", "--batch-size", "100", "--no-ema")
    evaluation = json.loads(result.stdout)
    assert evaluation["examples"] == 359 and evaluation["weights"] == "raw"  # 3 full batches + 59
    assert 0.0 <= evaluation["top1"] <= evaluation["top5"] <= 1.0
    assert np.isclose(evaluation["top1"] * 359, round(evaluation["top1"] * 359))


def _truncate(path):
    with open(str(path), "r+b") as f:
        f.truncate(os.path.getsize(str(path)) // 2)


def test_resume_clears_stale_temporaries_and_passes_over_a_damaged_newest_checkpoint(digits_data, tmp_path):
    run = tmp_path / "run"
    base = ["train", "--config", "smoke", "--data", digits_data / "data", "--model-dir", run]
    assert run_cli(*base, "--set", "train.steps=10").returncode == 0   # checkpoints at steps 5 and 10
    stale = [".tmp-model.ckpt-15-4242.index", ".tmp-model.ckpt-15-4242.data-00000-of-00001.tempstate99",
             "checkpoint.tmp-4242", "config.yaml.tmp-4242", "labels.txt.tmp-4242"]       # what killed saves leave
    foreign = [".tmp-notes", "notes.tmp-4242", "model.ckpt-3.data-00000-of-00001"]     # not ours to remove
    for name in stale + foreign:
        (run / name).write_bytes(b"left over")
    _truncate(run / "model.ckpt-10.data-00000-of-00001")

    result = run_cli(*base, "--set", "train.steps=15")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert "removed 5 temporary files an interrupted save left in %s: %s" % (run, ", ".join(sorted(stale))) in lines
    passed_over = [l for l in lines if l.startswith("passing over")]
    assert len(passed_over) == 1 and passed_over[0].startswith(
        "passing over unreadable checkpoint %s: " % (run / "model.ckpt-10")), lines
    assert "resumed from %s at step 5" % (run / "model.ckpt-5") in lines
    assert [l.split()[1] for l in lines if l.startswith("step ")] == ["10/15", "15/15"]
    assert all((run / name).read_bytes() == b"left over" for name in foreign)
    assert not [n for n in os.listdir(str(run)) if n in stale]
    assert checkpoint.Reader(str(run)).step == 15

    # every checkpoint unreadable: one line, and the run is left as it was (never a new start at step 0)
    for step in (5, 10, 15):
        data_file = run / ("model.ckpt-%d.data-00000-of-00001" % step)
        if data_file.exists():
            _truncate(data_file)
    before = {n: (run / n).read_bytes() for n in os.listdir(str(run))}
    result = run_cli(*base, "--set", "train.steps=20")
    assert_one_line_error(result, "%s holds checkpoint files but no readable checkpoint" % run)
    assert {n: (run / n).read_bytes() for n in os.listdir(str(run))} == before


def test_disk_full_during_a_save_is_one_line_and_loses_nothing(digits_data, tiny_fs):
    """A real full file system: first no room for config.yaml; then the save at step 10 finds no space,
    the step-5 checkpoint and the state file stay as they were, nothing partial is left, and the run
    resumes once there is space."""
    run = os.path.join(tiny_fs.path, "run")
    base = ["train", "--config", "smoke", "--data", digits_data / "data", "--model-dir", run]
    tiny_fs.fill()
    assert_one_line_error(run_cli(*base, "--set", "train.steps=5"),
                          "cannot write %s: No space left on device" % os.path.join(run, "config.yaml"))
    assert os.listdir(run) == []
    tiny_fs.empty_filler()
    assert run_cli(*base, "--set", "train.steps=5").returncode == 0
    checkpoint_files = {n: open(os.path.join(run, n), "rb").read() for n in os.listdir(run) if n.startswith(
        ("model.ckpt-", "checkpoint"))}
    assert tiny_fs.fill(leave=256 << 10) < 1 << 20   # room for config.yaml, not for a checkpoint

    result = run_cli(*base, "--set", "train.steps=10")
    assert_one_line_error(result, "cannot save checkpoint %s: No space left on device (model.ckpt-5 is still the "
                                  "latest)" % os.path.join(run, "model.ckpt-10"))
    assert sorted(os.listdir(run)) == sorted(list(checkpoint_files) + ["config.yaml", "labels.txt"])
    assert {n: open(os.path.join(run, n), "rb").read() for n in checkpoint_files} == checkpoint_files

    tiny_fs.empty_filler()
    result = run_cli(*base, "--set", "train.steps=10")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from %s at step 5" % os.path.join(run, "model.ckpt-5") in result.stderr.splitlines()
    assert checkpoint.Reader(run).step == 10
