"""The tf.data reader of a built data set, and what dataset.json says about it.

`dataset()` is the one input pipeline of training and checkpoint evaluation; `num_examples()` and
the shard listing serve those and the bundle evaluation (mbv3.bundle_eval), which reads the same
shards without TensorFlow's image ops. dataset.json is read through mbv3.data.metadata.
"""
import os
import random

import tensorflow as tf

from .. import tf_preprocess
from . import metadata, schema
from .metadata import DataError

INTERLEAVE_FILES = 16


def info(data_dir):
    """The finished data set's dataset.json as plain JSON, for scripts; read and checked as
    mbv3.data.metadata.DatasetInfo, which load() returns."""
    return metadata.load(data_dir).to_dict()


def shard_files(data_dir, record):
    """The paths of a split's shards (`record`: a metadata.Split), each checked to exist."""
    files = []
    for shard in record.shards:
        path = os.path.join(data_dir, shard.file)
        if not os.path.exists(path):
            raise DataError("data set %s: shard %s is missing" % (data_dir, shard.file))
        files.append(path)
    return files


def num_examples(data_dir, split):
    """Images written to a split (0 if every one was skipped)."""
    return int(metadata.load(data_dir).split(split, data_dir)[1].written)


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
            deterministic=False, seed=None, drop_remainder=None, input_context=None, stats=None, crop_area_min=None,
            flip=True):
    """tf.data.Dataset of (images float32 [B, S, S, 3] in [-1, 1], labels int32 [B]) from a split.

    Pipeline: shard files (shuffled when training; split between input pipelines by input_context,
    by record when there are fewer files than pipelines) -> parallel interleave of TFRecordDatasets
    -> shuffle -> repeat (default: forever when training, once for eval) -> parse, decode,
    preprocess (tf_preprocess.train_transform with the record's boxes, or eval_transform) ->
    skip failures -> batch (drop_remainder default: True when training) -> prefetch.
    Repeat comes before the map so every pass gets fresh crops and flips; crop_area_min and flip are
    train_transform's.

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
    split, record = metadata.load(data_dir).split(split, data_dir)
    files = shard_files(data_dir, record)
    counts = [int(shard.records or 0) for shard in record.shards]
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
        encoded, label, bbox = schema.parse(serialized)
        seeds = tf.stack([tf.constant(element_seed, tf.int64), position])
        return tf_preprocess.train_transform(encoded, image_size, bbox=bbox, seed=seeds, crop_area_min=crop_area_min,
                                             flip=flip), label

    @count
    def eval_map(serialized):
        encoded, label, _ = schema.parse(serialized)
        return tf_preprocess.eval_transform(encoded, image_size), label

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
