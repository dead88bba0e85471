"""pyACL for the whole process: who calls acl.init and acl.finalize, what a return code means, and
whether a device answers. The backend (acl.py) builds on it; nothing here knows about models.

pyACL documents acl.init as callable once per process, so one owner, `RUNTIME`, calls it on first
use (probe_device or a backend), counts users, and calls acl.finalize only when the process exits
(atexit) or when finalize_runtime() is called with no user left -- never between a probe and the
backend that follows it, nor between closing a failed backend and loading it again. If something
else in the process already called acl.init (ACL_ERROR_REPEAT_INITIALIZE), the runtime is used but
never finalized by us.
"""
from __future__ import annotations

import atexit
import os
import re
import threading

from mbv3.errors import first_line

from .base import BackendError

# pyACL exposes no constants module; these are the values in the CANN pyACL API reference and Huawei's samples.
ACL_SUCCESS = 0
ACL_ERROR_REPEAT_INITIALIZE = 100002

ERROR_NAMES = {
    100000: "ACL_ERROR_INVALID_PARAM", 100001: "ACL_ERROR_UNINITIALIZE", 100002: "ACL_ERROR_REPEAT_INITIALIZE",
    100003: "ACL_ERROR_INVALID_FILE", 100011: "ACL_ERROR_INVALID_MODEL_ID", 100012: "ACL_ERROR_DESERIALIZE_MODEL",
    100013: "ACL_ERROR_PARSE_MODEL", 100014: "ACL_ERROR_READ_MODEL_FAILURE", 100015: "ACL_ERROR_MODEL_SIZE_INVALID",
    100017: "ACL_ERROR_MODEL_INPUT_NOT_MATCH", 100018: "ACL_ERROR_MODEL_OUTPUT_NOT_MATCH",
    100019: "ACL_ERROR_MODEL_NOT_DYNAMIC", 100037: "ACL_ERROR_REPEAT_FINALIZE",
    148051: "ACL_ERROR_RELATIVE_RESOURCE_NOT_CLEARED", 200000: "ACL_ERROR_BAD_ALLOC",
    200002: "ACL_ERROR_INVALID_DEVICE", 300000: "ACL_ERROR_STORAGE_OVER_LIMIT", 500000: "ACL_ERROR_INTERNAL_ERROR",
    500001: "ACL_ERROR_FAILURE", 500002: "ACL_ERROR_GE_FAILURE", 500003: "ACL_ERROR_RT_FAILURE",
    500004: "ACL_ERROR_DRV_FAILURE",
    107000: "ACL_ERROR_RT_PARAM_INVALID", 107001: "ACL_ERROR_RT_INVALID_DEVICEID",
    107002: "ACL_ERROR_RT_CONTEXT_NULL", 107003: "ACL_ERROR_RT_STREAM_CONTEXT", 107004: "ACL_ERROR_RT_MODEL_CONTEXT",
    107016: "ACL_ERROR_RT_INVALID_MEMORY_TYPE", 107019: "ACL_ERROR_RT_WAIT_TIMEOUT",
    107020: "ACL_ERROR_RT_TASK_TIMEOUT", 107022: "ACL_ERROR_RT_DEVICE_TASK_ABORT",
    207000: "ACL_ERROR_RT_FEATURE_NOT_SUPPORT", 207001: "ACL_ERROR_RT_MEMORY_ALLOCATION",
    207002: "ACL_ERROR_RT_MEMORY_FREE", 207004: "ACL_ERROR_RT_NO_DEVICE", 207018: "ACL_ERROR_RT_DEVICE_OOM",
    507000: "ACL_ERROR_RT_INTERNAL_ERROR", 507010: "ACL_ERROR_RT_LOST_HEARTBEAT",
    507011: "ACL_ERROR_RT_MODEL_EXECUTE", 507013: "ACL_ERROR_RT_SYS_DMA", 507014: "ACL_ERROR_RT_AICORE_TIMEOUT",
    507015: "ACL_ERROR_RT_AICORE_EXCEPTION", 507033: "ACL_ERROR_RT_DEV_SETUP_ERROR",
    507053: "ACL_ERROR_RT_DEVICE_MEM_ERROR", 507054: "ACL_ERROR_RT_HBM_MULTI_BIT_ECC_ERROR",
    507056: "ACL_ERROR_RT_LINK_ERROR", 507899: "ACL_ERROR_RT_DRV_INTERNAL_ERROR",
    507901: "ACL_ERROR_RT_SOCKET_CLOSE",
}

