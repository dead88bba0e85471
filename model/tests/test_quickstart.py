"""The model `make serve` falls back to: a named bundle or checkpoint, else the official ImageNet
checkpoint (a file:// tarball of random weights stands in for Google's, through the mirror setting),
else the digits demo (its training replaced here by a fake trainer that writes a tiny checkpoint in a
second instead of training for half a minute)."""
import io
import json
import os
import shutil
import tarfile

import pytest

from mbv3 import bundle, checkpoint, config, export, quickstart
from mbv3.quickstart import demo, named, official

from conftest import assert_one_line_error, random_values, run_cli

UNREACHABLE = "http://127.0.0.1:9/v3-large_224_1.0_float.tgz"  # the discard port: refused at once
NAME = official.NAME


def fake_trainer(calls):
    """Leaves the folder `mbv3 train` would (checkpoint, config.yaml, labels.txt), from random weights."""
    def train(data_dir, model_dir, log):
        calls.append(model_dir)
        checkpoint.save(model_dir, 7, random_values("small", 0.35, 11, seed=1))
        config.load(demo.RECIPE, ["model.multiplier=0.35"]).save(model_dir)
        shutil.copy(os.path.join(data_dir, "labels.txt"), model_dir)
    return train


def no_training(data_dir, model_dir, log):
    raise AssertionError("the demo bundle should have been reused, not trained")


@pytest.fixture(autouse=True)
def training_is_an_error(monkeypatch):
    """Only the module's `offline` fixture trains (fakely); anything else must reuse its bundle."""
    monkeypatch.setattr(demo, "train_digits", no_training)


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    """resolve() on a machine that cannot download: the demo bundle, made once for the module."""
    cache = str(tmp_path_factory.mktemp("cache"))
    logs, calls = [], []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(demo, "train_digits", fake_trainer(calls))
        path = quickstart.resolve(cache_dir=cache, official_url=UNREACHABLE, log=logs.append)
    return {"cache": cache, "path": path, "logs": "\n".join(logs), "calls": calls}


def seeded_cache(offline, tmp_path):
    """A fresh cache that already holds the module's demo bundle, so a fallback need not export again."""
    cache = tmp_path / "cache"
    shutil.copytree(offline["path"], str(cache / "bundles" / os.path.basename(offline["path"])))
    return str(cache)


def make_tarball(path, files):
    """files: member name -> a local path, or bytes."""
    with tarfile.open(str(path), "w:gz", compresslevel=1) as tar:
        for name, source in files.items():
            if isinstance(source, bytes):
                info = tarfile.TarInfo(name)
                info.size = len(source)
                tar.addfile(info, io.BytesIO(source))
            else:
                tar.add(str(source), arcname=name)
    return "file://" + str(path)


def checkpoint_tarball(tmp_path, **arch):
    """An official-looking tarball: <name>/ema/model-540000.* holding a checkpoint of arch, beside a
    pristine/ one of another architecture (the EMA one must be chosen)."""
    prefix = checkpoint.save(str(tmp_path / "src" / NAME / "ema"), 540000, random_values(**arch), basename="model")
    checkpoint.save(str(tmp_path / "src" / NAME / "pristine"), 540000, random_values("small", 0.35, 5))
    return make_tarball(tmp_path / "official.tgz", {NAME: os.path.dirname(os.path.dirname(prefix))})


def test_offline_falls_back_to_the_demo_loudly(offline):
    meta = bundle.load(offline["path"]).metadata
    size = config.load(demo.RECIPE).data.image_size
    assert meta["name"] == demo.NAME and meta["input"]["shape"] == [-1, size, size, 3]
    assert meta["source"]["run"] == os.path.join(offline["cache"], "demo", demo.key(), "run")   # the size is the run's
    assert meta["notice"] == demo.NOTICE and meta["notice"].startswith("THIS IS THE DEMO DIGITS MODEL")   # for the page
    assert bundle.load(offline["path"]).labels[1:] == [str(d) for d in range(10)]
    assert len(offline["calls"]) == 1
    logs = offline["logs"]
    assert "cannot download %s" % UNREACHABLE in logs
    assert "THIS IS THE DEMO DIGITS MODEL, NOT AN IMAGENET CLASSIFIER." in logs
    assert "make serve MODEL=%s/ema" % NAME in logs and official.URL in logs and "MBV3_OFFICIAL_URL" in logs
    box = [line for line in logs.splitlines() if line.startswith(("+", "|"))]
    assert len(box) > 8 and len(set(len(line) for line in box)) == 1


