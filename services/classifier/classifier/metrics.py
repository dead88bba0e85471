"""Prometheus metrics, one registry per app so several apps (tests) never collide. Every label comes
from a closed set: a client can add no series."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("classifier_requests_total", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=r)
        self.request_latency = Histogram("classifier_request_duration_seconds", "HTTP request latency by route",
                                         ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage_latency = Histogram("classifier_stage_duration_seconds",
                                       "Per-image latency by stage (preprocess, queue, inference)",
                                       ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("classifier_batch_size", "Images per backend run",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.queue_depth = Gauge("classifier_queue_depth", "Images waiting for the backend", registry=r)
        self.backend_errors = Counter("classifier_backend_errors_total", "Failed backend runs", ["fatal"], registry=r)
        self.images = Counter("classifier_images_total", "Images classified", registry=r)
        self.budget_used = Gauge("classifier_preprocess_memory_bytes",
                                 "Bytes of the preprocessing memory budget reserved by requests in flight", registry=r)
        self.budget_limit = Gauge("classifier_preprocess_memory_limit_bytes", "The preprocessing memory budget",
                                  registry=r)
        self.budget_timeouts = Counter("classifier_preprocess_memory_timeouts_total",
                                       "Requests refused (503) after waiting MAX_WAIT_SECONDS for the budget", registry=r)
        self.ready = Gauge("classifier_ready", "1 once the model is loaded and warmed up", registry=r)
        # per device: the `device` label is one of the configured devices (DEVICE_IDS, or cpu0.. for
        # ONNX Runtime workers), fixed at start-up
        self.device_batches = Counter("classifier_device_batches_total", "Backend runs that succeeded, by device",
                                      ["device"], registry=r)
        self.device_images = Counter("classifier_device_images_total", "Images classified, by device", ["device"],
                                     registry=r)
        self.device_busy = Counter("classifier_device_busy_seconds_total",
                                   "Seconds a device spent on runs (failed ones too)", ["device"], registry=r)
        self.device_failures = Counter("classifier_device_failures_total", "Failed backend runs, by device",
                                       ["device", "fatal"], registry=r)
        self.device_ready = Gauge("classifier_device_ready", "1 while the device takes batches (0: loading, "
                                  "reloading after a fatal error, or stopped)", ["device"], registry=r)

    def observe_request(self, scope, status, seconds):
        """Count a request under labels from closed sets, so no client can grow /metrics: a method
        outside METHODS is `other`, and so is a path that matched no route (else its template)."""
        method = scope["method"] if scope["method"] in METHODS else "other"
        route = route_label(scope)
        self.requests.labels(route, method, str(status)).inc()
        self.request_latency.labels(route).observe(seconds)


def route_label(scope):
    """The matched route's template; FastAPI's own pages (/docs, /openapi.json) set no scope["route"],
    so a path equal to one of the app's fixed route paths counts as itself; anything else is `other`."""
    route = scope.get("route")
    if route is not None:
        return route.path
    path = scope["path"]
    for candidate in getattr(scope.get("app"), "routes", ()):
        if getattr(candidate, "path", None) == path and "{" not in path:
            return path
    return "other"
