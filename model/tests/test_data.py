"""Slim-format TFRecords: the builder (layouts, shards, reruns, bad and unusual images) and the
tf.data reader (shapes, determinism, sharding between pipelines, corrupt records and shards)."""
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mbv3 import data, numpy_preprocess
from mbv3.data import plan, transcode
from mbv3.errors import MbV3Error

SLIM_FEATURES = {
    "image/height", "image/width", "image/colorspace", "image/channels", "image/class/label",
    "image/class/synset", "image/class/text", "image/object/bbox/xmin", "image/object/bbox/ymin",
    "image/object/bbox/xmax", "image/object/bbox/ymax", "image/object/bbox/label", "image/format",
    "image/filename", "image/encoded",
}


def save(img, fmt="JPEG", **kwargs):
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def encode(array, fmt="JPEG", mode=None, **kwargs):
    return save(Image.fromarray(array, mode), fmt, **kwargs)


def picture(h, w, seed):
    """A smooth RGB picture (JPEG-friendly, unlike white noise)."""
    small = np.random.default_rng(seed).integers(0, 255, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def write(path, payload):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(str(path), "wb") as f:
        f.write(payload)
    return str(path)


def image_folder(root, counts, split="train", fmt="JPEG", seed=0):
    """root/<split>/<class>/<class>_<i>.<ext> with smooth pictures of varied odd sizes."""
    ext = {"JPEG": "JPEG", "PNG": "png"}[fmt]
    for c, (name, count) in enumerate(sorted(counts.items())):
        for i in range(count):
            h, w = 23 + 7 * i + c, 31 + 5 * i
            payload = encode(picture(h, w, seed + 10 * c + i), fmt)
            write(os.path.join(str(root), split, name, "%s_%d.%s" % (name, i, ext)), payload)
    return str(root)


def solid_folder(root, per_class=6, classes=("a", "b")):
    """Solid-gray PNGs, each a different level, so an eval output identifies its image."""
    level = 10
    for name in classes:
        for i in range(per_class):
            write(os.path.join(str(root), "train", name, "%d.png" % i), encode(np.full((12, 12), level, np.uint8), "PNG"))
            level += 10
    return str(root)


def records(path):
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]


def feature(example, key):
    f = example.features.feature[key]
    return list(f.bytes_list.value or f.int64_list.value or f.float_list.value)


def all_records(out, split):
    meta = data.info(out)
    return [e for s in meta["splits"][split]["shards"] for e in records(os.path.join(out, s["file"]))]


def quiet(msg):
    pass


def build(src, out, **kwargs):
    kwargs.setdefault("log", quiet)
    kwargs.setdefault("workers", 2)
    return data.build(src, str(out), **kwargs)


# --- building -----------------------------------------------------------------------------


def test_records_have_slims_features_and_1_based_labels(tmp_path):
    src = image_folder(tmp_path / "src", {"n01440764": 2, "zebra_like": 1})
    write(tmp_path / "src" / "train" / "zebra_like" / "gray.png", encode(np.full((9, 13), 77, np.uint8), "PNG"))
    summary = build(src, tmp_path / "out")
    assert summary["num_classes"] == 3 and summary["label_offset"] == 1
    assert summary["classes"] == ["n01440764", "zebra_like"]
    examples = {feature(e, "image/filename")[0].decode(): e for e in all_records(str(tmp_path / "out"), "train")}
    assert sorted(examples) == ["train/n01440764/n01440764_0.JPEG", "train/n01440764/n01440764_1.JPEG",
                                "train/zebra_like/gray.png", "train/zebra_like/zebra_like_0.JPEG"]
    tench = examples["train/n01440764/n01440764_1.JPEG"]
    assert set(tench.features.feature) == SLIM_FEATURES
    assert feature(tench, "image/class/label") == [1]
    assert feature(tench, "image/class/synset") == [b"n01440764"]
    assert feature(tench, "image/class/text") == [b"tench, Tinca tinca"]
    assert feature(tench, "image/format") == [b"JPEG"] and feature(tench, "image/colorspace") == [b"RGB"]
    assert (feature(tench, "image/height"), feature(tench, "image/width"), feature(tench, "image/channels")) == ([30], [36], [3])
    for key in ("xmin", "ymin", "xmax", "ymax", "label"):
        assert feature(tench, "image/object/bbox/" + key) == []
    with open(str(tmp_path / "src" / "train" / "n01440764" / "n01440764_1.JPEG"), "rb") as f:
        assert feature(tench, "image/encoded") == [f.read()]  # RGB JPEG: the original bytes
    gray = examples["train/zebra_like/gray.png"]
    assert feature(gray, "image/class/label") == [2] and feature(gray, "image/class/text") == [b"zebra_like"]
    assert feature(gray, "image/format") == [b"PNG"]  # 8-bit grayscale PNG: kept; TF expands it to RGB
    with open(str(tmp_path / "out" / "labels.txt")) as f:
        assert f.read().splitlines() == ["background", "tench, Tinca tinca", "zebra_like"]


