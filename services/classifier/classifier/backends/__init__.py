"""Backend selection: which backend serves a bundle, built from the bundle's files and record and a
few explicit choices. `auto` takes the Ascend backend when pyACL imports and a device answers,
otherwise the first CPU backend of CPU_PREFERENCE that imports, and says which and why."""
from __future__ import annotations

import importlib.util
import sys

from mbv3.bundle import OM, ONNX

from .base import Backend, BackendError  # noqa: F401

# What BACKEND may say. A new backend is a module here (a Backend subclass), its name in this tuple
# and its branch in create(): nothing else in the service names backends.
CHOICES = ("auto", "onnxruntime", "openvino", "acl")
# BACKEND=auto's CPU engine, in order of preference: `make bench-serve` (--compare-backends) at 1 and 32 clients
# decided it (README, Measured numbers)
CPU_PREFERENCE = ("openvino", "onnxruntime")


def acl_available(device_id):
    """(True, "") when pyACL imports and device `device_id` can be opened, else (False, reason)."""
    try:
        import acl  # noqa: F401
    except ImportError as e:
        return False, "pyACL not importable (%s)" % e
    from .acl_runtime import probe_device
    return probe_device(device_id)


def runs_on_devices(backend):
    """Whether `backend` serves with one worker per Ascend device (acl; auto where pyACL is
    installed) rather than with CPU workers. Looks for pyACL without importing it: no device is
    touched here."""
    if backend == "acl":
        return True
    return backend == "auto" and importlib.util.find_spec("acl") is not None


def count_devices():
    """How many Ascend devices pyACL sees (inside a container: the chips handed to it, which pyACL
    numbers from 0); BackendError when it cannot say."""
    try:
        from .acl_runtime import device_count
        return device_count()
    except ImportError as e:
        raise BackendError("pyACL not importable (%s)" % e)


def device_visibility():
    """(chips, text): the /dev/davinciN in this container and how they got here, or what is missing
    (acl_runtime.device_visibility; reads /dev and the environment, imports no pyACL)."""
    from .acl_runtime import device_visibility as visibility
    return visibility()


def cpu_choice():
    """(name, why) of BACKEND=auto's CPU backend: the first of CPU_PREFERENCE whose package imports."""
    missing = []
    for name in CPU_PREFERENCE:
        if importlib.util.find_spec(name) is not None:
            return name, "; ".join(missing)
        missing.append("%s not installed" % name)
    return CPU_PREFERENCE[-1], "; ".join(missing)


def create(bundle, *, backend, device_id, threads, max_batch, cache_dir="", log=print):
    """The backend for `bundle` (mbv3.bundle.Bundle): `backend` is one of CHOICES; the Ascend backend
    runs on `device_id`, the CPU backends with `threads` and runs of up to `max_batch`; OpenVINO
    keeps its compiled models in `cache_dir` when one is given."""
    name = backend
    if name == "auto":
        ok, why = acl_available(device_id)
        if not ok:
            name, missing = cpu_choice()
            why = "; ".join(w for w in (why, missing) if w)
        else:
            name = "acl"
        log("BACKEND=auto: using %s%s" % (name, "" if ok else " (%s)" % why))
    if name == "acl":
        from .acl import AclBackend
        om = bundle.info.om
        return AclBackend(bundle.file(om.file if om else OM), bundle.info, device_id)
    if name == "openvino":
        from .openvino import OpenVinoBackend
        return OpenVinoBackend(bundle.file(ONNX), bundle.info, threads, max_batch, cache_dir)
    from .onnxruntime import OnnxRuntimeBackend
    return OnnxRuntimeBackend(bundle.file(ONNX), bundle.info, threads, max_batch)


def release_process_resources():
    """At service shutdown, after the backend is closed: pyACL is finalized once per process, so
    its finalize belongs to the end of the process, not to a backend's close (which a fatal error
    follows with a reload)."""
    acl_runtime = sys.modules.get(__name__ + ".acl_runtime")
    if acl_runtime is not None:
        acl_runtime.finalize_runtime()
