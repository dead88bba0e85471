"""Request bodies: read under a byte limit whatever Content-Length says, and /classify's raw image
or multipart form turned into Uploads."""
from __future__ import annotations

from starlette.formparsers import MultiPartException, MultiPartParser

from .errors import ApiError, bad_request
from .images import Upload

IMAGE_TYPES = {"image/jpeg", "image/jpg", "image/png", "image/webp", "image/bmp", "image/x-ms-bmp", "image/gif",
               "application/octet-stream"}


async def read_body(request, limit):
    """The body, refused with 413 as soon as it passes `limit` bytes, whatever Content-Length says."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", "body of %s bytes is over the limit of %d" % (declared, limit))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", "body is over the limit of %d bytes" % limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def image_parts(request, body, max_images):
    """[Upload] from a raw image body or a multipart form (its file parts, in order)."""
    ctype = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        async def stream():
            yield body
        parser = MultiPartParser(request.headers, stream(), max_files=max_images, max_fields=max_images)
        # No part outgrows the body already in memory (bounded by MAX_BODY_BYTES): never spool to a
        # temporary file, so the service runs on a read-only root file system.
        parser.spool_max_size = len(body)
        try:
            form = await parser.parse()
        except MultiPartException as e:
            if "Too many" in e.message:
                raise ApiError(413, "too_many_images", "more than %d parts in one request (MAX_IMAGES_PER_REQUEST); "
                               "split the request" % max_images)
            raise bad_request("invalid_multipart", "cannot parse the multipart body: %s" % e.message)
        parts = []
        for key, value in form.multi_items():
            if hasattr(value, "read"):
                parts.append(Upload(await value.read(), name=value.filename or key))
        if not parts:
            raise bad_request("no_image", "the multipart body has no file part; send images as file fields")
        return parts
    if ctype not in IMAGE_TYPES:
        raise ApiError(415, "unsupported_media_type",
                       "Content-Type %s is not supported: send image/jpeg, image/png, image/webp, image/bmp, image/gif, "
                       "application/octet-stream or multipart/form-data" % ctype)
    if not body:
        raise bad_request("empty_body", "the request body is empty: send an image")
    return [Upload(body)]
