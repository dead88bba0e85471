"""Service settings from the environment (and a .env file), with the names compose.yaml uses.
The defaults below are the only ones: compose.yaml and the Makefile pass a setting only when the
user sets it, and an empty value counts as unset (compose's `${VAR:-}` for a variable nobody set),
so the layer below it, in the end the default here, applies. A bad value stops start-up with one
line naming the variable."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields

from mbv3.fast_preprocess import CHOICES as PREPROCESSING_CHOICES

from .backends import CHOICES, PRECISIONS
from .errors import ServiceError
from .transport import PARSERS as HTTP_PARSERS


class SettingsError(ServiceError, ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    MODEL_DIR: str = "bundles/mbv3"
    BACKEND: str = "auto"
    # Ascend devices, one worker each: "0,1,2,3", or "all" (every device pyACL counts; inside a
    # container, the chips handed to it, numbered from 0). DEVICE_ID=N is read as DEVICE_IDS=N.
    DEVICE_IDS: str = "0"
    # CPU backend workers, each its own models and thread; 0: one per CPU, at most 4 (backends.auto_cpu_workers)
    CPU_WORKERS: int = 0
    MAX_BATCH: int = 8
    MAX_DELAY_MS: float = 5.0
    MAX_QUEUE: int = 256
    MAX_BODY_BYTES: int = 10 * 1024 * 1024
    MAX_IMAGE_PIXELS: int = 40_000_000        # one image, from its header
    MAX_IMAGES_PER_REQUEST: int = 64          # at most MAX_QUEUE, so a request can always be queued
    MAX_REQUEST_PIXELS: int = 50_000_000      # all images of one request
    PREPROCESS_MEMORY_MB: int = 1024          # decoding + preprocessing in flight, service-wide
    # requests being processed, each counted once its body is in (health and metrics probes never count)
    MAX_CONCURRENT_REQUESTS: int = 64
    MAX_WAIT_SECONDS: float = 10.0            # longest wait for the memory budget before a 503
    # a lone image up to this many pixels that finds the engine idle is decoded on the device thread
    # right before its inference (one thread hop instead of two); 0: always on the pool
    ONE_HOP_MAX_PIXELS: int = 1_000_000
    # bodies being received or held by requests, service-wide; each byte counts twice (chunks, then the
    # whole body they are joined into)
    BODY_MEMORY_MB: int = 512
    # a body must arrive at this average rate, counted from the end of its headers after the grace
    MIN_BODY_RATE: int = 65536                # bytes a second
    BODY_GRACE_SECONDS: float = 5.0
    HEADER_TIMEOUT_SECONDS: float = 10.0      # a request's head must be complete within this
    MAX_HEADER_BYTES: int = 32768             # a request's head: request line and headers
    MAX_HEADERS: int = 100                    # header lines in a request's head
    KEEP_ALIVE_SECONDS: float = 5.0           # an idle keep-alive connection closes after this
    SEND_TIMEOUT_SECONDS: float = 30.0        # an answer the client leaves unread this long closes the connection
    MAX_CONNECTIONS: int = 1000               # connections open at once
    # numbers and strings in a v2 JSON header: parsing holds the interpreter (about 45 ms for 131,072
    # floats), so larger tensors (one 224x224x3 input is 150,528 values) go binary
    MAX_JSON_VALUES: int = 1 << 17
    HOST: str = "127.0.0.1"
    PORT: int = 8000
    # CPU backend threads a worker; 0: the CPUs split among workers for batches, all of them for a lone image
    THREADS: int = 0
    # OpenVINO's compiled-model cache; empty: none (compiling MobileNetV3 takes 0.1-0.2 s, and the
    # containers' root file system is read-only)
    OPENVINO_CACHE_DIR: str = ""
    # What the CPU backend runs (backends.choose_precision, decided at start-up): auto takes the fastest
    # variant (bf16, int8) the bundle records as validated for the backend's engine (mbv3 quantize) and
    # the CPU runs natively, else f32; f32 always float32; bf16/int8 that cannot run stop start-up.
    # The Ascend backend runs its .om as built: auto or f32 only.
    PRECISION: str = "auto"
    PREPROCESS_WORKERS: int = 0               # 0: one per core this process may use
    # auto: libjpeg-turbo + OpenCV when installed (mbv3.fast_preprocess), else Pillow + NumPy (the reference)
    PREPROCESSING: str = "auto"
    # auto: httptools' C parser when installed, else h11 (pure Python); both refuse bad requests in JSON
    HTTP_PARSER: str = "auto"
    LOG_LEVEL: str = "info"

    @property
    def preprocess_workers(self):
        return self.PREPROCESS_WORKERS or available_cpus()

    @property
    def device_ids(self):
        """DEVICE_IDS as a tuple of device numbers, or ALL_DEVICES."""
        return parse_device_ids(self.DEVICE_IDS)


ALL_DEVICES = "all"
# An older single-device name, read as the list setting it is now part of.
ALIASES = {"DEVICE_ID": "DEVICE_IDS"}


def parse_device_ids(text):
    """"0,1,2,3" -> (0, 1, 2, 3); "all" -> ALL_DEVICES. ValueError saying what is wrong otherwise."""
    if text.strip().lower() == ALL_DEVICES:
        return ALL_DEVICES
    items = [item.strip() for item in text.split(",")]
    if not all(item.isdigit() for item in items):
        raise ValueError("a comma-separated list of device numbers (0,1,2,3) or %s" % ALL_DEVICES)
    ids = tuple(int(item) for item in items)
    if len(set(ids)) != len(ids):
        raise ValueError("a device is listed twice")
    return ids


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
    names = [f.name for f in fields(Settings)] + list(ALIASES)
    raw = {}
    for layer in (_read_dotenv(dotenv), {n: environ[n] for n in names if n in environ},
                  {k: str(v) for k, v in overrides.items()}):
        raw.update(_aliased(_given(layer)))
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


def _aliased(layer):
    """One layer (.env, environment, overrides) with each alias read as its setting: the alias holds one
    value of it (DEVICE_ID=2 is DEVICE_IDS=2), and a layer that sets both is refused."""
    for alias, name in ALIASES.items():
        if alias in layer:
            if name in layer:
                raise SettingsError("set %s or %s, not both" % (name, alias))
            text = layer.pop(alias)
            if not text.strip().isdigit():
                raise SettingsError("%s=%r is not a device number (%s takes a list)" % (alias, text, name))
            layer[name] = text.strip()
    return layer


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
    if s.PRECISION not in PRECISIONS:
        raise SettingsError("PRECISION=%r: choose one of %s" % (s.PRECISION, ", ".join(PRECISIONS)))
    if s.HTTP_PARSER not in HTTP_PARSERS:
        raise SettingsError("HTTP_PARSER=%r: choose one of %s" % (s.HTTP_PARSER, ", ".join(HTTP_PARSERS)))
    if s.PREPROCESSING not in PREPROCESSING_CHOICES:
        raise SettingsError("PREPROCESSING=%r: choose one of %s" % (s.PREPROCESSING, ", ".join(PREPROCESSING_CHOICES)))
    for name in ("MAX_BATCH", "MAX_QUEUE", "MAX_BODY_BYTES", "MAX_IMAGE_PIXELS", "MAX_IMAGES_PER_REQUEST",
                 "MAX_REQUEST_PIXELS", "PREPROCESS_MEMORY_MB", "MAX_CONCURRENT_REQUESTS",
                 "BODY_MEMORY_MB", "MIN_BODY_RATE", "MAX_HEADER_BYTES", "MAX_HEADERS", "MAX_CONNECTIONS",
                 "MAX_JSON_VALUES"):
        if getattr(s, name) < 1:
            raise SettingsError("%s must be at least 1, got %s" % (name, getattr(s, name)))
    if s.MAX_IMAGES_PER_REQUEST > s.MAX_QUEUE:
        raise SettingsError("MAX_IMAGES_PER_REQUEST (%d) must not exceed MAX_QUEUE (%d): such a request could never "
                            "be queued" % (s.MAX_IMAGES_PER_REQUEST, s.MAX_QUEUE))
    if min(s.MAX_DELAY_MS, s.MAX_WAIT_SECONDS, s.PREPROCESS_WORKERS, s.ONE_HOP_MAX_PIXELS, s.BODY_GRACE_SECONDS) < 0:
        raise SettingsError("MAX_DELAY_MS, MAX_WAIT_SECONDS, PREPROCESS_WORKERS, ONE_HOP_MAX_PIXELS and "
                            "BODY_GRACE_SECONDS must not be negative")
    for name in ("HEADER_TIMEOUT_SECONDS", "KEEP_ALIVE_SECONDS", "SEND_TIMEOUT_SECONDS"):
        if getattr(s, name) <= 0:
            raise SettingsError("%s must be above 0, got %s" % (name, getattr(s, name)))
    if s.BODY_MEMORY_MB * 1024 * 1024 < 2 * s.MAX_BODY_BYTES:
        raise SettingsError("BODY_MEMORY_MB (%d) must hold one body of MAX_BODY_BYTES twice (%.1f MB)"
                            % (s.BODY_MEMORY_MB, 2 * s.MAX_BODY_BYTES / 1048576))
    if not 0 < s.PORT < 65536:
        raise SettingsError("PORT must be 1-65535, got %s" % s.PORT)
    if s.THREADS < 0 or s.CPU_WORKERS < 0:
        raise SettingsError("THREADS and CPU_WORKERS must not be negative")
    try:
        parse_device_ids(s.DEVICE_IDS)
    except ValueError as e:
        raise SettingsError("DEVICE_IDS=%r: %s" % (s.DEVICE_IDS, e))
