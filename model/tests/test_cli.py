"""The README's path as a new user walks it: init a checkpoint, inspect, export, predict."""
import json

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
