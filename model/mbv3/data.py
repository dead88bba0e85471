"""TF-slim-format ImageNet TFRecords: build them from an image folder, read them with tf.data.

Records carry the features of slim's build_imagenet_data.py (image/encoded, image/format,
image/class/label, ...), so slim's readers read ours and ours read slim's. Labels are 1-based
(index in the class list + 1): 0 stays `background`, as in slim's 1001-class models.

A built directory holds the shards (`train-00000-of-00004`, `validation-00000-of-00001`),
`labels.txt` (background, then one readable name per class, as a model bundle's) and
`dataset.json`: classes, per-split shard files and counts, every skipped input file with the
reason, and a fingerprint of the inputs so an interrupted build can be resumed without mixing.
"""
from __future__ import absolute_import, division, print_function

import concurrent.futures
import datetime
import errno
import hashlib
import io
import json
import math
import os
import random
import re
import stat
import threading
import time

import tensorflow as tf

from .console import say
from . import __version__, bundle, fileio, imageprep, preprocessing
from .digits import write_digits_folder  # noqa: F401  (part of this module's API)
from .errors import MbV3Error, file_reason, first_line

FORMAT = "mbv3-tfrecords"
FORMAT_VERSION = 1
METADATA = "dataset.json"
LABELS = "labels.txt"
TRAIN, VALIDATION = "train", "validation"
SPLITS = (TRAIN, VALIDATION)
SPLIT_ALIASES = {"val": VALIDATION, "eval": VALIDATION}
LABEL_OFFSET = 1
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp")
IMAGES_PER_SHARD = 1000
MAX_SHARDS = {TRAIN: 1024, VALIDATION: 128}
JPEG_QUALITY = 95
PROGRESS_SECONDS = 3.0
INTERLEAVE_FILES = 16
_EXIF_ORIENTATION = 0x0112
_SHARD_TEMPORARY = re.compile(r"^(%s)-\d{5}-of-\d{5}\.tmp$" % "|".join(SPLITS))


class DataError(MbV3Error):
    pass


