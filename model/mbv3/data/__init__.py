"""TF-slim-format ImageNet TFRecords: build them from an image folder, read them with tf.data.

A built directory holds the shards (`train-00000-of-00004`, `validation-00000-of-00001`),
`labels.txt` (background, then one readable name per class, as a model bundle's) and
`dataset.json`: classes, per-split shard files and counts, every skipped input file with the
reason, and a fingerprint of the inputs so an interrupted build can be resumed without mixing.

One module per job: metadata (dataset.json as a typed record), schema (the records), plan (walking the image folder into
classes, splits and shards), transcode (one image file to what a record stores), writer (the
threaded, resumable `build`) and reader (`dataset`, `num_examples`, the shard listing, `info` as plain JSON for scripts).
This package re-exports what callers use; the TensorFlow modules load on first use, so
`mbv3.data.metadata` and `mbv3.data.plan` can be imported without TensorFlow.
"""
import importlib

from .metadata import (FORMAT, FORMAT_VERSION, LABEL_OFFSET, LABELS, METADATA, SPLITS, TRAIN,  # noqa: F401
                       VALIDATION, DataError, DatasetInfo, load)

_LAZY = {
    "write_digits_folder": "..digits",   # the demo's and tests' image folder
    "IMAGE_EXTENSIONS": ".plan",
    "dataset": ".reader", "info": ".reader", "num_examples": ".reader", "read_stats": ".reader",
    "shard_files": ".reader",
    "ENCODED": ".schema", "LABEL": ".schema", "make_example": ".schema", "parse": ".schema", "shard_name": ".schema",
    "build": ".writer",
}


def __getattr__(name):
    """The re-exported names of the TensorFlow modules, imported when first asked for (PEP 562)."""
    if name not in _LAZY:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