# The device (or the driver's link to it) is gone: nothing on it can be trusted until the backend
# is closed and loaded again.
FATAL_CODES = frozenset([
    107022,  # ACL_ERROR_RT_DEVICE_TASK_ABORT
    207004,  # ACL_ERROR_RT_NO_DEVICE
    500004,  # ACL_ERROR_DRV_FAILURE
    507010,  # ACL_ERROR_RT_LOST_HEARTBEAT
    507013,  # ACL_ERROR_RT_SYS_DMA
    507033,  # ACL_ERROR_RT_DEV_SETUP_ERROR
    507053,  # ACL_ERROR_RT_DEVICE_MEM_ERROR
    507054,  # ACL_ERROR_RT_HBM_MULTI_BIT_ECC_ERROR
    507056,  # ACL_ERROR_RT_LINK_ERROR
    507899,  # ACL_ERROR_RT_DRV_INTERNAL_ERROR
    507901,  # ACL_ERROR_RT_SOCKET_CLOSE
])


def import_acl():
    import acl  # pyACL, from CANN's nnrt/toolkit (PYTHONPATH set by set_env.sh)
    return acl


def _recent_message(acl):
    getter = getattr(acl, "get_recent_err_msg", None)
    if getter is None:
        return ""
    try:
        message = getter()
    except Exception:  # diagnostics only
        return ""
    return first_line(message or "", default="")


def error(acl, call, ret, fatal=None):
    """BackendError("<call> returned <code> (<name>): <pyACL's recent message>"); device-loss codes
    are fatal unless `fatal` says otherwise."""
    text = "%s returned %s (%s)" % (call, ret, ERROR_NAMES.get(ret, "ACL error"))
    detail = _recent_message(acl) if acl is not None else ""
    if detail:
        text += ": " + detail
    return BackendError(text, fatal=(ret in FATAL_CODES) if fatal is None else fatal)


class AclRuntime(object):
    """Owns acl.init/acl.finalize for the process (see the module docstring)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.acl = None
        self.state = "uninitialised"   # "owned", "external" (someone else's init), "finalized"
        self.users = 0

    def acquire(self):
        """The acl module, initialised; pair every call with release()."""
        with self._lock:
            acl = import_acl()
            if self.state in ("owned", "external") and self.acl is acl:
                self.users += 1
                return acl
            if self.state == "finalized" and self.acl is acl:
                raise BackendError("acl.finalize() was already called in this process and pyACL allows acl.init() "
                                   "once per process: restart the service", fatal=True)
            ret = acl.init()
            if ret == ACL_SUCCESS:
                self.state = "owned"
            elif ret == ACL_ERROR_REPEAT_INITIALIZE:
                self.state = "external"  # initialised by other code in this process: use it, never finalize it
            else:
                raise error(acl, "acl.init", ret, fatal=True)
            self.acl = acl
            self.users = 1
            _register_exit_hook()
            return acl

    def release(self):
        with self._lock:
            self.users = max(0, self.users - 1)

    def finalize(self):
        """acl.finalize() now, if we initialised pyACL and no backend or probe holds it."""
        with self._lock:
            if self.state != "owned":
                return
            if self.users:
                raise BackendError("cannot finalize pyACL: %d backend(s) still open" % self.users)
            ret = self.acl.finalize()
            self.state = "finalized"
            if ret != ACL_SUCCESS:
                raise error(self.acl, "acl.finalize", ret)


RUNTIME = AclRuntime()
_exit_hook = []


def _register_exit_hook():
    """Register, once and after pyACL is imported (atexit runs last-registered first), the exit
    hook that finalizes the process's runtime if nothing still holds it."""
    if not _exit_hook:
        atexit.register(_at_exit)
        _exit_hook.append(_at_exit)


def _at_exit():
    try:
        if RUNTIME.state == "owned" and not RUNTIME.users:
            RUNTIME.finalize()
    except Exception:  # the process is exiting; nothing useful to do with it
        pass


def finalize_runtime():
    """Call acl.finalize() now (also done at exit). Afterwards no AclBackend can be made in this process."""
    RUNTIME.finalize()


