"""Backend selection: which backend serves a bundle, built from the bundle's files and record and a
few explicit choices. `auto` takes the Ascend backend when pyACL imports and a device answers,
otherwise ONNX Runtime, and says which and why."""
from __future__ import annotations

import importlib.util
import sys

from mbv3.bundle import OM, ONNX

from .base import Backend, BackendError  # noqa: F401

# What BACKEND may say. A new backend is a module here (a Backend subclass), its name in this tuple
# and its branch in create(): nothing else in the service names backends.
CHOICES = ("auto", "onnxruntime", "acl")


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


def create(bundle, *, backend, device_id, threads, max_batch, log=print):
    """The backend for `bundle` (mbv3.bundle.Bundle): `backend` is auto, onnxruntime or acl; the
    Ascend backend runs on `device_id`, ONNX Runtime with `threads` and runs of up to `max_batch`."""
    name = backend
    if name == "auto":
        ok, why = acl_available(device_id)
        name = "acl" if ok else "onnxruntime"
        log("BACKEND=auto: using %s%s" % (name, "" if ok else " (%s)" % why))
    if name == "acl":
        from .acl import AclBackend
        om = bundle.info.om
        return AclBackend(bundle.file(om.file if om else OM), bundle.info, device_id)
    from .onnxruntime import OnnxRuntimeBackend
    return OnnxRuntimeBackend(bundle.file(ONNX), bundle.info, threads, max_batch)


def release_process_resources():
    """At service shutdown, after the backend is closed: pyACL is finalized once per process, so
    its finalize belongs to the end of the process, not to a backend's close (which a fatal error
    follows with a reload)."""
    acl_runtime = sys.modules.get(__name__ + ".acl_runtime")
    if acl_runtime is not None:
        acl_runtime.finalize_runtime()
