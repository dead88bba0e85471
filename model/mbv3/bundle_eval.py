"""Top-1 / top-5 of an exported bundle over a TFRecord split, through the serving path itself.

Each record's image goes through what the servers do with an uploaded file: Pillow's decode and
the NumPy eval transform (mbv3.numpy_preprocess; or with preprocessing="fast"/"auto" the service's
libjpeg-turbo + OpenCV path, mbv3.fast_preprocess) driven by the bundle's preprocessing record, then the
bundle's model.onnx (or, with precision="int8", its validated model-int8.onnx) in ONNX Runtime
(mbv3.onnx_classifier), after the checks a server makes before it serves. TensorFlow only reads the
TFRecords; no TensorFlow graph is built. Counting is mbv3.evaluate's (mbv3.scoring): the last partial
batch is included, and a record that does not parse or an image that does not decode is skipped and
counted. The result is printed and written as JSON beside the bundle (`<bundle>.eval-<split>.json`,
`<bundle>.eval-<split>-int8.json` for int8), never inside it: the bundle's files are hashed in its
model.json.
"""
import concurrent.futures
import os
import time

import numpy as np

from .console import format_duration, say
from . import bundle, classify, data, fast_preprocess, onnx_classifier, scoring
from .errors import ImageError, MbV3Error, first_line

PROGRESS_SECONDS = 10.0


def _records(files, log):
    """Serialized records of every shard in turn. A damaged shard ends early with a warning, as
    TFRecordDataset ends it in the checkpoint eval; the count check then reports the loss."""
    import tensorflow as tf
    for path in files:
        try:
            for record in tf.data.TFRecordDataset(path):
                yield record.numpy()
        except tf.errors.OpError as e:
            log("warning: %s is damaged; the rest of it was not read (%s)" % (path, first_line(e)))


def _prepare(record, prep, transform=fast_preprocess.reference_input):
    """(model input, label) of one serialized tf.train.Example, or None when it cannot be used
    (the cases the checkpoint eval's parse and decode skip); `transform` is one of
    fast_preprocess.select's."""
    from tensorflow.core.example import example_pb2
    from google.protobuf.message import DecodeError
    try:
        feature = example_pb2.Example.FromString(record).features.feature
        encoded = feature[data.ENCODED].bytes_list.value
        label = feature[data.LABEL].int64_list.value
        if len(encoded) != 1 or len(label) != 1:
            return None
        return transform(encoded[0], prep), int(label[0])
    except (DecodeError, ImageError):
        return None


def prepared_batches(files, prep, batch_size, workers=0, log=say, transform=fast_preprocess.reference_input):
    """The split's records in batches, each decoded and preprocessed on a thread pool: a list of
    (model input, label), or None for a record that cannot be used, per batch. The next batch is
    being decoded while the caller scores this one."""
    with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        pending = None
        for raw in _batches(_records(files, log), int(batch_size)):
            futures = [pool.submit(_prepare, r, prep, transform) for r in raw]
            if pending:
                yield [f.result() for f in pending]
            pending = futures
        if pending:
            yield [f.result() for f in pending]


def _batches(records, size):
    batch = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def result_path(bundle_dir, split, precision="f32"):
    return "%s.eval-%s%s.json" % (os.path.abspath(bundle_dir).rstrip(os.sep), split,
                                  "" if precision == "f32" else "-" + precision)


def evaluate(bundle_dir, data_dir, split="validation", batch_size=100, threads=0, workers=None, write=True,
             progress_seconds=PROGRESS_SECONDS, log=say, preprocessing="reference", precision="f32"):
    """Score a bundle over a split; returns the result record (mbv3.evaluate's fields, plus the bundle's).
    preprocessing: fast_preprocess.CHOICES, as the service's PREPROCESSING setting; precision:
    onnx_classifier.PRECISIONS."""
    try:
        transform, described = fast_preprocess.select(preprocessing)
    except (ValueError, ImportError) as e:
        raise MbV3Error("preprocessing %s: %s" % (preprocessing, e))
    loaded = onnx_classifier.verify_bundle(bundle_dir, precision)   # what a server checks before it serves
    clf = onnx_classifier.OnnxClassifier(loaded.path, threads, precision)
    info = loaded.info
    meta = data.load(data_dir)
    if info.num_classes != meta.num_classes:
        raise MbV3Error("bundle has %d classes, data set %s has %d" % (info.num_classes, data_dir, meta.num_classes))
    split, record = meta.split(split, data_dir)
    files = data.shard_files(data_dir, record)
    expected = int(record.written)
    if not expected:
        raise MbV3Error("no %s examples in %s" % (split, data_dir))
    data_labels = os.path.join(data_dir, data.LABELS)
    if os.path.exists(data_labels) and bundle.read_labels(data_labels, info.num_classes) != loaded.labels:
        log("warning: the bundle's labels.txt differs from the data set's %s (the scores count class indices)"
            % data_labels)
    prep = info.preprocessing
    log("%s: %s v%s (%s weights, step %s), input %dx%d, %s preprocessing, %s in ONNX Runtime; %d %s images"
        % (loaded.path, info.name, info.version, info.source.weights, info.source.step, prep.height, prep.width,
           described, clf.model_file, expected, split))

    tally = scoring.Tally()
    skipped = 0
    start = last = time.time()

    for prepared in prepared_batches(files, prep, batch_size, workers, log, transform):
        usable = [p for p in prepared if p is not None]
        skipped += len(prepared) - len(usable)
        if usable:
            batch = np.stack([image for image, _ in usable])
            tally.add(classify.top_k_indices(clf.logits(batch), scoring.TOP_K), np.array([label for _, label in usable]))
        now = time.time()
        if now - last >= progress_seconds:
            last = now
            rate = tally.seen / max(now - start, 1e-9)
            log("eval: %d/%d images (%.1f%%), %.1f img/s, ETA %s" % (
                tally.seen, expected, 100.0 * tally.seen / expected, rate,
                format_duration((expected - tally.seen - skipped) / rate) if rate > 0 else "?"))
    seconds = time.time() - start

    result = {
        "bundle": loaded.path, "name": info.name, "version": info.version,
        "onnx_sha256": info.files[bundle.ONNX].sha256, "precision": precision, "model_file": clf.model_file,
        "model_sha256": info.files[clf.model_file].sha256,
        "checkpoint": info.source.checkpoint, "step": info.source.step, "weights": info.source.weights,
        "data": os.path.abspath(data_dir), "split": split,
        "image_size": prep.height if prep.height == prep.width else [prep.height, prep.width],
        "runtime": "onnxruntime " + _ort_version(), "preprocessing": described,
    }
    result.update(tally.fields(expected, skipped, seconds))
    tally.check(expected, skipped, log)
    log("%s (%s v%s, %s, ONNX Runtime): top-1 %.4f  top-5 %.4f  over %d %s images" % (
        loaded.path, info.name, info.version, precision, result["top1"], result["top5"], tally.seen, split))
    if write:
        written = scoring.write_json(result, result_path(loaded.path, split, precision), log)
        if written:
            result["written_to"] = written
    return result


def _ort_version():
    import onnxruntime
    return onnxruntime.__version__