def probe_device(device_id):
    """(True, "") when pyACL initialises and device `device_id` can be set, else (False, reason).
    Leaves no device set; acl.init stays with the process-wide runtime owner (see module docstring)."""
    try:
        import_acl()
    except ImportError as e:
        return False, "pyACL not importable (%s)" % e
    runtime = RUNTIME
    try:
        acl = runtime.acquire()
    except BackendError as e:
        return False, str(e)
    except Exception as e:  # a broken pyACL install: report, do not crash start-up
        return False, "acl.init failed: %s" % e
    try:
        if hasattr(acl.rt, "get_device_count"):
            count, ret = acl.rt.get_device_count()
            if ret == ACL_SUCCESS and not 0 <= device_id < count:
                return False, "no Ascend device %d (%d device(s) visible)" % (device_id, count)
        ret = acl.rt.set_device(device_id)
        if ret != ACL_SUCCESS:
            return False, str(error(acl, "acl.rt.set_device(%d)" % device_id, ret))
        ret = acl.rt.reset_device(device_id)
        if ret != ACL_SUCCESS:
            return False, str(error(acl, "acl.rt.reset_device(%d)" % device_id, ret))
        return True, ""
    except Exception as e:
        return False, "pyACL device probe failed: %s" % e
    finally:
        runtime.release()


# The device nodes a container needs besides its chips' /dev/davinciN (Huawei's `docker run --device` lists)
SHARED_DEVICE_NODES = ("davinci_manager", "devmm_svm", "hisi_hdc")
CHIP_NODE = re.compile(r"^davinci(\d+)$")
VISIBLE_ENV = "ASCEND_VISIBLE_DEVICES"


def chip_nodes(dev="/dev"):
    """The chip numbers N of the /dev/davinciN nodes in `dev`, sorted."""
    try:
        names = os.listdir(dev)
    except OSError:
        return []
    return sorted(int(m.group(1)) for m in map(CHIP_NODE.match, names) if m)


def device_visibility(environ=None, dev="/dev"):
    """(chips, text): the /dev/davinciN numbers in this container and how they got here -- the Ascend
    Docker Runtime mounts what ASCEND_VISIBLE_DEVICES names (Huawei's device plugin with
    -useAscendDocker=true only sets that variable), while the plugin with -useAscendDocker=false, or
    `docker run --device`, mounts the nodes itself -- or, with no chip, which of the two is missing."""
    environ = os.environ if environ is None else environ
    chips = chip_nodes(dev)
    visible = environ.get(VISIBLE_ENV, "").strip()
    missing = [n for n in SHARED_DEVICE_NODES if not os.path.exists(os.path.join(dev, n))]
    lacking = "; also missing %s" % ", ".join("%s/%s" % (dev, n) for n in missing) if missing else ""
    nodes = ", ".join("%s/davinci%d" % (dev, n) for n in chips)
    if chips and visible:
        return chips, "%s (%s=%s: mounted by the Ascend Docker Runtime)%s" % (nodes, VISIBLE_ENV, visible, lacking)
    if chips:
        return chips, "%s (no %s: mounted as devices by the device plugin with -useAscendDocker=false or by " \
                      "`docker run --device`)%s" % (nodes, VISIBLE_ENV, lacking)
    if visible:
        return chips, "%s=%s is set but no %s/davinci<N> is in the container: nothing mounted the chips it names. " \
                      "The Ascend Docker Runtime is not installed on this node, or is not the container runtime " \
                      "(Docker: the `ascend` runtime; containerd: its runtime handler); install it, or run Huawei's " \
                      "device plugin with -useAscendDocker=false so that the plugin mounts the chips" \
                      % (VISIBLE_ENV, visible, dev)
    return chips, "no %s/davinci<N> in the container and no %s: no chip was handed to it (Kubernetes: request " \
                  "huawei.com/Ascend310 or huawei.com/Ascend310P from Huawei's device plugin; Docker: --device " \
                  "%s/davinci<N> plus %s, or the Ascend Docker Runtime with %s)" \
                  % (dev, VISIBLE_ENV, dev, ", ".join("%s/%s" % (dev, n) for n in SHARED_DEVICE_NODES), VISIBLE_ENV)


def device_count():
    """acl.rt.get_device_count(), with pyACL initialised by the process-wide runtime owner. Sets no device."""
    acl = RUNTIME.acquire()
    try:
        count, ret = acl.rt.get_device_count()
        if ret != ACL_SUCCESS:
            raise error(acl, "acl.rt.get_device_count", ret)
        return count
    finally:
        RUNTIME.release()
