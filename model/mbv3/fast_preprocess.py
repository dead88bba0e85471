"""The eval transform's fast path: libjpeg-turbo decodes JPEGs (simplejpeg) and OpenCV resizes
(cv2.resize, bilinear, half-pixel centres, no antialiasing: tf.image.resize's sampling).

mbv3.numpy_preprocess stays the reference; this path is held to within one 8-bit level of it (and
so of TensorFlow's eval transform), because OpenCV interpolates 8-bit pixels in fixed point and
rounds its output to 8 bits (measured: at most 0.75 of a level). What it keeps from the reference:
the pixel count is checked from the header before decoding; EXIF orientation is Pillow's (read
from the header by Pillow); grayscale, palette, RGBA, CMYK and every non-JPEG format are decoded
by Pillow exactly as the reference decodes them, and only resized here; 16-bit and 32-bit images
take the reference path whole, since rounding them to 8 bits before an 8-bit resize would add a
second level of error. The resize reads the decoded pixels in place (the crop is a view), so past
the decode its memory follows the output size.

EXIF rotations and flips commute with the central crop and with half-pixel bilinear sampling, so a
rotated JPEG is resized as decoded (to the transposed size when it is turned by 90 degrees) and
only the small output is turned: no rotated copy of the whole image is made.
"""
import threading

import numpy as np

from . import numpy_preprocess
from .bundle import Preprocessing
from .errors import ImageError, ImageTooLarge
from .numpy_preprocess import UNSUPPORTED, check_structure