def test_demo_bundle_is_reused(offline):
    logs = []
    path = quickstart.resolve(cache_dir=offline["cache"], official_url=UNREACHABLE, log=logs.append)
    assert path == offline["path"]
    assert any("THIS IS THE DEMO DIGITS MODEL" in line for line in logs)  # announced every time


def test_a_changed_recipe_trains_again(offline, monkeypatch):
    """The cached bundle is keyed by the resolved recipe: another recipe (or an edited one) is
    trained anew beside it, not mistaken for it."""
    calls = []
    monkeypatch.setattr(demo, "RECIPE", "smoke")
    monkeypatch.setattr(demo, "train_digits", fake_trainer(calls))
    path = quickstart.resolve(cache_dir=offline["cache"], official_url=UNREACHABLE, log=lambda m: None)
    assert path != offline["path"] and len(calls) == 1 and os.path.basename(path).startswith("demo-digits-")
    assert quickstart.resolve(cache_dir=offline["cache"], official_url=UNREACHABLE, log=lambda m: None) == path
    assert len(calls) == 1 and bundle.load(offline["path"]).name == demo.NAME   # both kept


def test_make_demo_trains_what_the_fallback_trains():
    """`make demo` and the fallback are one demo: the same recipe and image files."""
    makefile = open(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                 "Makefile")).read()
    target = makefile.split("\ndemo:")[1].split("\n\n")[0]
    assert "--config %s " % demo.RECIPE in target and "size=%d)" % demo.IMAGE_SIZE in target
    assert "--val-split %s" % demo.VAL_SPLIT in target


def test_a_second_process_waits_for_the_first(offline):
    """Two `make serve` at once: the second waits on the cache lock, then reuses the first one's bundle."""
    import fcntl
    import threading
    logs, found = [], []
    with open(os.path.join(offline["cache"], ".lock"), "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        worker = threading.Thread(target=lambda: found.append(quickstart.resolve(
            cache_dir=offline["cache"], official_url=UNREACHABLE, log=logs.append)))
        worker.start()
        worker.join(1.0)
        assert worker.is_alive() and any(line.startswith("waiting for another process") for line in logs)
        fcntl.flock(held, fcntl.LOCK_UN)
    worker.join(30)
    assert found == [offline["path"]]


def test_named_bundle_is_used_as_is(offline, tmp_path):
    assert quickstart.resolve(offline["path"], cache_dir=str(tmp_path), log=lambda m: None) == offline["path"]
    assert not os.listdir(str(tmp_path))


def test_named_checkpoint_is_exported_once(write_checkpoint, tmp_path, monkeypatch):
    prefix, _ = write_checkpoint(variant="small", multiplier=0.35, num_classes=11)
    cache = str(tmp_path / "cache")
    path = quickstart.resolve(prefix, cache_dir=cache, log=lambda m: None)
    assert path.startswith(os.path.join(cache, "bundles", "ckpt-")) and bundle.load(path).metadata["output"]["num_classes"] == 11
    assert json.load(open(os.path.join(path, "model.json")))["source"]["checkpoint"] == os.path.abspath(prefix)

    def refuse(*args, **kwargs):
        raise AssertionError("exported again")
    monkeypatch.setattr(export, "export", refuse)
    assert quickstart.resolve(prefix, cache_dir=cache, log=lambda m: None) == path
    assert quickstart.resolve(os.path.dirname(prefix), cache_dir=cache, log=lambda m: None) == path
    os.utime(prefix + ".index", ns=(1, 1))  # a rewritten checkpoint gets a new cache entry
    assert named.checkpoint_key(prefix) != os.path.basename(path)


def test_named_folder_holding_ema_is_found(write_checkpoint, tmp_path):
    """MODEL=v3-large_224_1.0_float (the unpacked tarball's top folder) finds its ema/ checkpoint."""
    prefix, _ = write_checkpoint(name="unpacked/ema", variant="small", multiplier=0.35, num_classes=11)
    write_checkpoint(name="unpacked/pristine", variant="small", multiplier=0.35, num_classes=5)
    path = quickstart.resolve(str(tmp_path / "unpacked"), cache_dir=str(tmp_path / "cache"), log=lambda m: None)
    assert bundle.load(path).metadata["source"]["checkpoint"] == os.path.abspath(prefix)


