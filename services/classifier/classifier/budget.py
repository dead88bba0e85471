"""The service's memory limits that need state: a byte budget for preprocessing work, one for
request bodies being received, and the request slots (requests being processed).

A request reserves its worst case from the preprocessing budget (computed from image headers, before
anything is decoded) and gives it back when it is answered, so no mix of concurrent requests can hold
more than the budget. Small requests (at most an eighth of the budget: photos up to a few megapixels)
are served first, and large ones may never take the last eighth: however many huge images a client
sends, an ordinary request finds room at once. Within each class waiters are served first come,
first served; a request that could never fit is refused at once (413), one that waits longer than
the wait limit gets 503 with Retry-After.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib

from .errors import ApiError, unavailable

# the share of the budget that large requests leave to small ones, and the size of a small one
SMALL_SHARE = 8


class MemoryBudget:
    def __init__(self, total_bytes, wait_seconds, metrics=None):
        self.total = int(total_bytes)
        self.small = self.total // SMALL_SHARE       # a request of at most this many bytes is small
        self.large_limit = self.total - self.small   # large requests together never hold more
        self.wait_seconds = wait_seconds
        self.used = 0
        self.peak = 0
        self._waiters = {True: collections.deque(), False: collections.deque()}   # small?: [[bytes, future]]
        self._metrics = metrics
        if metrics is not None:
            metrics.budget_limit.set(self.total)

    def limit_for(self, nbytes):
        """The most the budget may hold with a request of `nbytes` admitted."""
        return self.total if nbytes <= self.small else self.large_limit

    @contextlib.asynccontextmanager
    async def hold(self, nbytes, what="this request"):
        nbytes = int(nbytes)
        if nbytes > self.limit_for(nbytes):
            raise ApiError(413, "over_memory_budget",
                           "%s needs %.1f MB to preprocess, over the %.1f MB one request may take of the service's "
                           "budget of %.1f MB (PREPROCESS_MEMORY_MB); send fewer or smaller images"
                           % (what, nbytes / 1e6, self.large_limit / 1e6, self.total / 1e6))
        await self._acquire(nbytes)
        try:
            yield
        finally:
            self._release(nbytes)

    def _fits_now(self, nbytes):
        small = nbytes <= self.small
        ahead = self._waiters[True] if small else (self._waiters[True] or self._waiters[False])
        return not ahead and self.used + nbytes <= self.limit_for(nbytes)

    async def _acquire(self, nbytes):
        if self._fits_now(nbytes):
            self._take(nbytes)
            return
        future = asyncio.get_running_loop().create_future()
        entry = [nbytes, future]
        queue = self._waiters[nbytes <= self.small]
        queue.append(entry)
        try:
            await asyncio.wait_for(future, self.wait_seconds)
        except BaseException as e:
            if future.done() and not future.cancelled():   # granted just as we gave up: give it back
                self._release(nbytes)
            elif entry in queue:
                queue.remove(entry)
                self._grant()
            if isinstance(e, asyncio.TimeoutError):
                if self._metrics is not None:
                    self._metrics.budget_timeouts.inc()
                raise unavailable("busy", "the server is preprocessing as much as its memory budget allows; retry shortly")
            raise

    def _take(self, nbytes):
        self.used += nbytes
        self.peak = max(self.peak, self.used)
        if self._metrics is not None:
            self._metrics.budget_used.set(self.used)

    def _release(self, nbytes):
        self.used -= nbytes
        if self._metrics is not None:
            self._metrics.budget_used.set(self.used)
        self._grant()

    def _grant(self):
        """Small waiters first, each class in its order; a large waiter that does not fit yet
        holds back the large ones behind it (no starving the largest), never a small one."""
        for small in (True, False):
            queue = self._waiters[small]
            while queue and (small or not self._waiters[True]):
                nbytes, future = queue[0]
                if future.done():
                    queue.popleft()
                    continue
                if self.used + nbytes > self.limit_for(nbytes):
                    break
                queue.popleft()
                self._take(nbytes)
                future.set_result(None)


class BodyMemory:
    """Bytes of request bodies being received or held, service-wide (BODY_MEMORY_MB). A body is
    charged as it arrives, so a client that trickles one holds only what it has sent; one that would
    pass the total is refused (503 busy) rather than waiting, since its bytes are already on the way."""

    def __init__(self, total_bytes):
        self.total = int(total_bytes)
        self.used = 0
        self.peak = 0

    def account(self):
        """A request's account: what it charges, given back at once by release()."""
        return BodyAccount(self)


class BodyAccount:
    def __init__(self, memory):
        self.memory, self.bytes = memory, 0

    def charge(self, nbytes):
        """Add `nbytes`; ApiError 503 when the service's total would pass its limit."""
        m = self.memory
        if m.used + nbytes > m.total:
            raise ApiError(503, "busy", "the request bodies being received fill the server's BODY_MEMORY_MB; "
                           "retry shortly", {"Retry-After": "1", "Connection": "close"})
        m.used += nbytes
        m.peak = max(m.peak, m.used)
        self.bytes += nbytes

    def release(self):
        self.memory.used -= self.bytes
        self.bytes = 0


class Slots:
    """At most `limit` requests being processed (MAX_CONCURRENT_REQUESTS). A request takes its slot
    once its body is in, so clients still sending hold none; more get a JSON 503 at once."""

    def __init__(self, limit):
        self.limit, self.used = limit, 0

    @property
    def full(self):
        return self.used >= self.limit

    @contextlib.contextmanager
    def hold(self):
        if self.full:
            raise unavailable("too_many_requests", "%d requests are being processed, the limit "
                              "(MAX_CONCURRENT_REQUESTS); retry shortly" % self.used)
        self.used += 1
        try:
            yield
        finally:
            self.used -= 1