def test_labels_file_orders_classes_and_rejects_unknown_folders(tmp_path):
    src = image_folder(tmp_path / "src", {"a": 1, "b": 1})
    write(tmp_path / "labels.txt", b"b\tthe b class\na\nc\n")
    summary = build(src, tmp_path / "out", labels_file=str(tmp_path / "labels.txt"))
    assert summary["classes"] == ["b", "a", "c"] and summary["num_classes"] == 4
    labels = {feature(e, "image/class/synset")[0]: feature(e, "image/class/label")[0]
              for e in all_records(str(tmp_path / "out"), "train")}
    assert labels == {b"b": 1, b"a": 2}
    with open(str(tmp_path / "out" / "labels.txt")) as f:
        assert f.read().splitlines() == ["background", "the b class", "a", "c"]
    write(tmp_path / "only_a.txt", b"a\n")
    with pytest.raises(MbV3Error, match="train/b is not one of the 1 classes"):
        build(src, tmp_path / "out2", labels_file=str(tmp_path / "only_a.txt"))


def test_shard_names_counts_and_seeded_assignment(tmp_path):
    src = image_folder(tmp_path / "src", {"a": 5, "b": 4})
    summary = build(src, tmp_path / "out", shards=4)
    shards = summary["splits"]["train"]["shards"]
    assert [s["file"] for s in shards] == ["train-%05d-of-00004" % i for i in range(4)]
    assert sorted(os.listdir(str(tmp_path / "out"))) == sorted([s["file"] for s in shards] + ["dataset.json", "labels.txt"])
    sizes = [len(records(str(tmp_path / "out" / s["file"]))) for s in shards]
    assert sizes == [s["records"] for s in shards] and sum(sizes) == 9 and min(sizes) >= 2
    assert data.num_examples(str(tmp_path / "out"), "train") == 9

    def contents(out):
        return [[feature(e, "image/filename")[0] for e in records(os.path.join(out, s["file"]))]
                for s in data.info(out)["splits"]["train"]["shards"]]
    build(src, tmp_path / "same", shards=4)
    build(src, tmp_path / "other", shards=4, seed=1)
    assert contents(str(tmp_path / "out")) == contents(str(tmp_path / "same"))
    assert contents(str(tmp_path / "out")) != contents(str(tmp_path / "other"))
    # default: ~1000 images a shard, at least one; never more shards than images
    assert [s["file"] for s in build(src, tmp_path / "one")["splits"]["train"]["shards"]] == ["train-00000-of-00001"]
    assert len(build(src, tmp_path / "many", shards=50)["splits"]["train"]["shards"]) == 9


def test_rerun_keeps_finished_shards_and_refuses_other_inputs(tmp_path, monkeypatch):
    src = image_folder(tmp_path / "src", {"a": 4, "b": 4})
    out = str(tmp_path / "out")
    # An interrupted build: the second shard's writer dies; the first shard is complete.
    real_prepare = transcode.prepare
    fail_on = plan.assign(plan.plan_folder(src, None, 0.0, None, 0)[2]["train"], 2, 0)[1][0].path

    def dying(path):
        if path == fail_on:
            raise KeyboardInterrupt()
        return real_prepare(path)
    monkeypatch.setattr(transcode, "prepare", dying)
    with pytest.raises(KeyboardInterrupt):
        build(src, out, shards=2, workers=1)
    monkeypatch.setattr(transcode, "prepare", real_prepare)
    assert sorted(os.listdir(out)) == ["dataset.json", "train-00000-of-00002"]  # no temporary file left
    with pytest.raises(MbV3Error, match="incomplete"):
        data.info(out)

    first = os.path.join(out, "train-00000-of-00002")
    os.utime(first, (1000000000, 1000000000))
    summary = build(src, out, shards=2)
    assert summary["reused_shards"] == 1 and summary["splits"]["train"]["written"] == 8
    assert os.stat(first).st_mtime == 1000000000
    mtimes = dict((n, os.stat(os.path.join(out, n)).st_mtime) for n in os.listdir(out) if n.startswith("train"))
    assert build(src, out, shards=2)["reused_shards"] == 2
    assert mtimes == dict((n, os.stat(os.path.join(out, n)).st_mtime) for n in os.listdir(out) if n.startswith("train"))

    with pytest.raises(MbV3Error, match="other inputs"):
        build(src, out, shards=3)
    write(tmp_path / "src" / "train" / "b" / "new.png", encode(np.zeros((8, 8), np.uint8), "PNG"))
    with pytest.raises(MbV3Error, match="other inputs.*train_files=8.*train_files=9"):
        build(src, out, shards=2)
    write(tmp_path / "foreign" / "notes.txt", b"mine")
    with pytest.raises(MbV3Error, match="not empty and holds no dataset.json"):
        build(src, tmp_path / "foreign")


