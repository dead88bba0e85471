"""Evaluation preprocessing in NumPy and Pillow, driven by a bundle's `preprocessing` record.

It reproduces the TensorFlow eval transform (tf.image.central_crop, then tf.image.resize bilinear
with half-pixel centres and no antialiasing, then the record's normalisation) so a server without
TensorFlow feeds the model what it was evaluated on. The resize gathers only the source pixels the
output needs, so its memory follows the output size whatever the input's shape (a 1 x 1,000,000
image costs what a 224 x 224 one does after decoding).
"""
import io

import numpy as np

from .bundle import Preprocessing


EXIF_ORIENTATION = 0x0112


class ImageError(ValueError):
    """The bytes are not an image Pillow can decode."""


class ImageTooLarge(ImageError):
    """More pixels than the caller allows (decompression-bomb protection)."""


def decode(data, max_pixels=None):
    """RGB uint8 HxWx3 from encoded bytes: the first frame of animations, EXIF orientation applied,
    any mode (grayscale, palette, RGBA, CMYK, 16-bit) to 8-bit RGB. The pixel count is checked from
    the header before anything is decoded, so a decompression bomb costs nothing. The result may be
    a read-only view of the decoded image (no copy is made where none is needed)."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    if not data:
        raise ImageError("empty image")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width < 1 or height < 1:
                raise ImageError("image is %dx%d pixels: nothing to classify" % (width, height))
            if max_pixels and width * height > max_pixels:
                raise ImageTooLarge("image is %dx%d pixels, over the limit of %d" % (width, height, max_pixels))
            img.seek(0)
            img.load()
            if img.getexif().get(EXIF_ORIENTATION, 1) not in (0, 1):
                img = ImageOps.exif_transpose(img)   # a copy, so only when there is something to turn
            return to_rgb(img)
    except UnidentifiedImageError:
        raise ImageError("not an image in a format Pillow recognises")
    except ImageError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own guard fires in open(), before ours
        raise ImageTooLarge(str(e))
    except MemoryError:
        raise ImageTooLarge("decoding the image needs more memory than is available")
    except Exception as e:  # OSError, SyntaxError, ValueError, EOFError, and for some codecs RuntimeError,
        # NotImplementedError, struct.error: all are the bytes' fault, never the server's
        raise ImageError("cannot decode image: %s" % (str(e).strip() or type(e).__name__))


def probe(data):
    """(width, height, mode) from the image's header, nothing decoded: what a server needs to know
    what decoding will cost before it decides to."""
    return header(data)[:3]


def header(data):
    """(width, height, mode, format) from the image's header (Pillow's names), nothing decoded."""
    from PIL import Image, UnidentifiedImageError
    if not data:
        raise ImageError("empty image")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            mode, fmt = img.mode, img.format
    except UnidentifiedImageError:
        raise ImageError("not an image in a format Pillow recognises")
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(str(e))
    except Exception as e:
        raise ImageError("cannot read the image header: %s" % (str(e).strip() or type(e).__name__))
    if width < 1 or height < 1:
        raise ImageError("image is %dx%d pixels: nothing to classify" % (width, height))
    return width, height, mode, fmt


def to_rgb(img):
    """8-bit RGB. Alpha is dropped as TensorFlow's decode_png(channels=3) drops it, so the server
    sees what training saw; 16- and 32-bit grayscale is scaled down, not clipped."""
    if img.mode == "RGB":
        return np.asarray(img)
    if img.mode == "L":
        return np.repeat(np.asarray(img)[:, :, None], 3, axis=2)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):   # exact integer rounding of v * 255 / 65535
        values = np.asarray(img).astype(np.uint32)
        gray = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode in ("I", "F"):
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if values.max() > 255 else 255.0
        gray = np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(img.convert("RGB"))


def central_crop(image, fraction):
    """tf.image.central_crop's arithmetic: start = int((h - h * fraction) / 2), size = h - 2 * start."""
    top, left, height, width = crop_box(image.shape[0], image.shape[1], fraction)
    return image[top:top + height, left:left + width]


def crop_box(h, w, fraction):
    """(top, left, height, width) of the central crop; never empty for a non-empty image."""
    top = int((h - h * fraction) / 2)
    left = int((w - w * fraction) / 2)
    return top, left, h - 2 * top, w - 2 * left


def _axis(out_size, in_size):
    """Source indices and weights of tf.image.resize's bilinear, with its float32 coordinate arithmetic."""
    scale = np.float32(in_size) / np.float32(out_size)
    pos = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    low = np.floor(pos)
    lerp = (pos - low).astype(np.float32)
    lo = np.clip(low, 0, in_size - 1).astype(np.int64)
    hi = np.clip(np.ceil(pos), 0, in_size - 1).astype(np.int64)
    return lo, hi, lerp


def resize_bilinear(image, height, width, scale=None):
    """tf.image.resize(method="bilinear") (half-pixel centres, no antialias) of HxWxC to float32
    height x width x C, in TensorFlow's interpolation order. Only the four source pixels of each
    output pixel are read (and converted to float32, times `scale` when given)."""
    in_h, in_w = image.shape[:2]
    y0, y1, wy = _axis(height, in_h)
    x0, x1, wx = _axis(width, in_w)
    wy, wx = wy[:, None, None], wx[None, :, None]

    def gather(rows, cols):
        out = image[rows[:, None], cols[None, :]].astype(np.float32)
        return out * np.float32(scale) if scale is not None else out
    top_left, top_right = gather(y0, x0), gather(y0, x1)
    bottom_left, bottom_right = gather(y1, x0), gather(y1, x1)
    top = top_left + (top_right - top_left) * wx
    bottom = bottom_left + (bottom_right - bottom_left) * wx
    return top + (bottom - top) * wy


def eval_transform(rgb, size=None, prep=None, normalize=True):
    """The model input from an RGB uint8 image: float32 [H, W, 3] normalised as `prep` says, or with
    normalize=False the cropped and resized uint8 pixels (for an .om whose AIPP stage normalises on
    the card). `prep` is a bundle.Preprocessing (a plain dict is read as one); `size` (an int or
    [height, width]) overrides its size."""
    if prep is None:
        prep = Preprocessing()
    elif isinstance(prep, dict):
        prep = Preprocessing(**prep)
    if size is None:
        height, width = prep.height, prep.width
    else:
        height, width = (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))
    if rgb.ndim != 3 or min(rgb.shape[:2]) < 1:
        raise ImageError("image of shape %s has no pixels to crop" % (rgb.shape,))
    crop = central_crop(rgb, prep.crop_fraction)   # a view: nothing is copied
    if not normalize:
        return np.clip(np.round(resize_bilinear(crop, height, width)), 0, 255).astype(np.uint8)
    # TensorFlow's order: pixels to [0, 1] floats, resize, then (x - mean) / std
    return prep.standardize(resize_bilinear(crop, height, width, scale=1.0 / prep.pixel_max))
