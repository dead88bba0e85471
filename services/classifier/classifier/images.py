"""From encoded images in a request to model inputs, with every limit applied before the work it
limits: images per request (count), pixels per image and per request (from the headers), and the
service-wide preprocessing memory budget (the worst case of decoding, reserved before decoding).

Decoding and preprocessing run on a thread pool sized to the cores (a lone small image on an idle
engine on the device's thread: the pipeline's one hop), never on the event loop. Large images (more
than the memory budget's small share to decode) have a thread of their own, so a client sending
huge or slow-to-decode images never makes an ordinary photo wait for a decoding thread.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from mbv3 import fast_preprocess, numpy_preprocess
from mbv3.errors import ImageError, ImageTooLarge

from .engine import Job
from .errors import ApiError, bad_request

# Bytes per decoded pixel budgeted for decoding + eval_transform, by what decodes the image: Pillow
# (by its mode: the reference, and the fast path's fallback) or libjpeg-turbo ("JPEG RGB"/"JPEG L",
# the fast path). Each is a peak measured with VmHWM on 4000x3000 images, rounded up (docs/api.md,
# "Limits", has the measurements); ROW_BYTES covers Pillow's per-row bookkeeping, which dominates
# for images one pixel wide. test_service_limits.py checks the sum against VmHWM.
BYTES_PER_PIXEL = {"1": 12, "L": 12, "P": 12, "RGB": 19, "RGBA": 18, "RGBX": 18, "CMYK": 18, "YCbCr": 18, "LA": 18,
                   "PA": 18, "I;16": 22, "I;16B": 22, "I;16L": 22, "I;16N": 22, "I": 32, "F": 32,
                   "JPEG RGB": 12, "JPEG L": 6}
DEFAULT_BYTES_PER_PIXEL = 32
ROW_BYTES = 96


@dataclass
class Upload:
    """One image of a request and what happened to it."""
    data: bytes
    name: Optional[str] = None
    width: int = 0
    height: int = 0
    mode: str = ""
    error: Optional[ApiError] = None
    logits: Optional[np.ndarray] = None
    timings: dict = field(default_factory=dict)

    @property
    def pixels(self):
        return self.width * self.height


def decode_cost(width, height, mode):
    return width * height * BYTES_PER_PIXEL.get(mode, DEFAULT_BYTES_PER_PIXEL) + height * ROW_BYTES


class Preprocessor:
    """Limits, probing and preprocessing for one service: the bundle's preprocessing record, the
    decoding pool, the per-request limits (MAX_IMAGES_PER_REQUEST, MAX_IMAGE_PIXELS,
    MAX_REQUEST_PIXELS) and the transform (PREPROCESSING: mbv3.fast_preprocess.select's choices).

    `transform(data, prep, max_pixels, normalize)` is a pure function of its arguments, so it may
    run on any thread (the engine may run a lone image's on an idle device's thread); it raises
    ImageError."""

    def __init__(self, prep, pool, max_images, max_image_pixels, max_request_pixels, preprocessing="auto",
                 large_pool=None, large_bytes=None):
        """large_pool: where images costing more than large_bytes to decode go (None: the pool)."""
        self.prep, self.pool = prep, pool
        self.large_pool, self.large_bytes = large_pool, large_bytes
        self.transform, self.description = fast_preprocess.select(preprocessing)
        fast = self.transform is fast_preprocess.model_input
        self._probe = fast_preprocess.probe if fast else numpy_preprocess.probe
        self._quick_probe = fast_preprocess.probe_jpeg if fast else (lambda data: None)
        self.max_images, self.max_image_pixels, self.max_request_pixels = max_images, max_image_pixels, max_request_pixels
        self.tensor_bytes = prep.height * prep.width * 3 * 4
        # eval_transform's float32 intermediates: four gathered corners, two row blends, the output
        self.transform_bytes = 8 * self.tensor_bytes

    def check_count(self, n):
        limit = self.max_images
        if n > limit:
            raise ApiError(413, "too_many_images", "%d images in one request, over the limit of %d "
                           "(MAX_IMAGES_PER_REQUEST); split the request" % (n, limit))

    async def probe(self, uploads):
        """Read every image's header on the pool; a bad header or an image over MAX_IMAGE_PIXELS
        marks that upload with its error."""
        quick = self._quick_probe(uploads[0].data) if len(uploads) == 1 else None
        if quick is not None:   # a lone JPEG: libjpeg's header parser, here, a thread hop saved
            headers = [quick]
        else:
            headers = await asyncio.get_running_loop().run_in_executor(
                self.pool, lambda: [_probe(self._probe, u.data) for u in uploads])
        for upload, found in zip(uploads, headers):
            if isinstance(found, ImageError):
                upload.error = image_error(found)
                continue
            upload.width, upload.height, upload.mode = found
            if upload.pixels > self.max_image_pixels:
                upload.error = ApiError(413, "image_too_large", "image is %dx%d pixels, over the limit of %d "
                                        "(MAX_IMAGE_PIXELS)" % (upload.width, upload.height, self.max_image_pixels))

    def check_pixels(self, uploads):
        total = sum(u.pixels for u in uploads)
        limit = self.max_request_pixels
        if total > limit:
            raise ApiError(413, "too_many_pixels", "the request's images hold %d pixels, over the limit of %d per "
                           "request (MAX_REQUEST_PIXELS); send fewer or smaller images" % (total, limit))

    def cost(self, uploads):
        """Worst-case bytes of preprocessing these uploads, as if all were decoded at once."""
        return sum(decode_cost(u.width, u.height, u.mode) + self.transform_bytes for u in uploads)

    def _pool_for(self, upload):
        if self.large_pool is not None and self.cost([upload]) > self.large_bytes:
            return self.large_pool
        return self.pool

    def tensors_cost(self, n):
        return n * self.tensor_bytes

    def job(self, upload, uint8, one_hop=False):
        """The engine's job for one upload: decode + crop + resize (+ normalise unless uint8) with
        the transform, on the decoding pool (the large-image thread for a large one)."""
        return Job(self.transform, (upload.data, self.prep, self.max_image_pixels, not uint8), self._pool_for(upload),
                   one_hop)


def _probe(probe, data):
    try:
        return probe(data)
    except ImageError as e:
        return e


def image_error(e):
    """The API's answer to an image that cannot be decoded or is too large."""
    if isinstance(e, ImageTooLarge):
        return ApiError(413, "image_too_large", str(e))
    return bad_request("invalid_image", str(e))