def test_val_split_holds_out_each_class_deterministically(tmp_path):
    src = str(tmp_path / "digits")
    assert data.write_digits_folder(src) == 1797
    assert sorted(os.listdir(os.path.join(src, "train"))) == [str(d) for d in range(10)]
    assert Image.open(os.path.join(src, "train", "3", "0003.png")).size == (32, 32)

    def held_out(out, **kwargs):
        build(src, tmp_path / out, val_split=0.1, **kwargs)
        return sorted(feature(e, "image/filename")[0].decode() for e in all_records(str(tmp_path / out), "validation"))
    first = held_out("a")
    assert held_out("b") == first and held_out("c", seed=7) != first
    per_class = {}
    for name in first:
        per_class[name.split("/")[1]] = per_class.get(name.split("/")[1], 0) + 1
    sizes = {d: len(os.listdir(os.path.join(src, "train", d))) for d in per_class}
    assert sorted(per_class) == [str(d) for d in range(10)]
    assert all(per_class[d] == int(round(sizes[d] * 0.1)) for d in per_class)
    info = data.info(str(tmp_path / "a"))
    assert info["splits"]["train"]["written"] + info["splits"]["validation"]["written"] == 1797
    assert [s["file"] for s in info["splits"]["validation"]["shards"]] == ["validation-00000-of-00001"]
    train_names = {feature(e, "image/filename")[0].decode() for e in all_records(str(tmp_path / "a"), "train")}
    assert not train_names & set(first)


def test_validation_as_folders_and_as_ground_truth_file(tmp_path):
    src = image_folder(tmp_path / "src", {"n01440764": 1, "n01443537": 1})
    image_folder(tmp_path / "src", {"n01440764": 2, "n01443537": 1}, split="val", fmt="PNG", seed=50)
    summary = build(src, tmp_path / "folders")
    assert summary["splits"]["validation"]["written"] == 3
    got = sorted((feature(e, "image/filename")[0], feature(e, "image/class/label")[0])
                 for e in all_records(str(tmp_path / "folders"), "validation"))
    assert got == [(b"val/n01440764/n01440764_0.png", 1), (b"val/n01440764/n01440764_1.png", 1),
                   (b"val/n01443537/n01443537_0.png", 2)]

    flat = tmp_path / "flat"
    image_folder(flat, {"n01440764": 1, "n01443537": 1})
    for i in (1, 2, 3):
        write(flat / "validation" / ("ILSVRC2012_val_%08d.JPEG" % i), encode(picture(40, 50, i)))
    write(tmp_path / "synsets.txt", b"n01443537\nn01440764\nn01443537\n")  # slim's: sorted filename order
    build(str(flat), tmp_path / "slimstyle", val_labels_file=str(tmp_path / "synsets.txt"))
    write(tmp_path / "pairs.txt", b"ILSVRC2012_val_00000003.JPEG n01443537\nILSVRC2012_val_00000001.JPEG n01443537\n"
                                  b"ILSVRC2012_val_00000002.JPEG n01440764\n")
    build(str(flat), tmp_path / "pairs", val_labels_file=str(tmp_path / "pairs.txt"))
    for out in ("slimstyle", "pairs"):
        got = sorted((feature(e, "image/filename")[0], feature(e, "image/class/label")[0])
                     for e in all_records(str(tmp_path / out), "validation"))
        assert got == [(b"validation/ILSVRC2012_val_00000001.JPEG", 2), (b"validation/ILSVRC2012_val_00000002.JPEG", 1),
                       (b"validation/ILSVRC2012_val_00000003.JPEG", 2)]

    with pytest.raises(MbV3Error, match="without class folders; give a validation labels file"):
        build(str(flat), tmp_path / "x1")
    write(tmp_path / "short.txt", b"n01443537\nn01440764\n")
    with pytest.raises(MbV3Error, match="2 labels for 3 images"):
        build(str(flat), tmp_path / "x2", val_labels_file=str(tmp_path / "short.txt"))
    with pytest.raises(MbV3Error, match="has a validation folder"):
        build(str(flat), tmp_path / "x3", val_labels_file=str(tmp_path / "synsets.txt"), val_split=0.5)


