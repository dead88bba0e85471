"""Planning a build: an ImageNet-layout folder walked into classes, labels and per-split images.

Everything the walk does not use (other folders, hidden or non-image files, dangling links,
devices) is passed over with its reason; a class folder without a single image, or a class
no labels file names, is an error. The images of each split are then dealt into shards by seed,
and the fingerprint of that assignment lets an interrupted build resume without mixing inputs.
No TensorFlow here: this is file-system work.
"""
import errno
import hashlib
import io
import json
import math
import os
import random
import stat

from .. import bundle
from .metadata import FORMAT_VERSION, LABEL_OFFSET, TRAIN, VALIDATION, DataError

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".gif", ".webp")
IMAGES_PER_SHARD = 1000
MAX_SHARDS = {TRAIN: 1024, VALIDATION: 128}


def _is_image(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def visible(names):
    return sorted(n for n in names if not n.startswith("."))


def list_dir(path):
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
    for name in list_dir(folder):
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


class PassedOver(object):
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


class Item(object):
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
            items.append(Item(path, os.path.relpath(path, images_dir).replace(os.sep, "/"), class_index[name] + LABEL_OFFSET))
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


def plan_folder(images_dir, labels_file, val_split, val_labels_file, seed):
    """Classes, readable names, {split: [items]} and the paths passed over (a list of
    {path, reason, split}) for an ImageNet-layout folder."""
    passed = PassedOver(images_dir)
    train_dir = os.path.join(images_dir, TRAIN)
    train_dir = train_dir if os.path.isdir(train_dir) else None
    val_dir = _find_val_dir(images_dir)
    if not train_dir and not val_dir:
        raise DataError("%s has neither train/ nor val/ (expected train/<class>/<image>)" % images_dir)
    used = [os.path.basename(d) for d in (train_dir, val_dir) if d]
    for name in list_dir(images_dir):
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
            splits[VALIDATION] = [Item(os.path.join(val_dir, f), os.path.relpath(os.path.join(val_dir, f), images_dir)
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


def num_shards(split, count, shards):
    """Shards for a split of `count` images: `shards` (an int, or a dict by split), else about
    IMAGES_PER_SHARD images each up to MAX_SHARDS; never more shards than images."""
    if isinstance(shards, dict):
        shards = shards.get(split)
    if shards is None:
        wanted = min(MAX_SHARDS[split], int(math.ceil(count / float(IMAGES_PER_SHARD))))
    else:
        wanted = int(shards)
        if wanted < 1:
            raise DataError("shards must be at least 1, got %s" % shards)
    return max(1, min(wanted, count))


def assign(items, count, seed):
    """Sorted, shuffled with seed (as slim shuffles), cut into `count` contiguous shards."""
    items = sorted(items, key=lambda i: i.rel)
    random.Random(seed).shuffle(items)
    bounds = [int(round(k * len(items) / float(count))) for k in range(count + 1)]
    return [items[bounds[k]:bounds[k + 1]] for k in range(count)]


def fingerprint(classes, assignments, seed, val_split):
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
