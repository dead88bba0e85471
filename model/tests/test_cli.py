"""The README's path as a new user walks it: init a checkpoint, inspect, export, predict; and every
command's user errors as one line."""
import argparse
import json
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    run = root / "run"
    result = run_cli("init", "--model-dir", run, "--variant", "small", "--multiplier", "0.75", "--num-classes", "1001")
    assert result.returncode == 0, result.stderr
    result = run_cli("export", "--checkpoint", run, "--output", root / "bundle")
    assert result.returncode == 0, result.stderr
    assert "wrote bundle" in result.stderr
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 420, 3), dtype=np.uint8)).save(str(root / "photo.jpg"), quality=90)
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8), "L").save(str(root / "gray.png"))
    return root


def test_inspect(walkthrough):
    result = run_cli("inspect", walkthrough / "run", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["step"] == 0 and info["variant"] == "small" and info["multiplier"] == 0.75
    assert info["num_classes"] == 1001 and info["ema_shadows"] is False
    text = run_cli("inspect", walkthrough / "run").stdout
    assert "MobileNetV3 small, depth multiplier 0.75, 1001 classes" in text


def test_predict_prints_top5_per_image(walkthrough):
    result = run_cli("predict", "--bundle", walkthrough / "bundle", walkthrough / "photo.jpg", walkthrough / "gray.png")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("photo.jpg") and lines[6].endswith("gray.png")
    ranks = [l for l in lines if l.startswith("  ")]
    assert len(ranks) == 10
    probs = [float(l.split()[-3]) for l in ranks[:5]]
    assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)