# ---------------------------------------------------------------------------------------------
# Records


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def _int64(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def _utf8(text):
    return text.encode("utf-8") if not isinstance(text, bytes) else text


def make_example(encoded, image_format, height, width, label, synset, text, filename, bboxes=()):
    """A tf.train.Example with exactly the features of slim's build_imagenet_data.py.

    bboxes: (xmin, ymin, xmax, ymax) tuples in [0, 1]; slim labels each with the image's label."""
    bboxes = list(bboxes)
    return tf.train.Example(features=tf.train.Features(feature={
        "image/height": _int64([height]),
        "image/width": _int64([width]),
        "image/colorspace": _bytes([b"RGB"]),
        "image/channels": _int64([3]),
        "image/class/label": _int64([label]),
        "image/class/synset": _bytes([_utf8(synset)]),
        "image/class/text": _bytes([_utf8(text)]),
        "image/object/bbox/xmin": _floats([b[0] for b in bboxes]),
        "image/object/bbox/ymin": _floats([b[1] for b in bboxes]),
        "image/object/bbox/xmax": _floats([b[2] for b in bboxes]),
        "image/object/bbox/ymax": _floats([b[3] for b in bboxes]),
        "image/object/bbox/label": _int64([label] * len(bboxes)),
        "image/format": _bytes([_utf8(image_format)]),
        "image/filename": _bytes([_utf8(filename)]),
        "image/encoded": _bytes([encoded]),
    }))


def shard_name(split, index, count):
    return "%s-%05d-of-%05d" % (split, index, count)


# ---------------------------------------------------------------------------------------------
# Input folder -> plan


def _is_image(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _visible(names):
    return sorted(n for n in names if not n.startswith("."))


def _list_dir(path):
    try:
        return sorted(os.listdir(path))
    except OSError as e:
        raise DataError("cannot list %s: %s" % (path, e.strerror or e))


def _kind(path):
    """'dir', 'file', or why the entry at path is neither, in words."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if not os.path.islink(path):
            return "cannot inspect it: %s" % (e.strerror or e)
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        if e.errno == errno.ENOENT:
            return "dangling symbolic link (to %s)" % target
        return "symbolic link to %s that cannot be followed: %s" % (target, e.strerror or e)
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return "not a regular file (a device, pipe or socket)"


def _scan(folder):
    """(sub-folders, image files, [(name, reason)] for everything else) directly inside folder."""
    folders, images, other = [], [], []
    for name in _list_dir(folder):
        kind = "hidden (the name starts with a dot)" if name.startswith(".") else _kind(os.path.join(folder, name))
        if kind == "dir":
            folders.append(name)
        elif kind != "file":
            other.append((name, kind))
        elif _is_image(name):
            images.append(name)
        else:
            other.append((name, "not an image file name (extensions: %s)" % " ".join(IMAGE_EXTENSIONS)))
    return folders, images, other


class _PassedOver(object):
    """Every input path a build does not use, with the reason: logged and listed in dataset.json's
    `skipped` (entries without a shard; unreadable images are added as the shards are written)."""

    def __init__(self, images_dir):
        self.images_dir, self.entries = images_dir, []

    def add(self, folder, name, reason, split):
        path = os.path.join(folder, name)
        self.entries.append({"path": os.path.relpath(path, self.images_dir).replace(os.sep, "/"),
                             "reason": reason, "split": split})

    def count(self, split):
        return sum(1 for e in self.entries if e["split"] == split)


def _read_lines(path, what):
    try:
        with io.open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except (IOError, OSError, UnicodeDecodeError) as e:
        raise DataError("cannot read %s %s: %s" % (what, path, getattr(e, "strerror", None) or e))


def _read_classes(labels_file, train_dir, train_folders):
    """(class names, readable names): the labels file's lines (`name` or `name<TAB>readable`), or
    the sorted train folders. ImageNet wnids get ImageNet's readable names."""
    if labels_file:
        names, texts = [], []
        for line in _read_lines(labels_file, "labels file"):
            name, _, text = line.partition("\t")
            names.append(name.strip())
            texts.append(text.strip() or None)
        if not names:
            raise DataError("labels file %s lists no classes" % labels_file)
    elif train_dir:
        names = list(train_folders)
        texts = [None] * len(names)
        if not names:
            raise DataError("%s holds no class folders (expected train/<class>/<image>)" % train_dir)
    else:
        raise DataError("no train/ folder to take the classes from; give a labels file")
    dupes = sorted(set(n for n in names if names.count(n) > 1))
    if dupes:
        raise DataError("labels file %s lists classes more than once: %s" % (labels_file, ", ".join(dupes[:5])))
    imagenet = dict(bundle.imagenet_classes())
    texts = [t or imagenet.get(n, n) for n, t in zip(names, texts)]
    return names, texts


class _Item(object):
    """One input image: absolute path, path relative to the images folder, 1-based label."""
    __slots__ = ("path", "rel", "label")

    def __init__(self, path, rel, label):
        self.path, self.rel, self.label = path, rel, label


def _class_folder_items(root, folders, images_dir, class_index, what, passed, split):
    """The images in root/<class>/ for each of `folders`; anything else in them is passed over. A
    class folder without a single image is an error: it would give a label nothing teaches."""
    items = []
    for name in folders:
        if name not in class_index:
            raise DataError("%s/%s is not one of the %d classes (%s)" % (what, name, len(class_index),
                            "see the labels file" if len(class_index) else "no classes"))
        folder = os.path.join(root, name)
        subfolders, images, other = _scan(folder)
        other = sorted(other + [(n, "a folder, not an image (class folders are read one level deep)")
                                for n in subfolders])
        if not images:
            hint = ""
            if other:
                count = "1 other entry" if len(other) == 1 else "%d other entries" % len(other)
                hint = " (only %s, e.g. %s: %s)" % ((count,) + other[0])
            raise DataError("class folder %s holds no images%s; add images or remove the folder" % (folder, hint))
        for entry, reason in other:
            passed.add(folder, entry, reason, split)
        for image in images:
            path = os.path.join(folder, image)
            items.append(_Item(path, os.path.relpath(path, images_dir).replace(os.sep, "/"), class_index[name] + LABEL_OFFSET))
    return items


def _ground_truth(path, filenames, class_index):
    """{filename: class} from slim's one-class-per-line file (sorted filename order) or from
    `filename class` lines."""
    lines = _read_lines(path, "validation labels file")
    if lines and all(line in class_index for line in lines):
        if len(lines) != len(filenames):
            raise DataError("validation labels file %s has %d labels for %d images in the validation folder"
                            % (path, len(lines), len(filenames)))
        return dict(zip(filenames, lines))
    truth = {}
    for number, line in enumerate(lines, 1):
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or parts[1] not in class_index:
            raise DataError("%s line %d: expected 'filename class' with a known class (or one class per line "
                            "in sorted filename order), got %r" % (path, number, line))
        truth[os.path.basename(parts[0])] = parts[1]
    missing = [f for f in filenames if f not in truth]
    if missing:
        raise DataError("validation labels file %s has no class for %d images, e.g. %s"
                        % (path, len(missing), ", ".join(missing[:3])))
    return truth


def _find_val_dir(images_dir):
    found = [d for d in ("val", VALIDATION) if os.path.isdir(os.path.join(images_dir, d))]
    if len(found) > 1:
        raise DataError("%s has both val/ and validation/; keep one" % images_dir)
    return os.path.join(images_dir, found[0]) if found else None


def _hold_out(items, fraction, seed):
    """Split items into (train, validation): `fraction` of each class, chosen by seed and class."""
    by_label = {}
    for item in items:
        by_label.setdefault(item.label, []).append(item)
    train, val = [], []
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda i: i.rel)
        random.Random("%d/%d" % (seed, label)).shuffle(group)
        count = len(group)
        held = 0 if count < 2 else min(count - 1, max(1, int(round(count * fraction))))
        val.extend(group[:held])
        train.extend(group[held:])
    return train, val


def _plan(images_dir, labels_file, val_split, val_labels_file, seed):
    """Classes, readable names, {split: [items]} and the paths passed over (a list of
    {path, reason, split}) for an ImageNet-layout folder."""
    passed = _PassedOver(images_dir)
    train_dir = os.path.join(images_dir, TRAIN)
    train_dir = train_dir if os.path.isdir(train_dir) else None
    val_dir = _find_val_dir(images_dir)
    if not train_dir and not val_dir:
        raise DataError("%s has neither train/ nor val/ (expected train/<class>/<image>)" % images_dir)
    used = [os.path.basename(d) for d in (train_dir, val_dir) if d]
    for name in _list_dir(images_dir):
        if name not in used:
            passed.add(images_dir, name, "not a train/, val/ or validation/ folder", None)
    train_folders = []
    if train_dir:
        train_folders, loose, other = _scan(train_dir)
        for name in loose:
            passed.add(train_dir, name, "an image outside the class folders", TRAIN)
        for name, reason in other:
            passed.add(train_dir, name, reason, TRAIN)
    classes, texts = _read_classes(labels_file, train_dir, train_folders)
    class_index = dict((name, i) for i, name in enumerate(classes))
    splits = {}
    if train_dir:
        splits[TRAIN] = _class_folder_items(train_dir, train_folders, images_dir, class_index, TRAIN, passed, TRAIN)
    if val_dir:
        if val_split:
            raise DataError("%s has a validation folder; val_split is only for data sets without one" % images_dir)
        folders, flat, other = _scan(val_dir)
        if folders and flat:
            raise DataError("%s mixes class folders and loose images; use one layout" % val_dir)
        for name, reason in other:
            passed.add(val_dir, name, reason, VALIDATION)
        if folders:
            if val_labels_file:
                raise DataError("%s is organised in class folders; a validation labels file is only for "
                                "a flat folder of images" % val_dir)
            splits[VALIDATION] = _class_folder_items(val_dir, folders, images_dir, class_index,
                                                     os.path.basename(val_dir), passed, VALIDATION)
        elif flat:
            if not val_labels_file:
                raise DataError("%s holds images without class folders; give a validation labels file "
                                "(one class per line, or 'filename class' lines)" % val_dir)
            truth = _ground_truth(val_labels_file, flat, class_index)
            splits[VALIDATION] = [_Item(os.path.join(val_dir, f), os.path.relpath(os.path.join(val_dir, f), images_dir)
                                        .replace(os.sep, "/"), class_index[truth[f]] + LABEL_OFFSET) for f in flat]
    elif val_labels_file:
        raise DataError("a validation labels file was given but %s has no val/ folder" % images_dir)
    if val_split:
        splits[TRAIN], splits[VALIDATION] = _hold_out(splits.get(TRAIN, []), val_split, seed)
    if train_dir and not splits[TRAIN]:
        raise DataError("no images under %s (extensions: %s)" % (train_dir, " ".join(IMAGE_EXTENSIONS)))
    splits = dict((s, items) for s, items in splits.items() if items)
    if not splits:
        raise DataError("no images found under %s" % images_dir)
    return classes, texts, splits, passed


def _num_shards(split, count, shards):
    if isinstance(shards, dict):
        shards = shards.get(split)
    if shards is None:
        wanted = min(MAX_SHARDS[split], int(math.ceil(count / float(IMAGES_PER_SHARD))))
    else:
        wanted = int(shards)
        if wanted < 1:
            raise DataError("shards must be at least 1, got %s" % shards)
    return max(1, min(wanted, count))


def _assign(items, count, seed):
    """Sorted, shuffled with seed (as slim shuffles), cut into `count` contiguous shards."""
    items = sorted(items, key=lambda i: i.rel)
    random.Random(seed).shuffle(items)
    bounds = [int(round(k * len(items) / float(count))) for k in range(count + 1)]
    return [items[bounds[k]:bounds[k + 1]] for k in range(count)]


def _fingerprint(classes, assignments, seed, val_split):
    """sha256 of everything that decides the shards' contents: classes, seed, and for every
    shard its files with their label, size and modification time (content edits that keep both
    are not noticed)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([FORMAT_VERSION, classes, seed, val_split]).encode("utf-8"))
    for split in sorted(assignments):
        for index, shard in enumerate(assignments[split]):
            digest.update(("\n%s %d %d\n" % (split, index, len(assignments[split]))).encode("utf-8"))
            for item in shard:
                try:
                    st = os.stat(item.path)
                    size, mtime = st.st_size, int(st.st_mtime)
                except OSError:
                    size, mtime = -1, -1
                digest.update(("%s\t%d\t%d\t%d\n" % (item.rel, item.label, size, mtime)).encode("utf-8"))
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Checking and writing images


class _Skip(Exception):
    """An input image that cannot be used; the message is the reason."""


def _plain_png(data):
    """8-bit grayscale or RGB without alpha: bytes TensorFlow decodes to what Pillow shows."""
    return len(data) > 25 and data[12:16] == b"IHDR" and data[24] == 8 and data[25] in (0, 2)


def _prepare(path):
    """(encoded bytes, 'JPEG'|'PNG', height, width, converted) for one input file, or _Skip.

    8-bit RGB/grayscale JPEG and PNG are kept as they are; everything else (CMYK, palette, alpha,
    16-bit, BMP, GIF, WebP, JPEGs with an EXIF rotation) is turned upright as mbv3.imageprep does
    on the server, converted to RGB and re-encoded as JPEG quality 95 without chroma subsampling.
    The final bytes are then decoded by TensorFlow, as the reader will: what passes here, reads."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (IOError, OSError) as e:
        raise _Skip("cannot read file: %s" % (e.strerror or e))
    if not data:
        raise _Skip("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, mode = img.format, img.mode
            try:
                orientation = img.getexif().get(_EXIF_ORIENTATION, 1) if fmt == "JPEG" else 1
            except Exception:  # a broken EXIF block: TensorFlow ignores EXIF anyway
                orientation = 1
            img.load()
            keep = ((fmt == "JPEG" and mode in ("RGB", "L") and orientation in (None, 1))
                    or (fmt == "PNG" and mode in ("RGB", "L") and _plain_png(data)))
            if keep:
                encoded, converted = data, False
            else:
                rgb = Image.fromarray(imageprep.to_rgb(ImageOps.exif_transpose(img)))  # the server's conversion
                out = io.BytesIO()
                rgb.save(out, "JPEG", quality=JPEG_QUALITY, subsampling=0)  # 4:4:4: keep the colour detail
                encoded, fmt, converted = out.getvalue(), "JPEG", True
    except UnidentifiedImageError:
        raise _Skip("not an image in a format Pillow recognises")
    except Exception as e:  # OSError, SyntaxError, DecompressionBombError, ...: one odd file must not stop a build
        raise _Skip("cannot decode image: %s" % (str(e) or e.__class__.__name__))
    try:
        shape = tf.io.decode_image(encoded, channels=3, expand_animations=False).shape
    except (tf.errors.OpError, ValueError) as e:
        raise _Skip("TensorFlow cannot decode it: %s" % first_line(e))
    return encoded, fmt, int(shape[0]), int(shape[1]), converted


class _Progress(object):
    """Images done / total, rate and ETA, shared by the writer threads."""

    def __init__(self, total, log):
        self.total, self.log = total, log
        self.done = self.skipped = 0
        self.start = time.time()
        self.lock = threading.Lock()

    def add(self, skipped=False):
        with self.lock:
            self.done += 1
            self.skipped += int(skipped)

    def report(self, final=False):
        elapsed = max(time.time() - self.start, 1e-6)
        rate = self.done / elapsed
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        when = "in %s" % _clock(elapsed) if final else "ETA %s" % (_clock(eta) if rate > 0 else "?")
        self.log("build: %d/%d images (%d skipped), %.0f images/s, %s"
                 % (self.done, self.total, self.skipped, rate, when))


def _clock(seconds):
    seconds = int(round(seconds))
    return "%d:%02d:%02d" % (seconds // 3600, seconds // 60 % 60, seconds % 60)


def _write_shard(final, items, classes, texts, progress, stop, log):
    """Write one shard under a temporary name and rename it into place when complete."""
    tmp = final + ".tmp"
    written, skipped, converted = 0, [], 0
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for item in items:
                if stop.is_set():
                    raise _Stopped()
                try:
                    encoded, fmt, height, width, was_converted = _prepare(item.path)
                except _Skip as e:
                    skipped.append({"path": item.rel, "reason": str(e)})
                    log("skipped %s: %s" % (item.path, e))
                    progress.add(skipped=True)
                    continue
                index = item.label - LABEL_OFFSET
                example = make_example(encoded, fmt, height, width, item.label, classes[index], texts[index], item.rel)
                writer.write(example.SerializeToString())
                written += 1
                converted += int(was_converted)
                progress.add()
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return {"records": written, "skipped": skipped, "converted": converted}


class _Stopped(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# build()


def _write_json(path, value):
    fileio.write_text(path, json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def _load_json(path):
    try:
        with io.open(path, encoding="utf-8") as f:
            return json.load(f)
    except (IOError, OSError) as e:
        raise DataError("cannot read %s: %s" % (path, e.strerror or e))
    except ValueError as e:
        raise DataError("%s is not valid JSON (%s)" % (path, e))


def _previous_build(output_dir, fingerprint, inputs):
    """The shard records of an earlier build of the same inputs into output_dir, or {}; refuses a
    directory that holds anything else."""
    meta_path = os.path.join(output_dir, METADATA)
    if not os.path.exists(meta_path):
        foreign = [n for n in _visible(_list_dir(output_dir)) if not _is_temporary(n)]
        if foreign:
            raise DataError("output directory %s is not empty and holds no %s (e.g. %s); choose a new or empty "
                            "directory" % (output_dir, METADATA, foreign[0]))
        return {}
    previous = _load_json(meta_path)
    if previous.get("format") != FORMAT:
        raise DataError("%s is not an %s file; choose another output directory" % (meta_path, FORMAT))
    old = previous.get("inputs", {})
    if old.get("fingerprint") != fingerprint:
        before = ", ".join("%s=%s" % (k, old.get(k)) for k in sorted(inputs) if k != "fingerprint")
        now = ", ".join("%s=%s" % (k, inputs.get(k)) for k in sorted(inputs) if k != "fingerprint")
        raise DataError("%s holds a data set built from other inputs (then: %s; now: %s%s); use a new output "
                        "directory or delete this one" % (output_dir, before, now,
                                                          "; files changed" if before == now else ""))
    done = {}
    for split in previous.get("splits", {}).values():
        for shard in split.get("shards", []):
            if "records" in shard and os.path.exists(os.path.join(output_dir, shard["file"])):
                done[shard["file"]] = shard
    skipped = [s for s in previous.get("skipped", []) if s.get("shard") in done]
    return {"shards": done, "skipped": skipped, "created": previous.get("created")}


def _is_temporary(name):
    """What a killed build leaves: a shard's `<split>-00000-of-00004.tmp`, dataset.json's fileio temporary."""
    return bool(_SHARD_TEMPORARY.match(name)) or fileio.is_temporary(name, (METADATA,))


def build(images_dir, output_dir, shards=None, labels_file=None, val_split=0.0, val_labels_file=None,
          workers=None, seed=0, log=say):
    """Write slim-format TFRecord shards, labels.txt and dataset.json for an ImageNet-layout folder.

    images_dir: train/<class>/<image> and optionally val/<class>/<image> (or validation/), or a
    flat val/ with val_labels_file (slim's one class per line in sorted filename order, or
    `filename class` lines). Without a validation folder, val_split > 0 holds out that fraction
    of every class of train (chosen by seed). labels_file: the classes in label order, one per
    line (`name` or `name<TAB>readable name`); default: the sorted train folders.
    shards: shards per split (an int for both, or {"train": n, "validation": m}); default about
    1,000 images each, at most 1024 train / 128 validation. Shards are written by `workers` threads
    (default: the CPU count). A rerun with the same inputs keeps the shards already written;
    different inputs are refused. Returns the dataset.json record plus `reused_shards` and `seconds`.
    """
    started = time.time()
    images_dir = os.path.abspath(os.path.expanduser(str(images_dir)))
    output_dir = os.path.abspath(os.path.expanduser(str(output_dir)))
    if not os.path.isdir(images_dir):
        raise DataError("no image folder at %s" % images_dir)
    if val_split is None:
        val_split = 0.0
    if not 0.0 <= float(val_split) < 1.0:
        raise DataError("val_split must be at least 0 and below 1, got %s" % val_split)
    val_split = float(val_split)
    classes, texts, items, passed = _plan(images_dir, labels_file, val_split, val_labels_file, seed)
    assignments = dict((split, _assign(split_items, _num_shards(split, len(split_items), shards), seed))
                       for split, split_items in items.items())
    inputs = {"seed": seed, "val_split": val_split, "classes": len(classes)}
    for split in sorted(items):
        inputs[split + "_files"] = len(items[split])
        inputs[split + "_shards"] = len(assignments[split])
    inputs["fingerprint"] = _fingerprint(classes, assignments, seed, val_split)

    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as e:
        raise DataError("cannot create output directory %s: %s" % (output_dir, e.strerror or e))
    previous = _previous_build(output_dir, inputs["fingerprint"], inputs)
    removed = fileio.remove_temporaries(output_dir, _is_temporary)
    if removed:
        log("build: removed %d temporary files an interrupted build left: %s" % (len(removed), ", ".join(removed)))
    done = dict(previous.get("shards", {}))
    skipped = passed.entries + list(previous.get("skipped", []))

    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "complete": False,
        "created": previous.get("created") or datetime.datetime.now().replace(microsecond=0).isoformat(),
        "mbv3_version": __version__,
        "source": images_dir, "labels_file": labels_file and os.path.abspath(labels_file),
        "val_labels_file": val_labels_file and os.path.abspath(val_labels_file),
        "num_classes": len(classes) + LABEL_OFFSET, "label_offset": LABEL_OFFSET,
        "classes": classes, "texts": texts, "inputs": inputs, "splits": {}, "skipped": skipped,
    }
    jobs = []
    for split in sorted(assignments):
        count = len(assignments[split])
        entries = []
        for index, shard_items in enumerate(assignments[split]):
            name = shard_name(split, index, count)
            entries.append(done.get(name) or {"file": name, "images": len(shard_items)})
            if name not in done:
                jobs.append((split, index, name, shard_items))
        meta["splits"][split] = {"shards": entries, "files": len(items[split]), "ignored": passed.count(split)}
    meta_path = os.path.join(output_dir, METADATA)
    _write_json(meta_path, meta)
    for entry in passed.entries:
        log("skipped %s: %s" % (os.path.join(images_dir, entry["path"]), entry["reason"]))
    if TRAIN in items:
        taught = set(i.label for i in items[TRAIN])
        without = [c for i, c in enumerate(classes) if i + LABEL_OFFSET not in taught]
        if without:
            log("train: %d classes of the labels file have no folder in %s, so no images: %s%s"
                % (len(without), os.path.join(images_dir, TRAIN), ", ".join(without[:10]),
                   ", ..." if len(without) > 10 else ""))
    if done:
        log("build: %d shards already written by an earlier run of the same inputs, kept" % len(done))

    progress = _Progress(sum(len(j[3]) for j in jobs), log)
    stop = threading.Event()
    workers = max(1, int(workers or os.cpu_count() or 1))
    if jobs:
        log("build: %d images into %d shards in %s, %d worker threads"
            % (progress.total, len(jobs), output_dir, workers))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = dict((pool.submit(_write_shard, os.path.join(output_dir, name), shard_items, classes,
                                    texts, progress, stop, log), (split, index, name))
                       for split, index, name, shard_items in jobs)
        pending = set(futures)
        last = time.time()
        try:
            while pending:
                finished, pending = concurrent.futures.wait(pending, timeout=PROGRESS_SECONDS,
                                                            return_when=concurrent.futures.FIRST_COMPLETED)
                failed = [f for f in finished if f.exception() is not None]
                for future in finished:
                    if future in failed:
                        continue
                    split, index, name = futures[future]
                    result = future.result()
                    for entry in result["skipped"]:
                        entry.update(split=split, shard=name)
                    skipped.extend(result["skipped"])
                    meta["splits"][split]["shards"][index] = {
                        "file": name, "images": len(assignments[split][index]), "records": result["records"],
                        "skipped": len(result["skipped"]), "converted": result["converted"]}
                    _write_json(meta_path, meta)  # a rerun keeps what is recorded here
                for future in failed:  # after recording the shards that did finish
                    try:
                        future.result()
                    except (IOError, OSError, tf.errors.OpError) as e:
                        raise DataError("cannot write shard %s: %s" % (os.path.join(output_dir, futures[future][2]),
                                                                      first_line(e)))
                if time.time() - last >= PROGRESS_SECONDS and pending:
                    progress.report()
                    last = time.time()
        except BaseException:  # the first failure (or Ctrl-C) stops the other writers before the pool joins them
            stop.set()
            raise
    if jobs:
        progress.report(final=True)

    for split, record in meta["splits"].items():
        record["written"] = sum(s["records"] for s in record["shards"])
        record["skipped"] = sum(s["skipped"] for s in record["shards"])
        record["converted"] = sum(s["converted"] for s in record["shards"])
        record["num_examples"] = record["written"]
    meta["skipped"] = sorted(skipped, key=lambda s: (s["split"] or "", s["path"]))
    meta["complete"] = True
    try:
        bundle.write_labels(os.path.join(output_dir, LABELS), [bundle.BACKGROUND] + texts)
    except OSError as e:
        raise DataError("cannot write %s: %s" % (os.path.join(output_dir, LABELS), file_reason(e)))
    _write_json(meta_path, meta)
    for split in sorted(meta["splits"]):
        record = meta["splits"][split]
        log("%s: %d images written, %d unreadable skipped, %d other paths skipped, %d converted to JPEG, %d shards"
            % (split, record["written"], record["skipped"], record["ignored"], record["converted"],
               len(record["shards"])))
    summary = dict(meta)
    summary.update(output_dir=output_dir, reused_shards=len(done), seconds=round(time.time() - started, 3))
    return summary


# ---------------------------------------------------------------------------------------------
# Reading


def info(data_dir):
    """The data set's dataset.json as a dict (classes, num_classes, splits with shards and counts)."""
    data_dir = os.path.expanduser(str(data_dir))
    if not os.path.isdir(data_dir):
        raise DataError("no data set at %s (not a directory)" % data_dir)
    meta_path = os.path.join(data_dir, METADATA)
    if not os.path.exists(meta_path):
        raise DataError("%s holds no %s: not a data set written by `mbv3 data build` (mbv3.data.build)"
                        % (data_dir, METADATA))
    meta = _load_json(meta_path)
    if meta.get("format") != FORMAT:
        raise DataError("%s is not an %s file" % (meta_path, FORMAT))
    if not meta.get("complete"):
        raise DataError("data set %s is incomplete (its build was interrupted); run the build again" % data_dir)
    return meta


def _split(meta, data_dir, split):
    split = SPLIT_ALIASES.get(split, split)
    record = meta.get("splits", {}).get(split)
    if not record or not record.get("shards"):
        raise DataError("data set %s has no shards for split %r (it has: %s)"
                        % (data_dir, split, ", ".join(sorted(meta.get("splits", {}))) or "none"))
    return split, record


def num_examples(data_dir, split):
    """Images written to a split (0 if every one was skipped)."""
    meta = info(data_dir)
    return int(_split(meta, data_dir, split)[1]["written"])


_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    "image/object/bbox/ymin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/xmin": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/ymax": tf.io.VarLenFeature(tf.float32),
    "image/object/bbox/xmax": tf.io.VarLenFeature(tf.float32),
}


def parse(record):
    """(encoded image, int32 label, float [N, 4] boxes as ymin, xmin, ymax, xmax) of one record."""
    features = tf.io.parse_single_example(record, _FEATURES)
    bbox = tf.stack([tf.sparse.to_dense(features["image/object/bbox/" + k]) for k in ("ymin", "xmin", "ymax", "xmax")],
                    axis=1)
    return features["image/encoded"], tf.cast(features["image/class/label"], tf.int32), bbox


def _passes(repeat, training):
    """None for forever, else the number of passes."""
    if repeat is None:
        return None if training else 1
    if repeat is True or (not isinstance(repeat, bool) and repeat < 0):
        return None
    if repeat is False:
        return 1
    if int(repeat) < 1:
        raise DataError("repeat must be a number of passes (at least 1), -1/True for forever, or None")
    return int(repeat)


def dataset(data_dir, split, batch_size, image_size, training, repeat=None, shuffle_buffer=10000,
            deterministic=False, seed=None, drop_remainder=None, input_context=None, stats=None):
    """tf.data.Dataset of (images float32 [B, S, S, 3] in [-1, 1], labels int32 [B]) from a split.

    Pipeline: shard files (shuffled when training; split between input pipelines by input_context,
    by record when there are fewer files than pipelines) -> parallel interleave of TFRecordDatasets
    -> shuffle -> repeat (default: forever when training, once for eval) -> parse, decode,
    preprocess (preprocessing.train_transform with the record's boxes, or eval_transform) ->
    skip failures -> batch (drop_remainder default: True when training) -> prefetch.
    Repeat comes before the map so every pass gets fresh crops and flips.

    Randomness: crops and flips use stateless ops seeded by [seed, position in the stream], so
    deterministic=True (which also fixes the order, and makes seed default to 0) gives the same
    batches every time the same call is made. Without a seed one is drawn at random.

    Bad data never stops the pipeline: a record that does not parse or an image that does not
    decode is dropped by tf.data.experimental.ignore_errors(), and a corrupt or truncated shard
    ends that file early (TFRecordDataset moves on to the next file). When `stats` is a dict it
    receives int64 tf.Variables counted inside the map function: "records" (records read),
    "images" (images produced) and "skipped" (incremented as a record enters the map, decremented
    once its image is made, so a failure leaves it counted), plus "expected" (records per pass in
    dataset.json for this pipeline's files; None when sharding by record). read_stats(stats) gives
    the numbers. They are exact once iteration has ended (during it, parallel calls and
    prefetching run ahead); after one full pass, expected - records records were lost to damaged
    shards. They need eager mode and count this pipeline only.
    """
    data_dir = os.path.expanduser(str(data_dir))
    meta = info(data_dir)
    split, record = _split(meta, data_dir, split)
    files, counts = [], []
    for shard in record["shards"]:
        path = os.path.join(data_dir, shard["file"])
        if not os.path.exists(path):
            raise DataError("data set %s: shard %s is missing" % (data_dir, shard["file"]))
        files.append(path)
        counts.append(int(shard.get("records", 0)))
    if int(batch_size) < 1 or int(image_size) < 1:
        raise DataError("batch_size and image_size must be positive, got %s and %s" % (batch_size, image_size))
    passes = _passes(repeat, training)
    if drop_remainder is None:
        drop_remainder = bool(training)
    if seed is None:
        seed = 0 if deterministic else random.SystemRandom().randrange(1 << 31)
    seed = int(seed)
    pipelines, pipeline_id = 1, 0
    if input_context is not None:
        pipelines, pipeline_id = int(input_context.num_input_pipelines), int(input_context.input_pipeline_id)
    by_record = pipelines > 1 and len(files) < pipelines
    if pipelines > 1 and not by_record:
        files, counts = files[pipeline_id::pipelines], counts[pipeline_id::pipelines]
    autotune = tf.data.experimental.AUTOTUNE

    ds = tf.data.Dataset.from_tensor_slices(files)
    if training and not by_record:  # by record, every pipeline must read the files in one order
        ds = ds.shuffle(len(files), seed=seed)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), INTERLEAVE_FILES), block_length=1,
                       num_parallel_calls=autotune, deterministic=True if by_record else None)
    if by_record:
        ds = ds.shard(pipelines, pipeline_id)
    if training and shuffle_buffer and shuffle_buffer > 1:
        ds = ds.shuffle(int(shuffle_buffer), seed=seed + 1)
    ds = ds.repeat(passes) if passes != 1 else ds

    count = _counting(stats, None if by_record else sum(counts), passes)

    # Different pipelines get different random streams.
    element_seed = (seed * 1000003 + pipeline_id) % (1 << 62)

    @count
    def train_map(position, serialized):
        encoded, label, bbox = parse(serialized)
        seeds = tf.stack([tf.constant(element_seed, tf.int64), position])
        return preprocessing.train_transform(encoded, image_size, bbox=bbox, seed=seeds), label

    @count
    def eval_map(serialized):
        encoded, label, _ = parse(serialized)
        return preprocessing.eval_transform(encoded, image_size), label

    if training:
        ds = ds.enumerate().map(train_map, num_parallel_calls=autotune)
    else:
        ds = ds.map(eval_map, num_parallel_calls=autotune)
    if hasattr(ds, "ignore_errors"):  # TF >= 2.10: the same transformation, without a deprecation warning
        ds = ds.ignore_errors()
    else:
        ds = ds.apply(tf.data.experimental.ignore_errors())
    ds = ds.batch(int(batch_size), drop_remainder=drop_remainder).prefetch(autotune)
    options = tf.data.Options()
    options.experimental_deterministic = bool(deterministic or by_record)
    return ds.with_options(options)


def _counting(stats, expected, passes):
    """A decorator for map functions (..., serialized record) -> (image, label) that counts into
    tf.Variables put in `stats`; the identity when stats is None."""
    if stats is None:
        return lambda fn: fn
    records, images, skipped = (tf.Variable(0, dtype=tf.int64, trainable=False) for _ in range(3))
    stats.update(records=records, images=images, skipped=skipped, expected=expected, passes=passes)

    def decorate(fn):
        def counted(*args):
            with tf.control_dependencies([records.assign_add(1), skipped.assign_add(1)]):
                args = args[:-1] + (tf.identity(args[-1]),)
            image, label = fn(*args)
            with tf.control_dependencies([image, label]):
                made = [skipped.assign_sub(1), images.assign_add(1)]
            with tf.control_dependencies(made):
                return tf.identity(image), tf.identity(label)
        return counted
    return decorate


def read_stats(stats):
    """The counts in the `stats` dict dataset() filled, as ints: records, images, skipped,
    expected (see dataset())."""
    counts = dict((k, int(stats[k].numpy())) for k in ("records", "images", "skipped"))
    counts["expected"] = stats.get("expected")
    return counts