def test_bad_files_are_skipped_reported_and_counted(tmp_path):
    src = image_folder(tmp_path / "src", {"a": 3})
    good = encode(picture(60, 60, 1))
    write(tmp_path / "src" / "train" / "a" / "corrupt.jpg", b"\xff\xd8\xff\xe0" + os.urandom(500))
    write(tmp_path / "src" / "train" / "a" / "empty.png", b"")
    write(tmp_path / "src" / "train" / "a" / "truncated.jpeg", good[:len(good) // 2])
    write(tmp_path / "src" / "train" / "a" / "README.txt", b"not an image")
    lines = []
    summary = data.build(str(src), str(tmp_path / "out"), log=lines.append)
    split = summary["splits"]["train"]
    assert (split["written"], split["skipped"], split["files"], split["ignored"]) == (3, 3, 6, 1)
    reasons = {s["path"]: s["reason"] for s in summary["skipped"]}
    assert sorted(reasons) == ["train/a/README.txt", "train/a/corrupt.jpg", "train/a/empty.png", "train/a/truncated.jpeg"]
    assert reasons["train/a/empty.png"] == "empty file (0 bytes)"
    assert "truncated" in reasons["train/a/truncated.jpeg"]
    assert reasons["train/a/README.txt"].startswith("not an image file name")
    for name in ("corrupt.jpg", "empty.png", "truncated.jpeg", "README.txt"):
        assert any(line.startswith("skipped ") and name in line for line in lines), lines
    assert any("6/6 images (3 skipped)" in line and "images/s" in line for line in lines), lines
    with open(str(tmp_path / "out" / "dataset.json")) as f:
        meta = json.load(f)
    assert meta["splits"]["train"]["skipped"] == 3 and len(meta["skipped"]) == 4
    assert len(all_records(str(tmp_path / "out"), "train")) == 3


def test_every_path_passed_over_is_listed_with_its_reason(tmp_path):
    src = tmp_path / "src"
    image_folder(src, {"a": 2, "b": 1})
    image_folder(src, {"a": 1}, split="val")
    a, jpeg = src / "train" / "a", encode(picture(30, 30, 5))
    os.symlink(str(a / "gone.jpg"), str(a / "ghost.jpg"))                 # dangling symbolic link
    os.symlink("loop.jpg", str(a / "loop.jpg"))                           # a link to itself
    write(a / "folder.png" / "inner.png", encode(picture(30, 30, 6), "PNG"))  # a folder named like an image
    os.mkfifo(str(a / "pipe.jpg"))                                        # opening it would block forever
    write(a / ".hidden.jpg", jpeg)
    write(a / "notes.txt", b"not an image")
    write(src / "train" / "loose.jpg", jpeg)
    write(src / "train" / "index.html", b"<html>")
    write(src / "val" / "README", b"about val")
    write(src / "test" / "x" / "1.jpg", jpeg)
    write(src / "LICENSE", b"MIT")
    lines = []
    summary = data.build(str(src), str(tmp_path / "out"), log=lines.append, workers=2)
    reasons = {s["path"]: (s["reason"], s["split"]) for s in summary["skipped"]}
    assert reasons == {
        "train/a/ghost.jpg": ("dangling symbolic link (to %s)" % (a / "gone.jpg"), "train"),
        "train/a/loop.jpg": ("symbolic link to loop.jpg that cannot be followed: Too many levels of symbolic links",
                             "train"),
        "train/a/folder.png": ("a folder, not an image (class folders are read one level deep)", "train"),
        "train/a/pipe.jpg": ("not a regular file (a device, pipe or socket)", "train"),
        "train/a/.hidden.jpg": ("hidden (the name starts with a dot)", "train"),
        "train/a/notes.txt": ("not an image file name (extensions: %s)" % " ".join(data.IMAGE_EXTENSIONS), "train"),
        "train/loose.jpg": ("an image outside the class folders", "train"),
        "train/index.html": ("not an image file name (extensions: %s)" % " ".join(data.IMAGE_EXTENSIONS), "train"),
        "val/README": ("not an image file name (extensions: %s)" % " ".join(data.IMAGE_EXTENSIONS), "validation"),
        "test": ("not a train/, val/ or validation/ folder", None),
        "LICENSE": ("not a train/, val/ or validation/ folder", None),
    }
    for path, (reason, _) in reasons.items():
        assert "skipped %s: %s" % (src / path, reason) in lines, (path, lines)
    assert (summary["splits"]["train"]["ignored"], summary["splits"]["validation"]["ignored"]) == (8, 1)
    assert (summary["splits"]["train"]["written"], summary["splits"]["validation"]["written"]) == (3, 1)
    with open(str(tmp_path / "out" / "dataset.json")) as f:
        assert json.load(f)["skipped"] == summary["skipped"]
    assert any(l.startswith("train: 3 images written, 0 unreadable skipped, 8 other paths skipped") for l in lines), lines


def test_an_unreadable_image_is_listed_with_the_reason(tmp_path, monkeypatch):
    src = image_folder(tmp_path / "src", {"a": 2})
    locked = os.path.join(src, "train", "a", "a_0.JPEG")
    real_open = open

    def open_as_if_locked(path, *args, **kwargs):   # chmod 000 does not stop root, who runs CI
        if path == locked:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(transcode, "open", open_as_if_locked, raising=False)
    lines = []
    summary = data.build(src, str(tmp_path / "out"), log=lines.append, workers=2)
    assert summary["skipped"] == [{"path": "train/a/a_0.JPEG", "reason": "cannot read file: Permission denied",
                                   "split": "train", "shard": "train-00000-of-00001"}]
    assert "skipped %s: cannot read file: Permission denied" % locked in lines
    assert summary["splits"]["train"]["written"] == 1


@pytest.mark.parametrize("split", ["train", "val"])
def test_an_empty_class_folder_is_an_error_naming_it(tmp_path, split):
    src = image_folder(tmp_path / "src", {"a": 2, "b": 2})
    image_folder(tmp_path / "src", {"a": 1}, split="val")
    empty = tmp_path / "src" / split / "b"
    os.makedirs(str(empty), exist_ok=True)
    for name in os.listdir(str(empty)):
        os.remove(str(empty / name))
    write(empty / "notes.txt", b"the images are elsewhere")
    with pytest.raises(MbV3Error) as caught:
        build(src, tmp_path / "out")
    assert str(caught.value).startswith("class folder %s holds no images (only 1 other entry, e.g. notes.txt: "
                                        % empty), caught.value
    assert not (tmp_path / "out").exists()


def test_an_empty_class_folder_through_the_cli(tmp_path):
    from conftest import assert_one_line_error, run_cli
    src = image_folder(tmp_path / "src", {"a": 2})
    os.makedirs(str(tmp_path / "src" / "train" / "b"))
    result = run_cli("data", "build", "--images", src, "--output", tmp_path / "out")
    assert_one_line_error(result, "class folder %s holds no images; add images or remove the folder"
                          % (tmp_path / "src" / "train" / "b"))
    assert not (tmp_path / "out").exists() and result.stdout == ""


def test_labels_file_classes_without_a_folder_are_said(tmp_path):
    src = image_folder(tmp_path / "src", {"a": 2})
    write(tmp_path / "classes.txt", b"a\nb\nc\n")
    lines = []
    summary = data.build(src, str(tmp_path / "out"), labels_file=str(tmp_path / "classes.txt"), log=lines.append)
    assert summary["num_classes"] == 4
    assert "train: 2 classes of the labels file have no folder in %s, so no images: b, c" % os.path.join(src, "train") \
        in lines, lines


def test_a_killed_builds_temporaries_are_removed_and_the_build_resumes(tmp_path):
    src = image_folder(tmp_path / "src", {"a": 2})
    out = tmp_path / "out"
    write(out / "dataset.json.tmp-4242", b'{"format": "mbv3-tfrec')   # killed during its first metadata write
    write(out / "train-00000-of-00001.tmp", b"half a shard")
    lines = []
    summary = data.build(src, str(out), log=lines.append)
    assert summary["splits"]["train"]["written"] == 2
    assert sorted(os.listdir(str(out))) == ["dataset.json", "labels.txt", "train-00000-of-00001"]
    assert "build: removed 2 temporary files an interrupted build left: dataset.json.tmp-4242, " \
           "train-00000-of-00001.tmp" in lines, lines
    write(tmp_path / "other" / "notes.tmp-1", b"not ours")
    with pytest.raises(MbV3Error, match="is not empty and holds no dataset.json .e.g. notes.tmp-1."):
        build(src, tmp_path / "other")
    assert os.listdir(str(tmp_path / "other")) == ["notes.tmp-1"]


def test_metadata_write_on_a_full_file_system(tiny_fs, tmp_path):
    """A real full disk at dataset.json's first write: one error naming it, nothing left behind."""
    src = image_folder(tmp_path / "src", {"a": 2})
    out = os.path.join(tiny_fs.path, "out")
    os.mkdir(out)
    tiny_fs.fill()
    with pytest.raises(MbV3Error, match="^cannot write %s: No space left on device$" % os.path.join(out, "dataset.json")):
        build(src, out)
    assert os.listdir(out) == []
    tiny_fs.empty_filler()
    assert build(src, out)["splits"]["train"]["written"] == 2


def test_unusual_images_are_converted_to_rgb_jpeg(tmp_path):
    root = tmp_path / "src" / "train" / "x"
    rgb = picture(20, 30, 3)
    inputs = {
        "cmyk.jpg": save(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
        "palette.png": save(Image.fromarray(rgb).convert("P"), "PNG"),
        "rgba.png": encode(np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)]), "PNG", "RGBA"),
        "deep.png": encode(np.arange(600, dtype=np.uint16).reshape(20, 30) * 100, "PNG"),  # 16-bit gray
        "picture.bmp": encode(rgb, "BMP"),
        "anim.gif": encode(rgb, "GIF"),
        "photo.webp": encode(rgb, "WEBP", lossless=True),
        "plain.png": encode(rgb, "PNG"),
    }
    for name, payload in inputs.items():
        inputs[name] = write(root / name, payload)
    summary = build(str(tmp_path / "src"), tmp_path / "out")
    assert summary["splits"]["train"]["converted"] == 7 and summary["splits"]["train"]["skipped"] == 0
    examples = {feature(e, "image/filename")[0].decode().split("/")[-1]: e for e in all_records(str(tmp_path / "out"), "train")}
    assert feature(examples["plain.png"], "image/format") == [b"PNG"]
    for name, path in inputs.items():
        example = examples[name]
        encoded = feature(example, "image/encoded")[0]
        decoded = tf.io.decode_image(encoded, channels=3, expand_animations=False).numpy()
        assert decoded.shape == (20, 30, 3), name
        if name != "plain.png":
            assert feature(example, "image/format") == [b"JPEG"] and encoded[:2] == b"\xff\xd8", name
        # what the server's decoder shows, up to JPEG quality 95 (the palette image is dithered noise)
        expected = numpy_preprocess.decode(open(path, "rb").read()).astype(int)
        assert np.abs(decoded.astype(int) - expected).mean() < 5, name


