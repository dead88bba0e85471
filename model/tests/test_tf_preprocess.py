"""TensorFlow transforms: eval matches the server's NumPy/Pillow transform (mbv3.numpy_preprocess) on real
encoded images; train gives slim's random crop and flip in [-1, 1], reproducible from a seed."""
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mbv3 import numpy_preprocess, tf_preprocess


def picture(h, w, seed, mode="RGB"):
    """A smooth picture with some edges: what JPEG is made for (white noise is not)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (h // 6 + 2, w // 6 + 2, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    return img.convert(mode)


def encoded(img, fmt, **kwargs):
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


CASES = [
    ((97, 61), "JPEG", "RGB", {"quality": 90}),                     # 4:2:0 chroma
    ((333, 500), "JPEG", "RGB", {"quality": 75, "subsampling": 0}),  # 4:4:4
    ((51, 203), "JPEG", "L", {}),                                    # grayscale JPEG
    ((480, 353), "JPEG", "RGB", {"progressive": True}),
    ((225, 225), "PNG", "RGB", {}),
    ((64, 17), "PNG", "L", {}),
]


@pytest.mark.parametrize("shape,fmt,mode,options", CASES)
def test_eval_transform_matches_imageprep(shape, fmt, mode, options):
    payload = encoded(picture(shape[0], shape[1], sum(shape), mode), fmt, **options)
    rgb = numpy_preprocess.decode(payload)
    np.testing.assert_array_equal(tf_preprocess.decode(tf.constant(payload)).numpy(), rgb)
    for size in (224, 33):
        got = tf_preprocess.eval_transform(tf.constant(payload), size).numpy()
        expected = numpy_preprocess.eval_transform(rgb, prep=tf_preprocess.eval_record(size))  # what export writes
        assert got.shape == (size, size, 3) and got.dtype == np.float32
        assert np.abs(got - expected).max() < 1e-4


def test_eval_transform_in_a_dataset_map():
    payloads = [encoded(picture(40 + 9 * i, 70 - 5 * i, i), "JPEG") for i in range(3)]
    ds = tf.data.Dataset.from_tensor_slices(payloads).map(lambda e: tf_preprocess.eval_transform(e, 32)).batch(3)
    batch = next(iter(ds)).numpy()
    for got, payload in zip(batch, payloads):
        assert np.abs(got - numpy_preprocess.eval_transform(numpy_preprocess.decode(payload), 32)).max() < 1e-4


def _train(payload, size=32, bbox=None, seed=None, **kwargs):
    seed = None if seed is None else tf.constant(seed, tf.int64)
    return tf_preprocess.train_transform(tf.constant(payload), size, bbox=bbox, seed=seed, **kwargs).numpy()


def test_train_transform_shape_range_and_seeds():
    payload = encoded(picture(120, 90, 5), "JPEG")
    outputs = [_train(payload, seed=[7, i]) for i in range(8)]
    for out in outputs:
        assert out.shape == (32, 32, 3) and out.dtype == np.float32
        assert out.min() >= -1.0 - 1e-6 and out.max() <= 1.0 + 1e-6
    np.testing.assert_array_equal(_train(payload, seed=[7, 0]), outputs[0])
    assert all(np.abs(outputs[0] - other).max() > 0.05 for other in outputs[1:])
    stateful = _train(payload)  # TensorFlow's stateful random ops when no seed is given
    assert stateful.shape == (32, 32, 3) and np.abs(stateful).max() <= 1.0 + 1e-6
    gray_png = encoded(picture(30, 50, 6, "L"), "PNG")
    assert _train(gray_png, size=16, seed=[1, 1]).shape == (16, 16, 3)


def test_train_transform_flips_about_half_the_time():
    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))  # dark left, bright right
    payload = encoded(Image.fromarray(ramp), "PNG")
    flipped = 0
    for i in range(40):
        out = _train(payload, size=16, seed=[3, i])[..., 0]
        flipped += int(out[:, :8].mean() > out[:, 8:].mean())
    assert 8 <= flipped <= 32


def test_a_recipe_can_narrow_the_crop_and_drop_the_flip():
    """data.crop_area_min=1 and data.flip=false: every seed gives the whole image, unflipped (the
    bilinear resize of it); the narrower crop keeps a digit whole where slim's 5% would cut it."""
    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))
    payload = encoded(Image.fromarray(ramp), "PNG")
    whole = tf.image.resize(tf.image.convert_image_dtype(tf_preprocess.decode(tf.constant(payload)), tf.float32),
                            [16, 16]).numpy() * 2 - 1
    for i in range(10):
        np.testing.assert_allclose(_train(payload, size=16, seed=[5, i], crop_area_min=1.0, flip=False), whole,
                                   atol=1e-6)
    half = [_train(payload, size=16, seed=[5, i], crop_area_min=0.5) for i in range(30)]
    narrow = min(float((x.max() - x.min()) / 2) for x in half)        # contrast a crop keeps of the ramp
    wide = min(float((x.max() - x.min()) / 2) for x in (_train(payload, size=16, seed=[5, i]) for i in range(30)))
    assert narrow >= 0.5 > wide


def test_train_crop_follows_the_bounding_box():
    """slim's crop covers at least 10% of a labelled box: a box on the white half keeps some white
    in every crop, while crops of the whole image can be entirely black."""
    half = np.zeros((100, 100), np.uint8)
    half[:, 50:] = 255
    payload = encoded(Image.fromarray(half), "PNG")
    box = tf.constant([[0.0, 0.6, 1.0, 1.0]])  # ymin, xmin, ymax, xmax: inside the white half
    with_box = [_train(payload, size=8, bbox=box, seed=[11, i]).max() for i in range(30)]
    assert min(with_box) > 0.0
    empty = tf.zeros([0, 4])  # no boxes: the whole image, like bbox=None
    whole = [_train(payload, size=8, bbox=empty, seed=[11, i]).max() for i in range(60)]
    assert min(whole) == -1.0


def test_bad_bytes_raise_in_tensorflow():
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf_preprocess.eval_transform(tf.constant(b"not an image"), 8)
