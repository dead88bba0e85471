"""Backend selection. `auto` takes the Ascend backend when pyACL imports and a device answers,
otherwise ONNX Runtime, and says which and why."""
from __future__ import annotations

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