def test_official_tarball_is_checked_and_exported(tmp_path, monkeypatch):
    url = checkpoint_tarball(tmp_path, variant="large", multiplier=1.0, num_classes=1001)
    monkeypatch.setenv("MBV3_OFFICIAL_URL", url)   # a mirror, as a site without internet sets it
    cache, logs = str(tmp_path / "cache"), []
    path = quickstart.resolve(cache_dir=cache, log=logs.append)
    loaded = bundle.load(path)
    assert loaded.name == NAME and loaded.labels[0] == "background" and len(loaded.labels) == 1001
    assert loaded.metadata["architecture"]["variant"] == "large" and loaded.metadata["input"]["shape"][1] == 224
    assert "/ema/model-540000" in loaded.metadata["source"]["checkpoint"]
    assert not any("DEMO" in line for line in logs)
    monkeypatch.setenv("MBV3_OFFICIAL_URL", UNREACHABLE)  # cached: no second download
    assert quickstart.resolve(cache_dir=cache, log=lambda m: None) == path


@pytest.mark.parametrize("case,reason", [
    ("wrong-architecture", "holds MobileNetV3 small 0.35, 11 classes, not the official large 1.0"),
    ("no-checkpoint", "the archive holds no checkpoint"),
    ("not-a-tarball", "is not a readable .tgz archive"),
])
def test_other_archives_are_rejected(case, reason, offline, tmp_path):
    if case == "wrong-architecture":
        url = checkpoint_tarball(tmp_path, variant="small", multiplier=0.35, num_classes=11)
    elif case == "no-checkpoint":
        url = make_tarball(tmp_path / "x.tgz", {NAME + "/README": b"nothing here\n"})
    else:
        (tmp_path / "x.tgz").write_bytes(b"<html>captive portal</html>")
        url = "file://%s" % (tmp_path / "x.tgz")
    cache, logs = seeded_cache(offline, tmp_path), []
    path = quickstart.resolve(cache_dir=cache, official_url=url, log=logs.append)
    assert path == os.path.join(cache, "bundles", "demo-digits-" + demo.key())
    assert any(line.startswith("no ImageNet checkpoint: ") and reason in line for line in logs), logs
    assert any("Why: " in line for line in logs)
    assert not os.path.exists(os.path.join(cache, "downloads", NAME + ".tgz"))  # the next run downloads again
    assert not os.path.exists(os.path.join(cache, "bundles", "official-" + NAME))


@pytest.mark.parametrize("member", ["../escaped.txt", "/tmp/mbv3-absolute-escape.txt", "link"])
def test_unsafe_archive_members_are_refused(member, offline, tmp_path):
    path = tmp_path / "evil.tgz"
    with tarfile.open(str(path), "w:gz") as tar:
        if member == "link":
            info = tarfile.TarInfo(NAME + "/ema")
            info.type, info.linkname = tarfile.SYMTYPE, "/etc"
            tar.addfile(info)
        else:
            info = tarfile.TarInfo(member)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    cache, logs = seeded_cache(offline, tmp_path), []
    quickstart.resolve(cache_dir=cache, official_url="file://%s" % path, log=logs.append)
    assert any("refusing the archive" in line for line in logs), logs
    assert not os.path.exists(os.path.join(cache, "official", NAME))
    assert not (tmp_path / "cache" / "escaped.txt").exists() and not (tmp_path / "escaped.txt").exists()
    assert not os.path.exists("/tmp/mbv3-absolute-escape.txt")


def test_cli_prints_only_the_path(offline, tmp_path):
    result = run_cli("default-bundle", "--model", offline["path"], "--cache", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == offline["path"] + "\n"
    assert_one_line_error(run_cli("default-bundle", "--model", tmp_path / "missing"),
                          "is neither a model bundle (no model.json) nor a checkpoint")


def test_cli_takes_the_official_url_and_prints_only_the_path(offline, tmp_path):
    """The fallback through the real command: the mirror is refused, the demo is served, stdout is the path."""
    (tmp_path / "x.tgz").write_bytes(b"<html>captive portal</html>")
    cache = seeded_cache(offline, tmp_path)
    result = run_cli("default-bundle", "--cache", cache, "--official-url", "file://%s" % (tmp_path / "x.tgz"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == os.path.join(cache, "bundles", "demo-digits-" + demo.key()) + "\n"
    assert "is not a readable .tgz archive" in result.stderr and "THIS IS THE DEMO DIGITS MODEL" in result.stderr


def test_cli_prints_only_the_path_when_it_exports(write_checkpoint, tmp_path):
    """TensorFlow and tf2onnx run in this process (export): the path is still the only stdout line."""
    prefix, _ = write_checkpoint(variant="small", multiplier=0.35, num_classes=11)
    result = run_cli("default-bundle", "--model", prefix, "--cache", tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert line.startswith(str(tmp_path / "cache" / "bundles" / "ckpt-")) and bundle.load(line).labels
    assert "exporting checkpoint %s once" % prefix in result.stderr
