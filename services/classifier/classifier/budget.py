"""The service's memory limits that need state: a byte budget for preprocessing work and a cap on
requests in flight (which bounds the request bodies held at once).

A request reserves its worst case from the budget (computed from image headers, before anything
is decoded) and gives it back when it is answered, so no mix of concurrent requests can hold more
than the budget. Waiters are served first come, first served; a request that could never fit is
refused at once (413), one that waits longer than the wait limit gets 503 with Retry-After.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib

from .errors import ApiError, error_response, unavailable


class MemoryBudget:
    def __init__(self, total_bytes, wait_seconds, metrics=None):
        self.total = int(total_bytes)
        self.wait_seconds = wait_seconds
        self.used = 0
        self.peak = 0
        self._waiters = collections.deque()   # [bytes, future], first come first served
        self._metrics = metrics
        if metrics is not None:
            metrics.budget_limit.set(self.total)

    @contextlib.asynccontextmanager
    async def hold(self, nbytes, what="this request"):
        nbytes = int(nbytes)
        if nbytes > self.total:
            raise ApiError(413, "over_memory_budget",
                           "%s needs %.1f MB to preprocess, over the service's budget of %.1f MB "
                           "(PREPROCESS_MEMORY_MB); send fewer or smaller images"
                           % (what, nbytes / 1e6, self.total / 1e6))
        await self._acquire(nbytes)
        try:
            yield
        finally:
            self._release(nbytes)

    async def _acquire(self, nbytes):
        if not self._waiters and self.used + nbytes <= self.total:
            self._take(nbytes)
            return
        future = asyncio.get_running_loop().create_future()
        entry = [nbytes, future]
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(future, self.wait_seconds)
        except BaseException as e:
            if future.done() and not future.cancelled():   # granted just as we gave up: give it back
                self._release(nbytes)
            elif entry in self._waiters:
                self._waiters.remove(entry)
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
        while self._waiters and self.used + self._waiters[0][0] <= self.total:
            nbytes, future = self._waiters.popleft()
            if future.done():
                continue
            self._take(nbytes)
            future.set_result(None)


class InFlight:
    """The requests the server holds now, probes aside: ConcurrencyLimit counts them, the pipeline
    reads the count (a lone image runs on the event loop only when nothing else is in the server)."""

    def __init__(self):
        self.count = 0


class ConcurrencyLimit:
    """ASGI middleware: at most `limit` HTTP requests in flight; more get a JSON 503 at once. Each
    holds at most MAX_BODY_BYTES of body, so this also bounds the bodies held in memory. Health
    and metrics probes are never refused, nor counted."""

    EXEMPT = ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready")

    def __init__(self, app, limit, in_flight):
        """in_flight: the InFlight this middleware counts in."""
        self.app, self.limit, self.in_flight = app, limit, in_flight

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.EXEMPT:
            return await self.app(scope, receive, send)
        if self.in_flight.count >= self.limit:
            error = unavailable("too_many_requests", "%d requests are in flight, the limit (MAX_CONCURRENT_REQUESTS); "
                                "retry shortly" % self.in_flight.count)
            response = error_response(scope["path"], error.status, error.code, error.message,
                                      scope.get("state", {}).get("request_id"), error.headers)
            return await response(scope, receive, send)
        self.in_flight.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight.count -= 1
