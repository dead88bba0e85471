"""What a data set's records are: TF-slim's Example features and the shard names (dataset.json is
mbv3.data.metadata's).

Records carry the features of slim's build_imagenet_data.py (image/encoded, image/format,
image/class/label, ...), so slim's readers read ours and ours read slim's. Labels are 1-based
(index in the class list + 1): 0 stays `background`, as in slim's 1001-class models.
"""
import tensorflow as tf

ENCODED, LABEL = "image/encoded", "image/class/label"   # the two features every reader needs


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
        LABEL: _int64([label]),
        "image/class/synset": _bytes([_utf8(synset)]),
        "image/class/text": _bytes([_utf8(text)]),
        "image/object/bbox/xmin": _floats([b[0] for b in bboxes]),
        "image/object/bbox/ymin": _floats([b[1] for b in bboxes]),
        "image/object/bbox/xmax": _floats([b[2] for b in bboxes]),
        "image/object/bbox/ymax": _floats([b[3] for b in bboxes]),
        "image/object/bbox/label": _int64([label] * len(bboxes)),
        "image/format": _bytes([_utf8(image_format)]),
        "image/filename": _bytes([_utf8(filename)]),
        ENCODED: _bytes([encoded]),
    }))


def shard_name(split, index, count):
    return "%s-%05d-of-%05d" % (split, index, count)


_FEATURES = {
    ENCODED: tf.io.FixedLenFeature([], tf.string),
    LABEL: tf.io.FixedLenFeature([], tf.int64),
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
    return features[ENCODED], tf.cast(features[LABEL], tf.int32), bbox
