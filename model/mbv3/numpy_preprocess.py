"""Evaluation preprocessing in NumPy and Pillow, driven by a bundle's `preprocessing` record.

It reproduces the TensorFlow eval transform (tf.image.central_crop, then tf.image.resize bilinear
with half-pixel centres and no antialiasing, then the record's normalisation) so a server without
TensorFlow feeds the model what it was evaluated on. The resize gathers only the source pixels the
output needs, so its memory follows the output size whatever the input's shape (a 1 x 1,000,000
image costs what a 224 x 224 one does after decoding).
"""
import io
import re
import struct

import numpy as np

from .bundle import Preprocessing
from .errors import ImageError, ImageTooLarge


EXIF_ORIENTATION = 0x0112
# The formats the API reads (MPO is what Pillow calls a camera's multi-picture JPEG), passed to every
# Image.open: no other Pillow plugin ever sees an upload, so none that decodes while "reading the
# header" (ICO, EPS through Ghostscript, ...) runs before the pixel limit is checked
FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "GIF")
UNSUPPORTED = "not an image in a format the service reads (JPEG, PNG, WebP, BMP or GIF)"
# libjpeg-turbo's guidance against scan floods (TJPARAM_SCANLIMIT, djpeg -maxscans); a normal progressive JPEG has ~10
MAX_JPEG_SCANS = 100
# libpng writes 8 KiB IDAT chunks (a 10 MiB PNG has about 1,300); Pillow reads every chunk in Python
MAX_PNG_CHUNKS = 10000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_structure(data):
    """Refuse (ImageError), from the bytes alone and in milliseconds, the images whose decoding time
    grows with something other than their pixels: a JPEG of more than MAX_JPEG_SCANS scans (each
    scan is a pass over every block, so 100,000 empty ones cost seconds) and a PNG of more than
    MAX_PNG_CHUNKS chunks."""
    if data[:2] == b"\xff\xd8":
        scans = jpeg_scans(data)
        if scans > MAX_JPEG_SCANS:
            raise ImageError("progressive JPEG of %d scans, over the limit of %d" % (scans, MAX_JPEG_SCANS))
        if jpeg_header_steps(data, MAX_HEADER_STEPS + 1) > MAX_HEADER_STEPS:
            raise ImageError("JPEG header of %d or more segments, over the limit of %d"
                             % (MAX_HEADER_STEPS + 1, MAX_HEADER_STEPS))
    elif data[:8] == PNG_SIGNATURE and png_chunks(data, MAX_PNG_CHUNKS + 1) > MAX_PNG_CHUNKS:
        raise ImageError("PNG of %d or more chunks, over the limit of %d" % (MAX_PNG_CHUNKS + 1, MAX_PNG_CHUNKS))
    elif data[:3] == b"GIF" and gif_header_steps(data, MAX_HEADER_STEPS + 1) > MAX_HEADER_STEPS:
        raise ImageError("GIF of %d or more blocks before its first image, over the limit of %d"
                         % (MAX_HEADER_STEPS + 1, MAX_HEADER_STEPS))
    elif data[:2] == b"BM" and len(data) >= 34 and int.from_bytes(data[30:34], "little") in BMP_RLE:
        # Pillow decodes run-length BMPs in Python, a run a step: 30 MB of 1-pixel runs cost 6 s
        raise ImageError("run-length-encoded BMP: send it as PNG, or as an uncompressed BMP")


SCAN_COUNT_CHUNK = 1 << 20   # bytes compared at once: at most 3 MB of temporaries, whatever the file's size


def jpeg_scans(data):
    """A JPEG's scans, counted in C as its SOS markers: in entropy-coded data 0xFF is always followed
    by 0x00 or a restart marker, so every FF DA is a real one (an EXIF thumbnail's adds one). NumPy's
    comparisons, a chunk at a time, are 5x faster than bytes.count's two-byte search (35 against
    180 microseconds for a 192 KB photo), and the service counts on its event loop."""
    view = np.frombuffer(data, np.uint8)
    scans = 0
    for start in range(0, max(len(view) - 1, 0), SCAN_COUNT_CHUNK):
        pairs = view[start:start + SCAN_COUNT_CHUNK + 1]   # one byte more: a marker across two chunks counts once
        scans += int(np.count_nonzero((pairs[:-1] == 0xFF) & (pairs[1:] == 0xDA)))
    return scans


BMP_RLE = (1, 2)   # BI_RLE8, BI_RLE4: the BITMAPINFOHEADER's compression field


# Pillow reads a JPEG's segments before its first scan, and a GIF's blocks before its first image, in
# Python, a step each (and junk between them a byte a step): 10 MB of 4-byte segments cost 4-5 s.
# A camera's JPEG has about 20 such segments (a split ICC profile a few dozen more)
MAX_HEADER_STEPS = 10000


def jpeg_header_steps(data, stop):
    """The steps of Pillow's JPEG header parser up to the first scan (a segment, a fill or junk
    byte each), counting no further than `stop`."""
    pos, steps, last = 2, 0, len(data) - 4
    while pos <= last and steps < stop:
        steps += 1
        if data[pos] != 0xFF:
            pos += 1   # junk: skipped a byte at a time
            continue
        marker = data[pos + 1]
        if marker == 0xDA:
            break
        if marker in (0x00, 0xFF):
            pos += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD9:   # TEM, RSTn, SOI, EOI: no length
            pos += 2
        else:
            pos += 2 + (data[pos + 2] << 8 | data[pos + 3])
    return steps