def test_exif_rotated_jpeg_is_stored_upright(tmp_path):
    img = Image.fromarray(picture(20, 40, 4))
    exif = img.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    write(tmp_path / "src" / "train" / "x" / "rotated.jpg", buf.getvalue())
    build(str(tmp_path / "src"), tmp_path / "out")
    (example,) = all_records(str(tmp_path / "out"), "train")
    assert (feature(example, "image/height"), feature(example, "image/width")) == ([40], [20])


def test_builder_input_errors(tmp_path):
    with pytest.raises(MbV3Error, match="no image folder"):
        build(str(tmp_path / "missing"), tmp_path / "out")
    os.makedirs(str(tmp_path / "empty" / "train"))
    with pytest.raises(MbV3Error, match="holds no class folders"):
        build(str(tmp_path / "empty"), tmp_path / "out")
    write(tmp_path / "classes.txt", b"a\nb\n")
    with pytest.raises(MbV3Error, match="no images under"):
        build(str(tmp_path / "empty"), tmp_path / "out", labels_file=str(tmp_path / "classes.txt"))
    with pytest.raises(MbV3Error, match="val_split"):
        build(image_folder(tmp_path / "src", {"a": 2}), tmp_path / "out", val_split=1.5)


# --- reading ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """12 solid-gray PNGs (distinct levels) in 2 classes, 4 train shards, 4 held-out images."""
    root = tmp_path_factory.mktemp("small")
    solid_folder(root / "src", per_class=8)
    data.build(str(root / "src"), str(root / "out"), shards=4, val_split=0.25, log=quiet, workers=2)
    return str(root / "out")


