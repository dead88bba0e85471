"""Evaluation preprocessing in NumPy and Pillow, driven by a bundle's `preprocessing` record.

It reproduces the TensorFlow eval transform (tf.image.central_crop, then tf.image.resize bilinear
with half-pixel centres and no antialiasing, then (x - mean) / std on [0, 1] pixels) so a server
without TensorFlow feeds the model what it was evaluated on.
"""
from __future__ import absolute_import, division, print_function

import io

import numpy as np

# The record `mbv3 export` writes into model.json (timm-style keys, plus what timm leaves implicit).
EVAL_PREPROCESSING = {
    "color": "RGB",
    "crop_fraction": 0.875,
    "resize": "bilinear",
    "half_pixel_centers": True,
    "antialias": False,
    "pixel_max": 255.0,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
}


class ImageError(ValueError):
    """The bytes are not an image Pillow can decode."""


class ImageTooLarge(ImageError):
    """More pixels than the caller allows (decompression-bomb protection)."""


def decode(data, max_pixels=None):
    """RGB uint8 HxWx3 from encoded bytes: the first frame of animations, EXIF orientation applied,
    any mode (grayscale, palette, RGBA, CMYK, 16-bit) to 8-bit RGB. The pixel count is checked from
    the header before anything is decoded, so a decompression bomb costs nothing."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    if not data:
        raise ImageError("empty image")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if max_pixels and width * height > max_pixels:
                raise ImageTooLarge("image is %dx%d pixels, over the limit of %d" % (width, height, max_pixels))
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
            return to_rgb(img)
    except UnidentifiedImageError:
        raise ImageError("not an image in a format Pillow recognises")
    except ImageError:
        raise
    except Image.DecompressionBombError as e:  # Pillow's own guard fires in open(), before ours
        raise ImageTooLarge(str(e))
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError("cannot decode image: %s" % e)


def to_rgb(img):
    """8-bit RGB. Alpha is dropped as TensorFlow's decode_png(channels=3) drops it, so the server
    sees what training saw; 16- and 32-bit grayscale is scaled down, not clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or values.max() > 255 else 255.0
        gray = np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def central_crop(image, fraction):
    """tf.image.central_crop's arithmetic: start = int((h - h * fraction) / 2), size = h - 2 * start."""
    h, w = image.shape[:2]
    top = int((h - h * fraction) / 2)
    left = int((w - w * fraction) / 2)
    return image[top:h - top, left:w - left]


def resize_bilinear(image, height, width):
    """tf.image.resize(method="bilinear") (half-pixel centres, no antialias) on float32 HxWxC, with
    TensorFlow's float32 coordinate arithmetic and interpolation order."""
    in_h, in_w = image.shape[:2]
    image = image.astype(np.float32, copy=False)

    def axis(out_size, in_size):
        scale = np.float32(in_size) / np.float32(out_size)
        pos = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
        low = np.floor(pos)
        lerp = (pos - low).astype(np.float32)
        lo = np.clip(low, 0, in_size - 1).astype(np.int64)
        hi = np.clip(np.ceil(pos), 0, in_size - 1).astype(np.int64)
        return lo, hi, lerp

    y0, y1, wy = axis(height, in_h)
    x0, x1, wx = axis(width, in_w)
    wy, wx = wy[:, None, None], wx[None, :, None]
    rows0, rows1 = image[y0], image[y1]
    top = rows0[:, x0] + (rows0[:, x1] - rows0[:, x0]) * wx
    bottom = rows1[:, x0] + (rows1[:, x1] - rows1[:, x0]) * wx
    return top + (bottom - top) * wy


def eval_transform(rgb, size, prep=None, normalize=True):
    """float32 [size, size, 3] model input from an RGB uint8 image; with normalize=False, the
    cropped and resized uint8 image (for an .om whose AIPP stage normalises on the device)."""
    prep = prep or EVAL_PREPROCESSING
    height, width = (size, size) if np.isscalar(size) else size
    if not normalize:
        image = resize_bilinear(central_crop(rgb, prep["crop_fraction"]).astype(np.float32), height, width)
        return np.clip(np.round(image), 0, 255).astype(np.uint8)
    image = central_crop(rgb, prep["crop_fraction"]).astype(np.float32) / np.float32(prep["pixel_max"])
    image = resize_bilinear(image, height, width)
    mean = np.asarray(prep["mean"], np.float32)
    std = np.asarray(prep["std"], np.float32)
    return ((image - mean) / std).astype(np.float32)