def test_predict_bad_image_is_reported_and_others_still_run(walkthrough, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    result = run_cli("predict", "--bundle", walkthrough / "bundle", tmp_path / "notes.txt", walkthrough / "photo.jpg")
    assert_one_line_error(result, "notes.txt", "not an image")
    assert "photo.jpg" in result.stdout


def test_predict_without_a_bundle(tmp_path):
    assert_one_line_error(run_cli("predict", "--bundle", tmp_path, tmp_path / "x.jpg"), "not a model bundle")


def test_init_refuses_an_existing_run(walkthrough):
    assert_one_line_error(run_cli("init", "--model-dir", walkthrough / "run"), "already holds checkpoint")


def test_inspect_not_a_checkpoint(tmp_path):
    assert_one_line_error(run_cli("inspect", tmp_path), "no checkpoint found")


def test_inspect_a_checkpoint_of_another_network_shows_it_then_says_so(tmp_path):
    import tensorflow as tf
    prefix = tf.train.Checkpoint(kernel=tf.Variable(np.zeros((3, 3), np.float32))).write(str(tmp_path / "other"))
    result = run_cli("inspect", prefix)
    assert "variant      unknown:" in result.stdout
    assert_one_line_error(result)


# --- user errors: one line, exit 1, and no TensorFlow where none is needed ------------------------

# main() in a subprocess that fails with status 99 when TensorFlow was imported: the robust signal
# that a user error was caught before TensorFlow's start-up (timing alone varies with the machine).
_NO_TF = """import sys
from mbv3.cli import main
try:
    rc = main()
except SystemExit as e:
    rc = e.code
if "tensorflow" in sys.modules:
    sys.stderr.write("tensorflow was imported\\n")
    rc = 99
sys.exit(rc)
"""


def run_without_tensorflow(*args):
    cmd = [sys.executable, "-c", _NO_TF] + [str(a) for a in args]
    start = time.perf_counter()
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    return result, time.perf_counter() - start


@pytest.fixture(scope="module")
def help_seconds():
    """`mbv3 --help` on this machine now: the yardstick of a command that imports no TensorFlow."""
    result, seconds = run_without_tensorflow("--help")
    assert result.returncode == 0 and "COMMAND" in result.stdout, result.stderr
    return seconds


def _user_errors(tmp):
    """(argv, a fragment of the error) for every subcommand: each is caught before TensorFlow."""
    (tmp / "afile").write_text("x")
    missing = tmp / "missing"
    return [
        (["inspect", missing], "no checkpoint at"),
        (["inspect", "-v", tmp], "no checkpoint found in directory"),
        (["init", "--model-dir", tmp / "afile"], "is not a directory"),
        (["data", "build", "--images", missing, "--output", tmp / "out"], "no image folder at"),
        (["data", "build", "--images", tmp, "--output", tmp / "out", "--labels", missing], "--labels"),
        (["train", "--config", "no-such-recipe", "--data", tmp, "--model-dir", tmp / "run"], "no recipe"),
        (["train", "--config", "smoke", "--data", missing, "--model-dir", tmp / "run"], "no data set at"),
        (["eval", "--checkpoint", missing, "--data", tmp], "no checkpoint at"),
        (["eval", "--bundle", missing, "--data", tmp], "no model bundle"),
        (["eval", "--bundle", missing, "--data", tmp, "--image-size", "64"], "--image-size applies to --checkpoint"),
        (["export", "--checkpoint", missing, "--output", tmp / "bundle"], "no checkpoint at"),
        (["export", "--checkpoint", tmp], "--output"),                       # argparse's own errors too
        (["om", "--bundle", missing, "--print"], "no model bundle"),
        (["predict", "--bundle", missing, tmp / "x.jpg"], "no model bundle"),
        (["verify", "--bundle", missing], "no model bundle"),
        (["quantize", "--bundle", missing, "--precision", "bf16", "--data", tmp], "no model bundle"),
        (["benchmark", "--bundle", missing], "no model bundle"),
        (["default-bundle", "--model", missing], "is neither a model bundle"),
        (["no-such-command"], "invalid choice"),
    ]


@pytest.mark.parametrize("case", range(19))
def test_every_command_reports_a_user_error_in_one_line_without_tensorflow(case, tmp_path, help_seconds):
    argv, fragment = _user_errors(tmp_path)[case]
    result, seconds = run_without_tensorflow(*argv)
    assert result.returncode == 1, (result.returncode, result.stderr)   # 99: TensorFlow was imported
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mbv3: error: ") and fragment in lines[0], result.stderr
    # < 1 s on an idle machine; on a loaded one, within three times what --help takes there
    assert seconds < max(1.0, 3 * help_seconds), (seconds, help_seconds)


def test_the_cases_cover_every_command(tmp_path):
    from mbv3 import cli
    commands = set(next(a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction)).choices)
    covered = set(str(argv[0]) for argv, _ in _user_errors(tmp_path))
    assert commands <= covered and len(_user_errors(tmp_path)) == 19


def test_a_corrupt_checkpoint_is_one_line_without_tensorflows_start_up(tmp_path):
    """Reading it needs TensorFlow; its start-up lines stay off stderr, the error is the only line."""
    prefix = tmp_path / "model.ckpt-1"
    (tmp_path / "model.ckpt-1.index").write_bytes(b"not an sstable")
    (tmp_path / "model.ckpt-1.data-00000-of-00001").write_bytes(b"x")
    result = run_cli("export", "--checkpoint", prefix, "--output", tmp_path / "bundle")
    assert_one_line_error(result, "cannot read checkpoint", str(prefix))
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("flag", ["--image-size", "--input-size"])
def test_export_takes_image_size_and_the_old_input_size(flag, capsys):
    from mbv3 import cli
    args = cli.parser().parse_args(["export", "--checkpoint", "c", "--output", "o", flag, "96"])
    assert args.image_size == 96
    warned = capsys.readouterr().err.splitlines()
    assert warned == ([] if flag == "--image-size" else ["mbv3: warning: --input-size is deprecated; use --image-size"])


def test_verbose_before_or_after_the_command():
    from mbv3 import cli
    assert cli.parser().parse_args(["--verbose", "verify", "--bundle", "b"]).verbose is True
    assert cli.parser().parse_args(["verify", "-v", "--bundle", "b"]).verbose is True
    assert cli.parser().parse_args(["verify", "--bundle", "b"]).verbose is False