def levels(images):
    """The gray level (0-255) each eval image was made from."""
    return sorted(int(round((float(np.mean(x)) / 2.0 + 0.5) * 255)) for x in images)


def test_reader_shapes_dtypes_ranges(small_set):
    images, labels = next(iter(data.dataset(small_set, "train", 5, 24, training=True)))
    assert images.shape == (5, 24, 24, 3) and images.dtype == tf.float32
    assert labels.shape == (5,) and labels.dtype == tf.int32
    assert float(tf.reduce_min(images)) >= -1.0 and float(tf.reduce_max(images)) <= 1.0
    assert set(labels.numpy()) <= {1, 2}
    assert data.dataset(small_set, "train", 5, 24, training=True).element_spec[0].shape.as_list() == [5, 24, 24, 3]


def test_eval_keeps_last_partial_batch_and_every_image(small_set):
    batches = list(data.dataset(small_set, "train", 5, 8, training=False))
    assert [b[0].shape[0] for b in batches] == [5, 5, 2]
    assert data.num_examples(small_set, "train") == 12 and data.num_examples(small_set, "val") == 4
    all_levels = levels(x for b in batches for x in b[0].numpy())
    assert len(set(all_levels)) == 12
    # training drops the remainder and repeats
    train = data.dataset(small_set, "train", 5, 8, training=True, shuffle_buffer=4)
    assert [b[0].shape[0] for b in train.take(4)] == [5, 5, 5, 5]


def test_deterministic_reader_repeats_exactly(small_set):
    def run(seed):
        ds = data.dataset(small_set, "train", 4, 16, training=True, deterministic=True, seed=seed, shuffle_buffer=6)
        return [(x.numpy(), y.numpy()) for x, y in ds.take(6)]
    first, again, other = run(3), run(3), run(4)
    for (x1, y1), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other))


