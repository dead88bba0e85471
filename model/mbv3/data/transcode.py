"""One input image file turned into what a record holds, or the reason it cannot be used.

8-bit RGB and grayscale JPEG and PNG files are stored byte for byte; anything else is converted
the way the server converts an upload (mbv3.numpy_preprocess), so training sees what serving will see.
"""
import io

import tensorflow as tf

from .. import numpy_preprocess
from ..errors import first_line

JPEG_QUALITY = 95
_EXIF_ORIENTATION = 0x0112


class Unusable(Exception):
    """An input image that cannot be used; the message is the reason."""


def _plain_png(data):
    """8-bit grayscale or RGB without alpha: bytes TensorFlow decodes to what Pillow shows."""
    return len(data) > 25 and data[12:16] == b"IHDR" and data[24] == 8 and data[25] in (0, 2)


def prepare(path):
    """(encoded bytes, 'JPEG'|'PNG', height, width, converted) for one input file, or Unusable.

    8-bit RGB/grayscale JPEG and PNG are kept as they are; everything else (CMYK, palette, alpha,
    16-bit, BMP, GIF, WebP, JPEGs with an EXIF rotation) is turned upright as mbv3.numpy_preprocess does
    on the server, converted to RGB and re-encoded as JPEG quality 95 without chroma subsampling.
    The final bytes are then decoded by TensorFlow, as the reader will: what passes here, reads."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (IOError, OSError) as e:
        raise Unusable("cannot read file: %s" % (e.strerror or e))
    if not data:
        raise Unusable("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, mode = img.format, img.mode
            try:
                orientation = img.getexif().get(_EXIF_ORIENTATION, 1) if fmt == "JPEG" else 1
            except Exception:  # a broken EXIF block: TensorFlow ignores EXIF anyway
                orientation = 1
            img.load()
            keep = ((fmt == "JPEG" and mode in ("RGB", "L") and orientation in (None, 1))
                    or (fmt == "PNG" and mode in ("RGB", "L") and _plain_png(data)))
            if keep:
                encoded, converted = data, False
            else:
                rgb = Image.fromarray(numpy_preprocess.to_rgb(ImageOps.exif_transpose(img)))  # the server's conversion
                out = io.BytesIO()
                rgb.save(out, "JPEG", quality=JPEG_QUALITY, subsampling=0)  # 4:4:4: keep the colour detail
                encoded, fmt, converted = out.getvalue(), "JPEG", True
    except UnidentifiedImageError:
        raise Unusable("not an image in a format Pillow recognises")
    except Exception as e:  # OSError, SyntaxError, DecompressionBombError, ...: one odd file must not stop a build
        raise Unusable("cannot decode image: %s" % (str(e) or e.__class__.__name__))
    try:
        shape = tf.io.decode_image(encoded, channels=3, expand_animations=False).shape
    except (tf.errors.OpError, ValueError) as e:
        raise Unusable("TensorFlow cannot decode it: %s" % first_line(e))
    return encoded, fmt, int(shape[0]), int(shape[1]), converted