CHOICES = ("auto", "fast", "reference")
# Pillow modes whose pixels the fast resize takes as they are (8 bits a channel, after to_rgb)
# the JPEGs libjpeg-turbo decodes here, by Pillow mode (CMYK/YCCK ones go to Pillow, which inverts Adobe's CMYK)
TURBO_MODES = ("RGB", "L")
# What Pillow calls a JPEG libjpeg-turbo decodes: MPO (a camera's multi-picture JPEG) is a JPEG whose
# first picture is the image; libjpeg stops at its end, as Pillow's decode shows the first frame
JPEG_FORMATS = ("JPEG", "MPO")
EIGHT_BIT = ("1", "L", "P", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LA", "PA", "La", "RGBa")

_modules = None
# JPEGs up to this many decoded bytes (1 megapixel RGB) are decoded into a buffer kept per thread
REUSED_BYTES = 3 * 1000 * 1000
_local = threading.local()


def _load():
    """(simplejpeg, cv2), imported once; ImportError when either is missing."""
    global _modules
    if _modules is None:
        import cv2
        import simplejpeg
        # one thread per resize: callers run several images at once, and a 224x224 output is too small
        # for OpenCV's own thread pool to pay for itself
        cv2.setNumThreads(1)
        _modules = (simplejpeg, cv2)
    return _modules


def available():
    """(True, "") when simplejpeg and OpenCV import, else (False, why)."""
    try:
        _load()
    except ImportError as e:
        return False, "simplejpeg and opencv-python-headless are needed (%s)" % e
    return True, ""


def select(choice="auto"):
    """(model_input function, name) for PREPROCESSING=choice: `fast` needs simplejpeg and OpenCV
    (ImportError naming them otherwise), `reference` is numpy_preprocess, `auto` the fast path
    when it imports. The function is model_input(data, prep, max_pixels=None, normalize=True)."""
    if choice not in CHOICES:
        raise ValueError("preprocessing %r: choose one of %s" % (choice, ", ".join(CHOICES)))
    if choice != "reference":
        ok, why = available()
        if ok:
            return model_input, "fast (simplejpeg %s, OpenCV %s)" % (_load()[0].__version__, _load()[1].__version__)
        if choice == "fast":
            raise ImportError(why)
    return reference_input, "reference (Pillow, NumPy)"


def probe(data):
    """(width, height, kind) from the header: kind is the Pillow mode, or "JPEG RGB" / "JPEG L" for
    a JPEG this path decodes with libjpeg-turbo (whose memory differs from Pillow's decode)."""
    width, height, mode, fmt = numpy_preprocess.header(data)
    return width, height, ("JPEG " + mode if fmt in JPEG_FORMATS and mode in TURBO_MODES else mode)


# libjpeg's colour spaces (simplejpeg.decode_jpeg_header) as probe()'s kinds
JPEG_KINDS = {"Gray": "JPEG L", "YCbCr": "JPEG RGB", "RGB": "JPEG RGB", "CMYK": "CMYK", "YCCK": "CMYK"}


def probe_jpeg(data):
    """probe() of a JPEG from libjpeg-turbo's header parser (C, microseconds whatever the bytes,
    so a caller may run it on its event loop); None when the bytes are not a JPEG it reads, and
    probe() must say why (as it does for a JPEG over MAX_JPEG_SCANS scans, counted here in C)."""
    if not data.startswith(b"\xff\xd8") or numpy_preprocess.jpeg_scans(data) > numpy_preprocess.MAX_JPEG_SCANS:
        return None
    try:
        simplejpeg = _load()[0]
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except Exception:   # ImportError, or ValueError from libjpeg
        return None
    kind = JPEG_KINDS.get(colorspace)
    if kind is None or width < 1 or height < 1:
        return None
    return width, height, kind


def reference_input(data, prep=None, max_pixels=None, normalize=True):
    """The reference transform with model_input's signature."""
    return numpy_preprocess.eval_transform(numpy_preprocess.decode(data, max_pixels=max_pixels), prep=prep,
                                           normalize=normalize)


def model_input(data, prep=None, max_pixels=None, normalize=True):
    """float32 [H, W, 3] model input (or with normalize=False uint8 pixels) from encoded bytes,
    as numpy_preprocess.eval_transform(numpy_preprocess.decode(data)) makes it, within one level."""
    from PIL import Image, UnidentifiedImageError
    if prep is None:
        prep = Preprocessing()
    elif isinstance(prep, dict):
        prep = Preprocessing(**prep)
    if not data:
        raise ImageError("empty image")
    check_structure(data)   # a JPEG's scans, a PNG's chunks: before libjpeg-turbo or Pillow reads on
    try:
        with numpy_preprocess.open_image(data) as img:   # the header only: size, mode, a JPEG's orientation
            width, height = img.size
            fmt, mode = img.format, img.mode
            # a JPEG's EXIF is in its header; a PNG's may follow the pixels, and Pillow decodes to find it
            fast = fmt in JPEG_FORMATS and mode in TURBO_MODES
            orientation = img.getexif().get(numpy_preprocess.EXIF_ORIENTATION, 1) if fast else 1
    except UnidentifiedImageError:
        raise ImageError(UNSUPPORTED)
    except Image.DecompressionBombError as e:
        raise numpy_preprocess.pillow_error(e, "cannot read the image header", max_pixels)
    except Exception:   # a header Pillow cannot read: the reference says why in its words
        return reference_input(data, prep, max_pixels, normalize)
    if width < 1 or height < 1:
        raise ImageError("image is %dx%d pixels: nothing to classify" % (width, height))
    if max_pixels and width * height > max_pixels:
        raise ImageTooLarge("image is %dx%d pixels, over the limit of %d" % (width, height, max_pixels))
    if mode not in EIGHT_BIT:
        return reference_input(data, prep, max_pixels, normalize)
    simplejpeg, cv2 = _load()
    if fast:
        try:
            channels = 3 if mode == "RGB" else 1
            pixels = simplejpeg.decode_jpeg(data, colorspace="RGB" if mode == "RGB" else "GRAY",
                                            buffer=_decode_buffer(width * height * channels))
        except MemoryError:
            raise ImageTooLarge("decoding the image needs more memory than is available")
        except Exception as e:   # ValueError from libjpeg-turbo: corrupt or truncated data
            raise ImageError("cannot decode image: %s" % (str(e).strip() or type(e).__name__))
        turn = orientation if orientation in TURNS else 1
    else:   # every other format and mode: Pillow's decode (orientation applied), the fast resize
        pixels = numpy_preprocess.decode(data, max_pixels=max_pixels)
        turn = 1
    out = _resize(cv2, pixels, prep, transposed=turn in (5, 6, 7, 8))
    out = TURNS[turn](out) if turn != 1 else out
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    if not normalize:
        return np.ascontiguousarray(out)
    return prep.normalize(out)


def _decode_buffer(nbytes):
    """This thread's reusable decoding buffer when the image fits REUSED_BYTES, else None (a new
    array). A fresh array of a photo's size costs its page faults on every decode (0.85 ms of a
    1.8 ms decode of a 640x427 JPEG); the buffer is only ever used inside model_input, whose result
    never points into it."""
    if nbytes > REUSED_BYTES:
        return None
    buf = getattr(_local, "buffer", None)
    if buf is None:
        buf = _local.buffer = bytearray(REUSED_BYTES)
    return buf


def _resize(cv2, pixels, prep, transposed):
    """The central crop (a view) resized to the model's size (its transpose for a turned image) in
    8-bit fixed point; a 2-D array for a one-channel image."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    h, w = pixels.shape[:2]
    if min(h, w) < 1:
        raise ImageError("image of shape %s has no pixels to crop" % (pixels.shape,))
    top, left, ch, cw = numpy_preprocess.crop_box(h, w, prep.crop_fraction)
    crop = pixels[top:top + ch, left:left + cw]
    height, width = (prep.width, prep.height) if transposed else (prep.height, prep.width)
    return cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR)


# What each EXIF orientation does to the stored image to show it upright (Pillow's exif_transpose:
# 2 FLIP_LEFT_RIGHT, 3 ROTATE_180, 4 FLIP_TOP_BOTTOM, 5 TRANSPOSE, 6 ROTATE_270, 7 TRANSVERSE, 8 ROTATE_90)
TURNS = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}
