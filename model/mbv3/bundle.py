"""The model bundle: the directory `mbv3 export` writes and every server loads.

    model.onnx   ONNX Runtime (any CPU)
    model.pb     frozen GraphDef for ATC (input `input`, output `logits`)
    model.om     later, written by `make om` on a CANN machine
    model.json   metadata: source, architecture, input/output, preprocessing, labels, sha256s
    labels.txt   one label per class index (index 0 = background for slim's 1001 classes)

No TensorFlow here: the inference service imports this module.
"""
from __future__ import absolute_import, division, print_function

import hashlib
import io
import json
import os
from dataclasses import dataclass

from .errors import BundleError

FORMAT = "mbv3-bundle"
FORMAT_VERSION = 1
METADATA = "model.json"
LABELS = "labels.txt"
ONNX = "model.onnx"
FROZEN = "model.pb"
OM = "model.om"
BACKGROUND = "background"
_RESOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "resources")


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def imagenet_classes():
    """[(wnid, readable name)] for the 1000 ImageNet-1k classes in sorted-synset order."""
    with io.open(os.path.join(_RESOURCES, "imagenet_classes.tsv"), encoding="utf-8") as f:
        return [tuple(line.rstrip("\n").split("\t", 1)) for line in f if line.strip()]


def default_labels(num_classes):
    """ImageNet's names for slim's 1001/1000-class heads, numbered placeholders otherwise."""
    if num_classes == 1001:
        return [BACKGROUND] + [name for _, name in imagenet_classes()]
    if num_classes == 1000:
        return [name for _, name in imagenet_classes()]
    return [BACKGROUND] + ["class_%d" % i for i in range(1, num_classes)]


def read_labels(path, num_classes):
    """Labels from a file of num_classes lines, or num_classes - 1 (background is then prepended)."""
    try:
        with io.open(path, encoding="utf-8") as f:
            labels = [line.rstrip("\r\n") for line in f if line.strip()]
    except (IOError, OSError, UnicodeDecodeError) as e:
        raise BundleError("cannot read labels file %s: %s" % (path, e))
    if len(labels) == num_classes - 1:
        labels = [BACKGROUND] + labels
    if len(labels) != num_classes:
        raise BundleError("labels file %s has %d labels; the model has %d classes (give %d, or %d without background)"
                          % (path, len(labels), num_classes, num_classes, num_classes - 1))
    return labels


def write_labels(path, labels):
    with io.open(path, "w", encoding="utf-8") as f:
        f.write(u"".join(label + u"\n" for label in labels))


@dataclass
class Bundle:
    path: str
    metadata: dict
    labels: list

    def file(self, name):
        return os.path.join(self.path, name)

    @property
    def name(self):
        return self.metadata.get("name", "mobilenet_v3")

    @property
    def version(self):
        return str(self.metadata.get("version", "1"))


def load(path, verify=False):
    """Read a bundle's metadata and labels; with verify, check every recorded sha256."""
    meta_path = os.path.join(path, METADATA)
    if not os.path.isdir(path):
        raise BundleError("no model bundle at %s (not a directory)" % path)
    try:
        with io.open(meta_path, encoding="utf-8") as f:
            metadata = json.load(f)
    except (IOError, OSError) as e:
        raise BundleError("%s is not a model bundle: cannot read %s (%s)" % (path, METADATA, e.strerror or e))
    except ValueError as e:
        raise BundleError("%s: %s is not valid JSON (%s)" % (path, METADATA, e))
    if metadata.get("format") != FORMAT:
        raise BundleError("%s: %s is not an %s metadata file" % (path, METADATA, FORMAT))
    if verify:
        for name, info in metadata.get("files", {}).items():
            fpath = os.path.join(path, name)
            if not os.path.exists(fpath):
                raise BundleError("bundle %s: %s is missing" % (path, name))
            if sha256(fpath) != info["sha256"]:
                raise BundleError("bundle %s: %s does not match its sha256 in %s" % (path, name, METADATA))
    labels = read_labels(os.path.join(path, LABELS), metadata["output"]["num_classes"])
    return Bundle(os.path.abspath(path), metadata, labels)
