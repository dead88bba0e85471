"""Service settings from the environment (and a .env file), with the names compose.yaml uses.
The defaults below are the only ones: compose.yaml and the Makefile pass a setting only when the
user sets it, and an empty value counts as unset (compose's `${VAR:-}` for a variable nobody set),
so the layer below it, in the end the default here, applies. A bad value stops start-up with one
line naming the variable."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields

from .backends import CHOICES



class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    MODEL_DIR: str = "bundles/mbv3"
    BACKEND: str = "auto"
    DEVICE_ID: int = 0
    MAX_BATCH: int = 8
    MAX_DELAY_MS: float = 5.0
    MAX_QUEUE: int = 256
    MAX_BODY_BYTES: int = 10 * 1024 * 1024
    MAX_IMAGE_PIXELS: int = 40_000_000        # one image, from its header
    MAX_IMAGES_PER_REQUEST: int = 64          # at most MAX_QUEUE, so a request can always be queued
    MAX_REQUEST_PIXELS: int = 50_000_000      # all images of one request
    PREPROCESS_MEMORY_MB: int = 1024          # decoding + preprocessing in flight, service-wide
    MAX_CONCURRENT_REQUESTS: int = 64         # requests in flight (bounds bodies held: x MAX_BODY_BYTES)
    MAX_WAIT_SECONDS: float = 10.0            # longest wait for the memory budget before a 503
    # a lone image up to this many pixels that finds the engine idle is decoded on the device thread
    # right before its inference (one thread hop instead of two); 0: always on the pool
    ONE_HOP_MAX_PIXELS: int = 1_000_000
    HOST: str = "127.0.0.1"
    PORT: int = 8000
    THREADS: int = 0                          # ONNX Runtime intra-op threads; 0: one per CPU this process may use
    PREPROCESS_WORKERS: int = 0               # 0: one per core this process may use
    LOG_LEVEL: str = "info"

    @property
    def preprocess_workers(self):
        return self.PREPROCESS_WORKERS or available_cpus()

    @property
    def threads(self):
        return self.THREADS or available_cpus()


def available_cpus():
    """CPUs this process may use: its affinity, capped by a cgroup CPU quota (a container's `cpus:`
    limit), rounded up. Thread pools sized by the host's cores would run more threads than the
    quota lets run at once."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota:
        count = min(count, int(math.ceil(quota)))
    return max(1, count)


def _cgroup_cpu_quota(root="/sys/fs/cgroup"):
    """CPUs of the quota (1.5 for --cpus=1.5), or None without one; cgroup v2, else v1."""
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            limit, period = f.read().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
            limit = int(f.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
            period = int(f.read())
        return None if limit <= 0 else limit / period
    except (OSError, ValueError):
        return None


def _read_dotenv(path):
    values = {}
    if not path or not os.path.exists(path):
        return values
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip().strip('"').strip("'")
    return values


def load(environ=None, dotenv=".env", **overrides) -> Settings:
    """Defaults <- .env <- environment <- keyword overrides (tests); an empty value is no value."""
    environ = os.environ if environ is None else environ
    raw = _given(_read_dotenv(dotenv))
    raw.update(_given({f.name: environ[f.name] for f in fields(Settings) if f.name in environ}))
    raw.update(_given({k: str(v) for k, v in overrides.items()}))
    values = {}
    for f in fields(Settings):
        if f.name not in raw:
            continue
        text = raw[f.name]
        try:
            values[f.name] = _convert(f.default, text)
        except ValueError:
            raise SettingsError("%s=%r is not a valid %s" % (f.name, text, type(f.default).__name__))
    if "MAX_IMAGES_PER_REQUEST" not in values and "MAX_QUEUE" in values:   # the default follows a smaller queue
        values["MAX_IMAGES_PER_REQUEST"] = max(1, min(Settings.MAX_IMAGES_PER_REQUEST, values["MAX_QUEUE"]))
    settings = Settings(**values)
    _validate(settings)
    return settings


def _given(values):
    return {name: text for name, text in values.items() if text != ""}


def _convert(default, text):
    if isinstance(default, bool):
        return text.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    return text


def _validate(s: Settings):
    if s.BACKEND not in CHOICES:
        raise SettingsError("BACKEND=%r: choose one of %s" % (s.BACKEND, ", ".join(CHOICES)))
    for name in ("MAX_BATCH", "MAX_QUEUE", "MAX_BODY_BYTES", "MAX_IMAGE_PIXELS", "MAX_IMAGES_PER_REQUEST",
                 "MAX_REQUEST_PIXELS", "PREPROCESS_MEMORY_MB", "MAX_CONCURRENT_REQUESTS"):
        if getattr(s, name) < 1:
            raise SettingsError("%s must be at least 1, got %s" % (name, getattr(s, name)))
    if s.MAX_IMAGES_PER_REQUEST > s.MAX_QUEUE:
        raise SettingsError("MAX_IMAGES_PER_REQUEST (%d) must not exceed MAX_QUEUE (%d): such a request could never "
                            "be queued" % (s.MAX_IMAGES_PER_REQUEST, s.MAX_QUEUE))
    if min(s.MAX_DELAY_MS, s.MAX_WAIT_SECONDS, s.PREPROCESS_WORKERS, s.ONE_HOP_MAX_PIXELS) < 0:
        raise SettingsError("MAX_DELAY_MS, MAX_WAIT_SECONDS, PREPROCESS_WORKERS and ONE_HOP_MAX_PIXELS must not be negative")
    if not 0 < s.PORT < 65536:
        raise SettingsError("PORT must be 1-65535, got %s" % s.PORT)
    if s.THREADS < 0 or s.DEVICE_ID < 0:
        raise SettingsError("THREADS and DEVICE_ID must not be negative")
