"""The NumPy/Pillow eval transform reproduces TensorFlow's (central_crop + bilinear resize)."""
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mbv3 import numpy_preprocess
from mbv3.errors import ImageError


@pytest.mark.parametrize("shape", [(224, 224), (300, 420), (97, 61), (1000, 30)])
def test_central_crop_matches_tf(shape):
    image = np.random.default_rng(0).integers(0, 255, shape + (3,), dtype=np.uint8)
    expected = tf.image.central_crop(tf.constant(image), 0.875).numpy()
    np.testing.assert_array_equal(numpy_preprocess.central_crop(image, 0.875), expected)


@pytest.mark.parametrize("shape,size", [((300, 420), 224), ((97, 61), 224), ((224, 224), 224), ((500, 500), 64)])
def test_resize_matches_tf_bilinear(shape, size):
    image = np.random.default_rng(1).random(shape + (3,)).astype(np.float32)
    expected = tf.image.resize(image, [size, size], method="bilinear").numpy()
    got = numpy_preprocess.resize_bilinear(image, size, size)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-5


def test_eval_transform_matches_tf_pipeline():
    rgb = np.random.default_rng(2).integers(0, 255, (333, 500, 3), dtype=np.uint8)
    image = tf.image.convert_image_dtype(tf.constant(rgb), tf.float32)
    image = tf.image.central_crop(image, 0.875)
    image = tf.image.resize(image, [224, 224], method="bilinear")
    expected = ((image - 0.5) * 2.0).numpy()
    got = numpy_preprocess.eval_transform(rgb, 224)
    assert got.dtype == np.float32 and got.shape == (224, 224, 3)
    assert np.abs(got - expected).max() < 1e-5
    assert got.min() >= -1 and got.max() <= 1


def test_decode_modes_and_orientation():
    gray = Image.fromarray(np.full((10, 20), 128, np.uint8), "L")
    buf = io.BytesIO()
    gray.save(buf, "PNG")
    assert numpy_preprocess.decode(buf.getvalue()).shape == (10, 20, 3)

    img = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    assert numpy_preprocess.decode(buf.getvalue()).shape == (20, 10, 3)

    with pytest.raises(ImageError, match="not an image"):
        numpy_preprocess.decode(b"plain text")
    good = io.BytesIO()
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(good, "JPEG")
    with pytest.raises(ImageError):
        numpy_preprocess.decode(good.getvalue()[:100])
