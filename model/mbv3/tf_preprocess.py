"""Train and eval transforms in TensorFlow ops, for tf.data map functions (see mbv3.data).

Train: TF-slim's inception_preprocessing train path without colour distortion, as the recipe
uses it: a random crop covering 5-100% of the image (aspect 3:4 to 4:3, around the labelled boxes
when the record has them), bilinear resize, random left-right flip, pixels to [-1, 1]. A recipe
may narrow the crop (data.crop_area_min) and drop the flip (data.flip): an 8x8 digit survives
neither a 5% crop nor a mirror, and a short run learns much faster without them.
Eval: central 87.5% crop, bilinear resize, pixels to [-1, 1]; mbv3.numpy_preprocess is the same transform
in NumPy for the server, and a test keeps the two within 1e-4.

The train transform decodes the whole image, then crops, as slim does; tf.image.decode_and_crop_jpeg
would save some JPEG decoding but is left out so JPEG and PNG records take one path. Resizing is
TF2's tf.image.resize (half-pixel centres), where slim's TF1 resize_images used corner alignment
without them: a sub-pixel shift of the random crop, not a change of the recipe.
"""
import tensorflow as tf

from . import bundle

# tf.image.sample_distorted_bounding_box arguments of slim's distorted_bounding_box_crop.
MIN_OBJECT_COVERED = 0.1
ASPECT_RATIO_RANGE = (0.75, 1.33)
AREA_RANGE = (0.05, 1.0)
MAX_ATTEMPTS = 100
JPEG_DCT_METHOD = "INTEGER_ACCURATE"


def decode(encoded):
    """uint8 [H, W, 3] from JPEG/PNG (or BMP/GIF) bytes; grayscale is replicated to RGB.

    JPEGs are decoded with libjpeg's accurate integer IDCT, as Pillow does (mbv3.numpy_preprocess on the
    server): tf.io.decode_image's default, the fast IDCT, differs from it by up to 4 levels."""
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method=JPEG_DCT_METHOD),
        lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False))
    image.set_shape([None, None, 3])
    return image


def _standardize(image, prep):
    """[0, 1] float pixels to the model's input, (x - mean) / std as the record says (the same
    arithmetic as bundle.Preprocessing.standardize, in TensorFlow ops)."""
    return (image - tf.constant(prep.mean, tf.float32)) / tf.constant(prep.std, tf.float32)


def train_transform(encoded, size, bbox=None, seed=None, crop_area_min=None, flip=True):
    """float32 [size, size, 3] in [-1, 1]: random resized crop and flip of one encoded image.

    crop_area_min: the smallest fraction of the image a crop covers (None: AREA_RANGE's); flip:
    whether to flip left-right at random.

    bbox: float [N, 4] boxes (ymin, xmin, ymax, xmax) in [0, 1]; None or N = 0 means the whole
    image. seed: None for TensorFlow's stateful random ops, or an int [2] tensor for the stateless
    ones (mbv3.data passes [seed, element index] so a seeded pipeline repeats exactly).
    """
    image = decode(encoded)
    if bbox is None:
        bbox = tf.zeros([0, 4], tf.float32)
    boxes = tf.reshape(tf.cast(bbox, tf.float32), [1, -1, 4])
    kwargs = dict(bounding_boxes=boxes, min_object_covered=MIN_OBJECT_COVERED,
                  aspect_ratio_range=ASPECT_RATIO_RANGE,
                  area_range=AREA_RANGE if crop_area_min is None else (crop_area_min, AREA_RANGE[1]),
                  max_attempts=MAX_ATTEMPTS, use_image_if_no_bounding_boxes=True)
    if seed is None:
        begin, crop_size, _ = tf.image.sample_distorted_bounding_box(tf.shape(image), **kwargs)
    else:
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2)
        begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image), seed=seeds[0], **kwargs)
    image = tf.slice(image, begin, crop_size)  # crop before converting: same pixels, less work
    image = tf.image.convert_image_dtype(image, tf.float32)
    image = tf.image.resize(image, [size, size], method="bilinear")
    if flip and seed is None:
        image = tf.image.random_flip_left_right(image)
    elif flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
    image = _standardize(image, eval_record(size))   # the normalisation evaluation and serving use
    image.set_shape([size, size, 3])
    return image


def eval_transform(encoded, size):
    """float32 [size, size, 3] in [-1, 1]: central crop and bilinear resize (half-pixel centres,
    no antialiasing), exactly mbv3.numpy_preprocess.eval_transform with eval_record(size)."""
    prep = eval_record(size)
    image = tf.image.convert_image_dtype(decode(encoded), tf.float32)
    image = tf.image.central_crop(image, prep.crop_fraction)
    image = tf.image.resize(image, [size, size], method="bilinear")
    image = _standardize(image, prep)
    image.set_shape([size, size, 3])
    return image


def eval_record(size):
    """The preprocessing record of training and evaluation at `size`: bundle.Preprocessing's
    defaults are this recipe's (central 87.5% crop, bilinear, [0, 255] to [-1, 1]), so they live in
    one place. Export writes it into model.json, so the servers' NumPy transform repeats what
    evaluation measured."""
    return bundle.Preprocessing(size=[int(size), int(size)])
