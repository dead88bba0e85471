"""Request bodies: read under a byte limit whatever Content-Length says, at a minimum pace, charged to
the service's body memory; then /classify's raw image or multipart form turned into Uploads (a
multipart body is parsed on the decoding pool, never on the event loop)."""
from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass

from starlette.formparsers import MultiPartException, MultiPartParser

from .errors import ApiError, ClientDisconnected, bad_request, safe_text
from .images import Upload

IMAGE_TYPES = {"image/jpeg", "image/jpg", "image/png", "image/webp", "image/bmp", "image/x-ms-bmp", "image/gif",
               "application/octet-stream"}
CLOSE = {"Connection": "close"}   # the rest of an unread body is not worth reading


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int             # MAX_BODY_BYTES
    min_rate: float            # MIN_BODY_RATE, bytes a second on average ...
    grace: float               # ... counted after BODY_GRACE_SECONDS


class Received:
    """A request's body; `take()` hands it over once (so the reader's frame keeps no reference), and
    `charge()` adds what parsing it will cost to the request's account of body memory."""

    def __init__(self, data, account):
        self._data, self.charge = data, account.charge

    def take(self):
        data, self._data = self._data, None
        return data


@contextlib.asynccontextmanager
async def received(request, limits, memory):
    """The body (a Received), charged to `memory` (budget.BodyMemory) from its first byte until the
    block ends, each byte twice: the chunks, then the body they are joined into."""
    account = memory.account()
    try:
        yield Received(await read_body(request, limits, account), account)
    finally:
        account.release()


async def read_body(request, limits, account):
    """The body, refused with 413 as soon as it passes the byte limit, 408 once it falls behind
    the minimum pace (the client then holds a socket for seconds, not a slot or memory for ever)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limits.max_bytes:
        raise ApiError(413, "body_too_large", "body of %s bytes is over the limit of %d" % (declared, limits.max_bytes),
                       CLOSE)
    receive = request.receive
    chunks, size = [], 0
    loop = asyncio.get_running_loop()
    start = loop.time()
    # One timer, moved on as bytes arrive, cancels this task when the body falls behind: cheaper
    # than a wait_for (a task on Python < 3.12) for every chunk.
    pace = _Pace(loop, start + limits.grace)
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected("the client closed the connection while sending its body")
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limits.max_bytes:
                    raise ApiError(413, "body_too_large", "body is over the limit of %d bytes" % limits.max_bytes,
                                   CLOSE)
                account.charge(2 * len(chunk))
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
            pace.move(start + limits.grace + size / limits.min_rate)
    except asyncio.CancelledError:
        if not pace.cancel.fired:
            raise
        pace.cancel.handled()
        raise ApiError(408, "body_timeout", "the body arrived slower than %d bytes a second (%d bytes in %.1f s)"
                       % (limits.min_rate, size, loop.time() - start), CLOSE)
    finally:
        pace.stop()
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Canceller:
    """Cancels the current task for a reason of the caller's (a deadline, a client gone) and says
    whether it did, so the caller can tell its cancellation from anyone else's."""

    def __init__(self):
        self.task, self.fired = asyncio.current_task(), False

    def fire(self):
        self.fired = True
        self.task.cancel()

    def handled(self):
        """The caller has answered the cancellation it fired (Python 3.11+ counts it off the task)."""
        if hasattr(self.task, "uncancel"):
            self.task.uncancel()


class _Pace:
    """A deadline for the current task, moved on as bytes arrive: past it, `cancel` fires."""

    def __init__(self, loop, deadline):
        self.loop, self.cancel = loop, _Canceller()
        self.handle = loop.call_at(deadline, self.cancel.fire)

    def move(self, deadline):
        if deadline != self.handle.when():
            self.handle.cancel()
            self.handle = self.loop.call_at(deadline, self.cancel.fire)

    def stop(self):
        self.handle.cancel()


async def while_connected(request, work):
    """The result of the coroutine `work`, or ClientDisconnected as soon as the client goes: `work`
    is cancelled then, so whatever it holds (a slot, preprocessing memory, a place in the queue) is
    released at once rather than when work nobody will read is done. Call it once the body is in.
    `work` runs in this task; one watcher task cancels it (a task of its own would cost another)."""
    cancel = _Canceller()
    watch = asyncio.ensure_future(_cancel_when_gone(request.receive, cancel))
    try:
        return await work
    except asyncio.CancelledError:
        if not cancel.fired:
            raise   # cancelled for another reason (shutdown)
        cancel.handled()
        raise ClientDisconnected("the client closed the connection before its answer")
    finally:
        watch.cancel()


async def _cancel_when_gone(receive, cancel):
    while (await receive())["type"] != "http.disconnect":
        pass
    cancel.fire()


async def image_parts(request, body, max_images, pool):
    """[Upload] from a raw image body or a multipart form (its file parts, in order); a form is
    parsed on `pool`."""
    ctype = request.headers.get("content-type", "application/octet-stream").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        loop = asyncio.get_running_loop()
        try:
            files = await loop.run_in_executor(pool, _parse_form, request.headers, body, max_images)
        except (UnicodeError, LookupError) as e:   # a part's charset names a codec that cannot decode it
            raise bad_request("invalid_multipart", "cannot decode the multipart body's names: %s"
                              % safe_text(str(e), 120))
        except MultiPartException as e:
            if "Too many" in e.message:
                raise ApiError(413, "too_many_images", "more than %d parts in one request (MAX_IMAGES_PER_REQUEST); "
                               "split the request" % max_images)
            raise bad_request("invalid_multipart", "cannot parse the multipart body: %s" % e.message)
        if not files:
            raise bad_request("no_image", "the multipart body has no file part; send images as file fields")
        return [Upload(data, name=safe_text(name)) for name, data in files]
    if ctype not in IMAGE_TYPES:
        raise ApiError(415, "unsupported_media_type",
                       "Content-Type %s is not supported: send image/jpeg, image/png, image/webp, image/bmp, image/gif, "
                       "application/octet-stream or multipart/form-data" % safe_text(ctype, 64))
    if not body:
        raise bad_request("empty_body", "the request body is empty: send an image")
    return [Upload(body)]


_threads = threading.local()


def _parse_form(headers, body, max_images):
    """[(name, bytes)] of a form's file parts, on a pool thread: Starlette's parser is a coroutine,
    run on an event loop kept by that thread."""
    async def parse():
        async def stream():
            yield body
        parser = MultiPartParser(headers, stream(), max_files=max_images, max_fields=max_images)
        # No part outgrows the body already in memory (bounded by MAX_BODY_BYTES): never spool to a
        # temporary file, so the service runs on a read-only root file system.
        parser.spool_max_size = len(body)
        form = await parser.parse()
        return [(value.filename or key, await value.read()) for key, value in form.multi_items()
                if hasattr(value, "read")]
    loop = getattr(_threads, "loop", None)
    if loop is None:
        loop = _threads.loop = asyncio.new_event_loop()
    return loop.run_until_complete(parse())
