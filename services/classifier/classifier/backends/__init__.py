"""Backend selection. `auto` takes the Ascend backend when pyACL imports and a device answers,
otherwise ONNX Runtime, and says which and why."""
from __future__ import annotations

import sys

from .base import Backend, BackendError  # noqa: F401


def acl_available(device_id):
    """(True, "") when pyACL imports and device `device_id` can be opened, else (False, reason)."""
    try:
        import acl  # noqa: F401
    except ImportError as e:
        return False, "pyACL not importable (%s)" % e
    from .acl import probe_device
    return probe_device(device_id)


def create(bundle, settings, log=print):
    name = settings.BACKEND
    if name == "auto":
        ok, why = acl_available(settings.DEVICE_ID)
        name = "acl" if ok else "onnxruntime"
        log("BACKEND=auto: using %s%s" % (name, "" if ok else " (%s)" % why))
    if name == "acl":
        from .acl import AclBackend
        return AclBackend(bundle, settings)
    from .onnxruntime import OnnxRuntimeBackend
    return OnnxRuntimeBackend(bundle, settings)


def release_process_resources():
    """At service shutdown, after the backend is closed: pyACL is finalized once per process, so
    its finalize belongs to the end of the process, not to a backend's close (which a fatal error
    follows with a reload)."""
    acl_backend = sys.modules.get(__name__ + ".acl")
    if acl_backend is not None:
        acl_backend.finalize_runtime()
