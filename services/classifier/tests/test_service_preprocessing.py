"""The service's preprocessing, both paths (PREPROCESSING=fast: libjpeg-turbo + OpenCV; reference:
Pillow + NumPy; no TensorFlow in either), against the model package's TensorFlow eval preprocessing
on the same encoded images, and top-1 agreement through the model. The reference is held to 1e-4,
the fast path to one 8-bit level (1/255 of the pixel range: OpenCV resizes 8-bit pixels in fixed
point and rounds to 8 bits).

Not compared: CMYK JPEGs (TensorFlow cannot decode them; `mbv3 data build` converts them to RGB,
which is what the service does) and EXIF orientation (TensorFlow ignores it; the data build stores
images upright, which is what the service does)."""
import io

import numpy as np
import pytest
from PIL import Image

from classifier import settings as settings_mod
from classifier.app import create_app
from classifier.images import Upload
from mbv3 import tf_preprocess
from mbv3.onnx_classifier import OnnxClassifier

from svc_support import SIZE, bundle_dir, jpeg_bytes, real_photo  # noqa: F401


def _encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _images():
    photo = Image.open(io.BytesIO(real_photo()))
    rng = np.random.default_rng(5)
    noise = Image.fromarray(rng.integers(0, 255, (333, 250, 3), dtype=np.uint8))
    frames = [Image.new("RGB", (80, 60), c) for c in ((200, 30, 30), (30, 200, 30))]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    sixteen = Image.fromarray((np.linspace(0, 65535, 120 * 90).reshape(90, 120)).astype(np.uint16))
    return {
        "photo.jpg": real_photo(),
        "photo.png": _encode(photo, "PNG"),
        "noise.jpg": jpeg_bytes(size=(250, 333), seed=5),
        "gray.jpg": _encode(photo.convert("L"), "JPEG", quality=92),
        "rgba.png": _encode(noise.convert("RGBA"), "PNG"),
        "palette.png": _encode(photo.convert("P"), "PNG"),
        "animated.gif": gif.getvalue(),
        "sixteen-bit.png": _encode(sixteen, "PNG"),
        "small.png": _encode(noise.resize((31, 17)), "PNG"),
    }


@pytest.fixture(scope="module", params=["fast", "reference"])
def service(request, bundle_dir):  # noqa: F811
    app = create_app(settings_mod.load(environ={}, dotenv=None, MODEL_DIR=bundle_dir, BACKEND="onnxruntime",
                                       PREPROCESSING=request.param))
    assert app.state.service.images.description.startswith(request.param)
    return app.state.service


# the largest difference from TensorFlow's eval transform, in model-input units ([-1, 1]: one level is 2/255)
LEVEL = 2.0 / 255


def _prepared(service, data):
    """What the service feeds the model for these bytes (its Preprocessor, as a request uses it)."""
    job = service.images.job(Upload(data), uint8=False)
    return job.make(*job.args)


@pytest.mark.parametrize("name", sorted(_images()))
def test_matches_tensorflow_eval_preprocessing(service, name):
    data = _images()[name]
    ours = _prepared(service, data)
    theirs = tf_preprocess.eval_transform(data, SIZE).numpy()
    assert ours.shape == theirs.shape == (SIZE, SIZE, 3) and ours.dtype == np.float32
    # 16-bit PNGs: TensorFlow and the service round 16 -> 8 bits differently by at most one level (the
    # fast path gives them to the reference whole)
    fast = service.images.description.startswith("fast")
    bound = LEVEL + 1e-5 if name == "sixteen-bit.png" or fast else 1e-4
    assert np.abs(ours - theirs).max() <= bound, np.abs(ours - theirs).max()


def test_same_top1_through_the_model(service, bundle_dir):  # noqa: F811
    images = _images()
    ours = np.stack([_prepared(service, d) for d in images.values()])
    theirs = np.stack([tf_preprocess.eval_transform(d, SIZE).numpy() for d in images.values()])
    clf = OnnxClassifier(bundle_dir)
    a, b = clf.logits(ours), clf.logits(theirs)
    assert (a.argmax(1) == b.argmax(1)).all()
    assert np.abs(a - b).max() <= 0.02 * np.abs(b).max()
