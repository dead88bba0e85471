"""TF-slim-format ImageNet TFRecords: build them from an image folder, read them with tf.data.

A built directory holds the shards (`train-00000-of-00004`, `validation-00000-of-00001`),
`labels.txt` (background, then one readable name per class, as a model bundle's) and
`dataset.json`: classes, per-split shard files and counts, every skipped input file with the
reason, and a fingerprint of the inputs so an interrupted build can be resumed without mixing.

One module per job: schema (the records and dataset.json), plan (walking the image folder into
classes, splits and shards), transcode (one image file to what a record stores), writer (the
threaded, resumable `build`) and reader (`dataset`, `info`, `num_examples`, the shard listing).
This package re-exports what callers use.
"""
from ..digits import write_digits_folder  # noqa: F401  (the demo's and tests' image folder)
from .plan import IMAGE_EXTENSIONS  # noqa: F401
from .reader import dataset, info, num_examples, read_stats, shard_files, split_record  # noqa: F401
from .schema import (ENCODED, FORMAT, FORMAT_VERSION, LABEL, LABEL_OFFSET, LABELS, METADATA, SPLITS,  # noqa: F401
                     TRAIN, VALIDATION, DataError, make_example, parse, shard_name)
from .writer import build  # noqa: F401
