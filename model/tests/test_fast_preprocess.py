"""The fast eval transform (libjpeg-turbo + OpenCV) against the reference (mbv3.numpy_preprocess,
itself tested against TensorFlow): within one 8-bit level on every kind of image, every EXIF
orientation, and the same errors, the pixel limit checked before decoding."""
import io
import struct

import numpy as np
import pytest
from PIL import Image

from mbv3 import fast_preprocess, numpy_preprocess
from mbv3.bundle import Preprocessing

LEVEL = 2.0 / 255   # one 8-bit level in model-input units ([-1, 1])


def _encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _photo(size=(333, 250)):
    """A smooth, photo-like RGB image (gradients and a disc), so JPEG keeps it close to itself."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    r = 255 * x / max(w - 1, 1)
    g = 255 * y / max(h - 1, 1)
    b = np.where((x - w / 2) ** 2 + (y - h / 3) ** 2 < (min(w, h) / 4) ** 2, 230, 40)
    return Image.fromarray(np.stack([r, g, b], axis=2).astype(np.uint8))


def _reference(data, prep, normalize=True):
    return numpy_preprocess.eval_transform(numpy_preprocess.decode(data), prep=prep, normalize=normalize)


def _cases():
    photo = _photo()
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (97, 61, 3), dtype=np.uint8))
    sixteen = Image.fromarray((np.linspace(0, 65535, 120 * 90).reshape(90, 120)).astype(np.uint16))
    return {
        "photo.jpg": _encode(photo, "JPEG", quality=90),
        "photo-444-progressive.jpg": _encode(photo, "JPEG", quality=95, subsampling=0, progressive=True),
        "noise.jpg": _encode(noise, "JPEG", quality=90),
        "noise.png": _encode(noise, "PNG"),
        "gray.jpg": _encode(photo.convert("L"), "JPEG"),
        "cmyk.jpg": _encode(photo.convert("CMYK"), "JPEG"),
        "palette.png": _encode(photo.convert("P"), "PNG"),
        "rgba.webp": _encode(photo.convert("RGBA"), "WEBP", lossless=True),
        "sixteen-bit.png": _encode(sixteen, "PNG"),
        "wide.jpg": _encode(_photo((1000, 30)), "JPEG"),
        "tall.png": _encode(_photo((1, 500)), "PNG"),
        "exact-half.jpg": _encode(_photo((512, 512)), "JPEG"),
        "one-pixel.png": _encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"),
        "two-pictures.mpo": _encode(photo, "MPO", save_all=True, append_images=[noise.resize(photo.size)]),
    }


@pytest.mark.parametrize("name", sorted(_cases()))
@pytest.mark.parametrize("size", [[224, 224], [64, 96]])
def test_within_one_level_of_the_reference(name, size):
    data, prep = _cases()[name], Preprocessing(size=size)
    ours, ref = fast_preprocess.model_input(data, prep), _reference(data, prep)
    assert ours.shape == ref.shape == (size[0], size[1], 3) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= LEVEL + 1e-6
    pixels = fast_preprocess.model_input(data, prep, normalize=False)
    assert pixels.dtype == np.uint8
    assert np.abs(pixels.astype(int) - _reference(data, prep, normalize=False)).max() <= 1


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_exif_orientation_is_pillows(orientation, mode):
    img = _photo((300, 200)).convert(mode)
    exif = img.getexif()
    exif[numpy_preprocess.EXIF_ORIENTATION] = orientation
    data = _encode(img, "JPEG", exif=exif)
    prep = Preprocessing(size=[64, 96])   # not square, so a turn the wrong way changes the shape
    ours, ref = fast_preprocess.model_input(data, prep), _reference(data, prep)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= LEVEL + 1e-6


def test_errors_are_the_references():
    good = _encode(_photo(), "JPEG")
    for data, kind, match in ((b"", numpy_preprocess.ImageError, "empty"),
                              (b"plain text", numpy_preprocess.ImageError, "not an image"),
                              (good[:300], numpy_preprocess.ImageError, "cannot decode")):
        with pytest.raises(kind, match=match):
            fast_preprocess.model_input(data)
    with pytest.raises(numpy_preprocess.ImageTooLarge, match="over the limit of 1000"):
        fast_preprocess.model_input(good, max_pixels=1000)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_the_pixel_limit_is_checked_from_the_header():
    """A 16-pixel JPEG whose frame header claims 10000 x 10000: refused before any decoding."""
    data = bytearray(_encode(Image.new("RGB", (4, 4)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 10000, 10000)
    with pytest.raises(numpy_preprocess.ImageTooLarge):
        fast_preprocess.model_input(bytes(data), max_pixels=40_000_000)
    assert fast_preprocess.probe(bytes(data)) == (10000, 10000, "JPEG RGB")


def test_probe_names_what_decodes_the_image():
    assert fast_preprocess.probe(_cases()["photo.jpg"])[2] == "JPEG RGB"
    assert fast_preprocess.probe(_cases()["gray.jpg"])[2] == "JPEG L"
    assert fast_preprocess.probe(_cases()["cmyk.jpg"])[2] == "CMYK"
    assert fast_preprocess.probe(_cases()["two-pictures.mpo"])[2] == "JPEG RGB"   # the first picture, by libjpeg
    assert fast_preprocess.probe(_cases()["noise.png"]) == (61, 97, "RGB")


def test_select():
    assert fast_preprocess.select("fast")[0] is fast_preprocess.model_input
    assert fast_preprocess.select("auto")[0] is fast_preprocess.model_input   # both are installed here
    assert fast_preprocess.select("reference")[0] is fast_preprocess.reference_input
    with pytest.raises(ValueError, match="choose one of"):
        fast_preprocess.select("turbo")


def test_probe_jpeg_is_probe_for_jpegs_and_none_otherwise():
    cases = _cases()
    for name in ("photo.jpg", "gray.jpg", "cmyk.jpg", "wide.jpg", "photo-444-progressive.jpg", "two-pictures.mpo"):
        assert fast_preprocess.probe_jpeg(cases[name]) == fast_preprocess.probe(cases[name]), name
    for data in (cases["noise.png"], cases["rgba.webp"], b"", b"\xff\xd8 not really a JPEG", cases["photo.jpg"][:2]):
        assert fast_preprocess.probe_jpeg(data) is None


def test_results_never_share_the_reused_decoding_buffer():
    cases = _cases()
    first = fast_preprocess.model_input(cases["photo.jpg"])
    kept = first.copy()
    pixels = fast_preprocess.model_input(cases["noise.jpg"], normalize=False)
    kept_pixels = pixels.copy()
    fast_preprocess.model_input(cases["gray.jpg"])
    fast_preprocess.model_input(cases["exact-half.jpg"], normalize=False)
    assert np.array_equal(first, kept) and np.array_equal(pixels, kept_pixels)