def test_input_context_splits_files_between_pipelines(small_set):
    def read(pipeline, pipelines=2, split="train"):
        ctx = tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=pipeline)
        stats = {}
        ds = data.dataset(small_set, split, 3, 8, training=False, input_context=ctx, stats=stats)
        return levels(x for b in ds for x in b[0].numpy()), stats
    (zero, stats0), (one, stats1) = read(0), read(1)
    shards = data.info(small_set)["splits"]["train"]["shards"]
    assert len(zero) == shards[0]["records"] + shards[2]["records"] == stats0["expected"]
    assert len(one) == shards[1]["records"] + shards[3]["records"] == stats1["expected"]
    assert not set(zero) & set(one) and len(set(zero) | set(one)) == 12
    # fewer files than pipelines (validation has one shard): records are dealt out instead
    (a, _), (b, _) = read(0, split="validation"), read(1, split="validation")
    assert len(a) == len(b) == 2 and not set(a) & set(b)


def _rewrite_shard(path, change):
    examples = records(path)
    change(examples)
    with tf.io.TFRecordWriter(path) as writer:
        for example in examples:
            writer.write(example if isinstance(example, bytes) else example.SerializeToString())
    return len(examples)


def test_corrupt_image_in_a_shard_is_skipped_and_counted(small_set, tmp_path):
    import shutil
    out = str(tmp_path / "copy")
    shutil.copytree(small_set, out)
    shard = os.path.join(out, data.info(out)["splits"]["train"]["shards"][0]["file"])

    def spoil(examples):
        examples[0].features.feature["image/encoded"].bytes_list.value[0] = b"\x89PNG garbage"
        examples.append(b"not a tf.train.Example at all")
    _rewrite_shard(shard, spoil)
    stats = {}
    got = [x for b in data.dataset(out, "train", 4, 8, training=False, stats=stats) for x in b[0].numpy()]
    assert len(got) == 11 and len(set(levels(got))) == 11
    assert data.read_stats(stats) == {"records": 13, "images": 11, "skipped": 2, "expected": 12}
    assert int(stats["skipped"]) == 2  # the variables convert as they are


def test_truncated_shard_does_not_stop_reading(small_set, tmp_path):
    import shutil
    out = str(tmp_path / "copy")
    shutil.copytree(small_set, out)
    shards = data.info(out)["splits"]["train"]["shards"]
    path = os.path.join(out, shards[1]["file"])
    with open(path, "rb") as f:
        payload = f.read()
    with open(path, "wb") as f:
        f.write(payload[:len(payload) - 30])  # the last record loses its tail and its CRC
    stats = {}
    got = [x for b in data.dataset(out, "train", 4, 8, training=False, stats=stats) for x in b[0].numpy()]
    assert len(got) == 11
    counts = data.read_stats(stats)
    assert counts["expected"] - counts["records"] == 1 and counts["skipped"] == 0
    # training keeps going past the damaged file, pass after pass
    assert len(list(data.dataset(out, "train", 4, 8, training=True, shuffle_buffer=4).take(10))) == 10


def test_reader_errors_and_empty_split(tmp_path, small_set):
    with pytest.raises(MbV3Error, match="no data set at"):
        data.info(str(tmp_path / "missing"))
    os.makedirs(str(tmp_path / "plain"))
    with pytest.raises(MbV3Error, match="holds no dataset.json"):
        data.dataset(str(tmp_path / "plain"), "train", 2, 8, training=True)
    src = image_folder(tmp_path / "src", {"a": 1})
    build(src, tmp_path / "trainonly")
    with pytest.raises(MbV3Error, match="no shards for split 'validation' \\(it has: train\\)"):
        data.num_examples(str(tmp_path / "trainonly"), "validation")
    os.remove(str(tmp_path / "trainonly" / "train-00000-of-00001"))
    with pytest.raises(MbV3Error, match="shard train-00000-of-00001 is missing"):
        data.dataset(str(tmp_path / "trainonly"), "train", 2, 8, training=False)

    write(tmp_path / "bad" / "train" / "a" / "broken.png", b"\x89PNG\r\n\x1a\nbroken")
    summary = build(str(tmp_path / "bad"), tmp_path / "empty")
    assert summary["splits"]["train"]["written"] == 0 and summary["splits"]["train"]["skipped"] == 1
    assert data.num_examples(str(tmp_path / "empty"), "train") == 0
    assert list(data.dataset(str(tmp_path / "empty"), "train", 2, 8, training=False)) == []


# --- dataset.json as DatasetInfo ----------------------------------------------------------------------

FIXTURE = os.path.join(os.path.dirname(__file__), "data", "dataset-v1.json")