def gif_header_steps(data, stop):
    """The steps of Pillow's GIF reader up to the first image descriptor (an extension's sub-block
    or a junk byte each), counting no further than `stop`."""
    if len(data) < 13:
        return 0
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)   # after the global colour table
    steps, end = 0, len(data)
    while pos < end and steps < stop:
        steps += 1
        if data[pos] == 0x21 and pos + 2 < end:   # an extension: label, then sub-blocks up to an empty one
            pos += 2
            while pos < end and data[pos] and steps < stop:
                steps += 1
                pos += 1 + data[pos]
            pos += 1
        elif data[pos] in (0x2C, 0x3B):   # the first image, or the trailer
            break
        else:
            pos += 1
    return steps


def png_chunks(data, stop):
    """How many chunks the PNG `data` holds up to its IEND, counting no further than `stop`: each
    chunk's length and type are read and its data skipped, so this is at most `stop` steps."""
    pos, count, last = 8, 0, len(data) - 8
    while pos <= last and count < stop:
        length, kind = struct.unpack_from(">I4s", data, pos)
        count += 1
        if kind == b"IEND":
            break
        pos += 12 + length   # length, type, data, CRC
    return count


_openers = None


def open_image(data):
    """Image.open of the bytes with formats= the FORMATS this Pillow registers an opener for
    (Pillow 13 has none named MPO: its JPEG opener returns the MPO images, and Image.open raises
    KeyError for a format it has no opener for)."""
    from PIL import Image
    global _openers
    if _openers is None:
        Image.init()   # every plugin imported once, so the list does not depend on what was opened before
        _openers = tuple(name for name in FORMATS if name in Image.OPEN)
    return Image.open(io.BytesIO(data), formats=_openers)


# What in Pillow's messages names its internals: a module or attribute, a limit's variable, Ghostscript
INTERNALS = re.compile(r"[A-Za-z_]\w*\.[A-Za-z_]\w*|MAX_[A-Z_]+|Ghostscript|Pillow|\bPIL\b|Plugin")


def pillow_error(e, doing, max_pixels=None):
    """The ImageError for an exception Pillow raised on an upload, in the API's terms: its
    decompression-bomb guard as ImageTooLarge, its PNG text limits, otherwise its message unless
    that names its internals."""
    from PIL import Image, PngImagePlugin
    text = str(e).strip()
    if isinstance(e, Image.DecompressionBombError):   # its guard (2 x MAX_IMAGE_PIXELS), checked in open()
        found = re.search(r"\((\d+) pixels\)", text)
        limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        limit = min(max_pixels, limit) if max_pixels and limit else (max_pixels or limit)
        if found and limit:
            return ImageTooLarge("image is %s pixels, over the limit of %d" % (found.group(1), limit))
        return ImageTooLarge("image declares more pixels than the service decodes")
    if "MAX_TEXT_CHUNK" in text:
        return ImageError("a text chunk of the PNG is over %d bytes" % PngImagePlugin.MAX_TEXT_CHUNK)
    if "MAX_TEXT_MEMORY" in text:
        return ImageError("the PNG's text chunks are over %d bytes" % PngImagePlugin.MAX_TEXT_MEMORY)
    if not text or INTERNALS.search(text):
        return ImageError("%s: the data is malformed (%s)" % (doing, type(e).__name__))
    return ImageError("%s: %s" % (doing, text))


def decode(data, max_pixels=None):
    """RGB uint8 HxWx3 from encoded bytes: the first frame of animations, EXIF orientation applied,
    any mode (grayscale, palette, RGBA, CMYK, 16-bit) to 8-bit RGB. The pixel count is checked from
    the header before anything is decoded, so a decompression bomb costs nothing, and so are a JPEG's
    scans and a PNG's chunks (check_structure); only FORMATS are read. The result may be
    a read-only view of the decoded image (no copy is made where none is needed)."""
    from PIL import ImageOps, UnidentifiedImageError
    if not data:
        raise ImageError("empty image")
    check_structure(data)
    try:
        with open_image(data) as img:
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
        raise ImageError(UNSUPPORTED)
    except ImageError:
        raise
    except MemoryError:
        raise ImageTooLarge("decoding the image needs more memory than is available")
    except Exception as e:  # OSError, SyntaxError, ValueError, EOFError, and for some codecs RuntimeError,
        # NotImplementedError, struct.error: all are the bytes' fault, never the server's; and Pillow's
        # DecompressionBombError, whose guard fires in open(), before ours
        raise pillow_error(e, "cannot decode image", max_pixels)


def probe(data):
    """(width, height, mode) from the image's header, nothing decoded: what a server needs to know
    what decoding will cost before it decides to."""
    return header(data)[:3]


def header(data):
    """(width, height, mode, format) from the image's header (Pillow's names), nothing decoded:
    FORMATS only, and check_structure's scan and chunk limits applied."""
    from PIL import UnidentifiedImageError
    if not data:
        raise ImageError("empty image")
    check_structure(data)
    try:
        with open_image(data) as img:
            width, height = img.size
            mode, fmt = img.mode, img.format
    except UnidentifiedImageError:
        raise ImageError(UNSUPPORTED)
    except Exception as e:
        raise pillow_error(e, "cannot read the image header")
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