def test_a_dataset_json_of_the_earlier_writer_reads_back_byte_for_byte():
    """model/tests/data/dataset-v1.json was written by `build` before dataset.json had a typed record
    (shards written and pending counts, skipped entries with and without a shard, null labels files)."""
    from mbv3.data import metadata
    with io.open(FIXTURE, encoding="utf-8") as f:
        text = f.read()
    info = metadata.read(FIXTURE)
    assert info.to_json() == text
    assert info.complete and info.num_classes == 3 and info.classes == ["a", "b"]
    assert [s.records for s in info.splits["train"].shards] == [2, 3] and info.splits["validation"].written == 2
    assert [(s.path, s.shard) for s in info.skipped] == [
        ("notes.txt", None), ("train/a/corrupt.jpg", "train-00000-of-00002")]
    assert metadata.DatasetInfo.from_dict(json.loads(text)) == info


def test_a_fresh_build_goes_through_the_record(tmp_path):
    from mbv3.data import metadata
    src = image_folder(tmp_path / "src", {"a": 2, "b": 1})
    summary = build(src, tmp_path / "out")
    with io.open(str(tmp_path / "out" / "dataset.json"), encoding="utf-8") as f:
        text = f.read()
    assert metadata.read(str(tmp_path / "out" / "dataset.json")).to_json() == text
    loaded = data.load(str(tmp_path / "out"))
    assert loaded.to_dict() == data.info(str(tmp_path / "out"))
    assert {k: v for k, v in summary.items() if k not in ("output_dir", "reused_shards", "seconds")} == loaded.to_dict()


def _broken(tmp_path, change):
    with io.open(FIXTURE, encoding="utf-8") as f:
        meta = json.load(f)
    change(meta)
    os.makedirs(str(tmp_path / "set"))
    with io.open(str(tmp_path / "set" / "dataset.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f)
    return str(tmp_path / "set")


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("classes"), "dataset.json.classes is missing"),
    (lambda m: m["splits"]["train"]["shards"][0].pop("file"), "splits.train.shards[0].file is missing"),
    (lambda m: m.update(num_classes="3"), "num_classes must be an integer"),
    (lambda m: m["splits"]["train"].update(files=None), "splits.train.files must be an integer"),
    (lambda m: m.update(complete="yes"), "complete must be true or false"),
    (lambda m: m.update(format_version=2), "format_version 2 is not 1"),
    (lambda m: m.update(format="other"), "is not an mbv3-tfrecords file"),
    (lambda m: m.update(num_classes=7), "num_classes 7 does not match 2 classes + 1"),
    (lambda m: m["texts"].pop(), "1 texts for 2 classes"),
    (lambda m: m["splits"]["train"]["shards"][1].pop("records"), "a complete data set with a shard not written"),
    (lambda m: m["inputs"].pop("fingerprint"), "inputs.fingerprint must be a string"),
    (lambda m: m.update(complete=False), "incomplete"),
])
def test_a_missing_or_invalid_field_is_one_line_naming_it(tmp_path, change, message):
    with pytest.raises(data.DataError) as caught:
        data.load(_broken(tmp_path, change))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_record_reads_without_tensorflow():
    """The CLI checks a data set before TensorFlow's start-up: mbv3.data.metadata must not import it."""
    import subprocess
    import sys
    code = ("import sys; from mbv3.data import metadata; metadata.read(%r); "
            "sys.exit(99 if 'tensorflow' in sys.modules else 0)" % FIXTURE)
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_build_steps_plan_resume_write_finish(tmp_path):
    """build() is these four steps; between them dataset.json says how far the build got."""
    from mbv3.data import metadata, writer
    src = image_folder(tmp_path / "src", {"a": 3, "b": 2})
    out = tmp_path / "out"
    p = writer.plan_build(src, out, shards=2)
    assert not out.exists() and p.inputs["train_files"] == 5 and len(p.assignments["train"]) == 2
    info, jobs, kept = writer.resume(p, log=quiet)
    assert kept == 0 and [j.name for j in jobs] == ["train-00000-of-00002", "train-00001-of-00002"]
    on_disk = metadata.read(str(out / "dataset.json"))
    assert on_disk == info and not on_disk.complete and not any(s.written for s in on_disk.splits["train"].shards)
    with pytest.raises(MbV3Error, match="incomplete"):
        data.load(str(out))
    writer.write_shards(p, info, jobs[:1], workers=1, log=quiet)
    assert [s.written for s in metadata.read(str(out / "dataset.json")).splits["train"].shards] == [True, False]
    info, jobs, kept = writer.resume(writer.plan_build(src, out, shards=2), log=quiet)   # a rerun keeps the first
    assert kept == 1 and [j.name for j in jobs] == ["train-00001-of-00002"]
    writer.write_shards(p, info, jobs, workers=1, log=quiet)
    writer.finish(p, info, log=quiet)
    assert data.load(str(out)).splits["train"].written == 5 and data.num_examples(str(out), "train") == 5
