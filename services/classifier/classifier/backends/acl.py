"""Ascend 310/310P: the bundle's `.om` (ATC output) through pyACL.

The call sequence is pyACL's documented one (init, set_device, create_context, load_from_file,
model desc, device buffers, datasets, memcpy, execute, copy back; teardown in reverse), every
return code is checked, and a failure becomes BackendError("acl.<call> returned <code> ...");
device-loss codes make it fatal (the service then closes the backend and loads it again).

Threads: an ACL context is bound to the thread that created it. The service creates, runs and
closes a backend on one worker thread; run()/close() from another thread first make the context
current there with acl.rt.set_context (a lock serialises use of the one model id).

Batches: with batch profiles (ATC --dynamic_batch_size, input `ascend_mbatch_shape_data`) a batch
of N runs in the smallest profile >= N, zero-padded, and the output is cut back to N. A static .om
runs its fixed batch the same way. Device/host buffers and datasets are made once per profile on
first use and reused. With AIPP (metadata om.aipp) the model takes uint8 RGB NHWC and does the
[-1, 1] normalisation itself, so input_dtype is np.uint8.

acl.init once per process: pyACL documents acl.init as callable once per process, so a
module-level runtime owner (`_RUNTIME`) calls it on first use (probe_device or a backend), counts
users, and calls acl.finalize only when the process exits (atexit) or when finalize_runtime() is
called with no user left -- never between a probe and the backend that follows it, nor between
closing a failed backend and loading it again. If something else in the process already called
acl.init (ACL_ERROR_REPEAT_INITIALIZE), the runtime is used but never finalized by us.
AclBackend.close() therefore tears down everything it made (buffers, datasets, memory, model,
desc, context, device) and releases its hold on the runtime; the final acl.finalize follows at exit.
"""
from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import threading

import numpy as np

from mbv3.errors import first_line

from .base import Backend, BackendError

log = logging.getLogger(__name__)

# pyACL exposes no constants module; these are the documented values (ASCEND.md).
ACL_SUCCESS = 0
ACL_MEM_MALLOC_HUGE_FIRST = 0
ACL_MEMCPY_HOST_TO_DEVICE = 1
ACL_MEMCPY_DEVICE_TO_HOST = 2
NPY_FLOAT32 = 11
ACL_ERROR_REPEAT_INITIALIZE = 100002
MBATCH_INPUT = "ascend_mbatch_shape_data"
DEFAULT_OM = "model.om"

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


def _import_acl():
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


def _error(acl, call, ret, fatal=None):
    text = "%s returned %s (%s)" % (call, ret, ERROR_NAMES.get(ret, "ACL error"))
    detail = _recent_message(acl) if acl is not None else ""
    if detail:
        text += ": " + detail
    return BackendError(text, fatal=(ret in FATAL_CODES) if fatal is None else fatal)


class _AclRuntime(object):
    """Owns acl.init/acl.finalize for the process (see the module docstring)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.acl = None
        self.state = "uninitialised"   # "owned", "external" (someone else's init), "finalized"
        self.users = 0
        self._atexit = False

    def acquire(self):
        """The acl module, initialised; pair every call with release()."""
        with self._lock:
            acl = _import_acl()
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
                raise _error(acl, "acl.init", ret, fatal=True)
            self.acl = acl
            self.users = 1
            if not self._atexit:
                atexit.register(self._at_exit)
                self._atexit = True
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
                raise _error(self.acl, "acl.finalize", ret)

    def forget(self):
        """Tests only: the `acl` module was replaced or reset (simulator), start from scratch."""
        with self._lock:
            self.acl, self.state, self.users = None, "uninitialised", 0

    def _at_exit(self):
        try:
            if self.state == "owned" and not self.users:
                self.finalize()
        except Exception:  # the process is exiting; nothing useful to do with it
            pass


_RUNTIME = _AclRuntime()


def finalize_runtime():
    """Call acl.finalize() now (also done at exit). Afterwards no AclBackend can be made in this process."""
    _RUNTIME.finalize()


def probe_device(device_id):
    """(True, "") when pyACL initialises and device `device_id` can be set, else (False, reason).
    Leaves no device set; acl.init stays with the process-wide runtime owner (see module docstring)."""
    try:
        _import_acl()
    except ImportError as e:
        return False, "pyACL not importable (%s)" % e
    try:
        acl = _RUNTIME.acquire()
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
            return False, str(_error(acl, "acl.rt.set_device(%d)" % device_id, ret))
        ret = acl.rt.reset_device(device_id)
        if ret != ACL_SUCCESS:
            return False, str(_error(acl, "acl.rt.reset_device(%d)" % device_id, ret))
        return True, ""
    except Exception as e:
        return False, "pyACL device probe failed: %s" % e
    finally:
        _RUNTIME.release()


class _Slot(object):
    """Everything one batch size needs, made once: device input/output (+ mbatch) memory, the
    host output buffer, data buffers and the two datasets."""

    def __init__(self, batch):
        self.batch = batch
        self.in_dev = self.out_dev = self.out_host = self.mbatch_dev = None
        self.in_size = self.out_size = 0
        self.in_ds = self.out_ds = None
        self.device_ptrs = []
        self.buffers = []


class AclBackend(Backend):
    name = "acl"

    def __init__(self, bundle, settings):
        super().__init__(bundle, settings)
        self.device_id = int(settings.DEVICE_ID)
        self._lock = threading.RLock()
        self._closed = False
        self._broken = None
        self._slots = {}
        self._device_set = False
        self._holds_runtime = False
        self.context = None
        self.model_id = None
        self.desc = None
        self.acl = None
        self.om_info = dataclasses.asdict(bundle.info.om) if bundle.info.om else {}
        self.om_path = bundle.file(self.om_info.get("file") or DEFAULT_OM)
        if not os.path.isfile(self.om_path):
            raise BackendError("no Ascend model at %s: convert the bundle with ATC (`make om`) on a CANN machine"
                               % self.om_path, fatal=True)
        self.acl = _RUNTIME.acquire()
        self._holds_runtime = True
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # --- loading --------------------------------------------------------------------------------

    def _check(self, call, ret, fatal=None):
        if ret != ACL_SUCCESS:
            raise _error(self.acl, call, ret, fatal)

    def _open(self):
        acl = self.acl
        self._check("acl.rt.set_device(%d)" % self.device_id, acl.rt.set_device(self.device_id), fatal=True)
        self._device_set = True
        self.context, ret = acl.rt.create_context(self.device_id)
        self._check("acl.rt.create_context", ret, fatal=True)
        self.model_id, ret = acl.mdl.load_from_file(self.om_path)
        if ret != ACL_SUCCESS:
            self.model_id = None
            raise _error(acl, "acl.mdl.load_from_file(%s)" % self.om_path, ret, fatal=True)
        self.desc = acl.mdl.create_desc()
        if not self.desc:
            raise BackendError("acl.mdl.create_desc returned no descriptor", fatal=True)
        self._check("acl.mdl.get_desc", acl.mdl.get_desc(self.desc, self.model_id), fatal=True)
        self._inspect_model()

    def _inspect_model(self):
        acl, model_info = self.acl, self.bundle.info
        num_inputs = acl.mdl.get_num_inputs(self.desc)
        num_outputs = acl.mdl.get_num_outputs(self.desc)
        self.mbatch_index = None
        self.profiles = []
        if num_inputs > 1:
            index, ret = acl.mdl.get_input_index_by_name(self.desc, MBATCH_INPUT)
            if ret == ACL_SUCCESS and index >= 0:
                self.mbatch_index = index
        if self.mbatch_index is not None:
            info, ret = acl.mdl.get_dynamic_batch(self.desc)
            self._check("acl.mdl.get_dynamic_batch", ret, fatal=True)
            self.profiles = sorted(int(b) for b in info["batch"][:info.get("batchCount", len(info["batch"]))])
            if not self.profiles:
                raise BackendError("%s has an %s input but no batch profiles" % (self.om_path, MBATCH_INPUT), fatal=True)
            self.mbatch_size = acl.mdl.get_input_size_by_index(self.desc, self.mbatch_index)
        data_inputs = [i for i in range(num_inputs) if i != self.mbatch_index]
        if len(data_inputs) != 1 or num_outputs != 1:
            raise BackendError("%s has %d data input(s) and %d output(s); expected one image input and one logits output"
                               % (self.om_path, len(data_inputs), num_outputs), fatal=True)
        recorded = self.om_info.get("batch_profiles")
        if recorded and sorted(recorded) != self.profiles:
            log.warning("%s: model.json records batch profiles %s, the model has %s; using the model's",
                        self.om_path, recorded, self.profiles or "none")
        self.input_index = data_inputs[0]
        self.num_inputs = num_inputs
        in_size = acl.mdl.get_input_size_by_index(self.desc, self.input_index)
        out_size = acl.mdl.get_output_size_by_index(self.desc, 0)

        shape = model_info.input.shape
        self.image_shape = (int(shape[1]), int(shape[2]), int(shape[3]))
        self.num_classes = model_info.num_classes
        pixels = int(np.prod(self.image_shape))
        aipp = self.om_info.get("aipp")
        if aipp is None and self.om_info.get("input_dtype"):
            aipp = self.om_info["input_dtype"] == "uint8"
        candidates = [bool(aipp)] if aipp is not None else [False, True]
        for uint8 in candidates:
            per_image = pixels * (1 if uint8 else 4)
            if self.profiles:
                fits = in_size == self.profiles[-1] * per_image
                batches = self.profiles
            else:
                fits = in_size > 0 and in_size % per_image == 0
                batches = [in_size // per_image] if fits else []
            if fits:
                break
        if not fits:
            raise BackendError("%s: model input is %d bytes, which is not a batch of %s %s images (bundle metadata "
                               "om.aipp=%s): was the .om built from this bundle?" % (
                                   self.om_path, in_size, "x".join(map(str, self.image_shape)),
                                   "uint8" if candidates[-1] else "float32", aipp), fatal=True)
        self.aipp = uint8
        self.per_image = per_image
        self.batch_sizes = batches
        expected_out = batches[-1] * self.num_classes * 4
        if out_size != expected_out:
            raise BackendError("%s: model output is %d bytes, expected %d (float32 logits [%d, %d])" % (
                self.om_path, out_size, expected_out, batches[-1], self.num_classes), fatal=True)

    # --- the Backend interface ------------------------------------------------------------------

    @property
    def max_batch(self):
        return self.batch_sizes[-1]

    @property
    def input_dtype(self):
        return np.uint8 if self.aipp else np.float32

    def describe(self):
        if self.profiles:
            batch = "dynamic batch %s" % ",".join(map(str, self.profiles))
        else:
            batch = "static batch %d" % self.batch_sizes[0]
        return "acl device %d, %s (%s, %s, %s)" % (
            self.device_id, os.path.basename(self.om_path), self.om_info.get("soc_version", "Ascend"), batch,
            "AIPP: uint8 RGB input" if self.aipp else "float32 input, no AIPP")

    def run(self, batch):
        batch = np.asarray(batch)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != self.image_shape:
            raise BackendError("batch shape %s does not match the model's [N, %s]"
                               % (list(batch.shape), ", ".join(map(str, self.image_shape))))
        if self.aipp and batch.dtype != np.uint8:
            raise BackendError("this .om normalises inside the model (AIPP): send uint8 RGB, not %s" % batch.dtype)
        with self._lock:
            if self._closed:
                raise BackendError("the acl backend is closed", fatal=True)
            if self._broken:
                raise BackendError("the Ascend device failed earlier (%s); reload the backend" % self._broken, fatal=True)
            self._bind_context()
            data = np.ascontiguousarray(batch, self.input_dtype)
            outputs = []
            for start in range(0, len(data), self.max_batch):
                outputs.append(self._run_chunk(data[start:start + self.max_batch]))
            if not outputs:
                return np.zeros((0, self.num_classes), np.float32)
            return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def _bind_context(self):
        """Make our context current on the calling thread (a context is bound to the thread that
        made it; another thread, or another backend's context on this one, needs set_context)."""
        acl = self.acl
        get_context = getattr(acl.rt, "get_context", None)
        if get_context is not None:
            current, ret = get_context()
            if ret == ACL_SUCCESS and current == self.context:
                return
        self._checked_run("acl.rt.set_context", acl.rt.set_context(self.context))

    def _checked_run(self, call, ret):
        if ret != ACL_SUCCESS:
            err = _error(self.acl, call, ret)
            if err.fatal:
                self._broken = str(err)
            raise err

    def _run_chunk(self, data):
        acl = self.acl
        n = len(data)
        size = next(b for b in self.batch_sizes if b >= n)
        slot = self._slot(size)
        if n < size:
            padded = np.zeros((size,) + self.image_shape, self.input_dtype)
            padded[:n] = data
            data = padded
        if hasattr(acl.util, "bytes_to_ptr"):  # newer pyACL; `raw` must stay alive until the copy is done
            raw = data.tobytes()
            src, nbytes = acl.util.bytes_to_ptr(raw), len(raw)
        else:  # older pyACL ("to be deprecated")
            data = np.ascontiguousarray(data)
            src, nbytes = acl.util.numpy_to_ptr(data), data.nbytes
        self._checked_run("acl.rt.memcpy", acl.rt.memcpy(slot.in_dev, slot.in_size, src, nbytes,
                                                         ACL_MEMCPY_HOST_TO_DEVICE))
        if self.mbatch_index is not None:
            self._checked_run("acl.mdl.set_dynamic_batch_size",
                              acl.mdl.set_dynamic_batch_size(self.model_id, slot.in_ds, self.mbatch_index, size))
        self._checked_run("acl.mdl.execute", acl.mdl.execute(self.model_id, slot.in_ds, slot.out_ds))
        self._checked_run("acl.rt.memcpy", acl.rt.memcpy(slot.out_host, slot.out_size, slot.out_dev, slot.out_size,
                                                         ACL_MEMCPY_DEVICE_TO_HOST))
        dims, ret = acl.mdl.get_cur_output_dims(self.desc, 0)
        self._checked_run("acl.mdl.get_cur_output_dims", ret)
        got = list(dims["dims"]) if dims else []
        if got != [size, self.num_classes]:
            raise BackendError("the model's current output dims are %s, expected [%d, %d]" % (got, size, self.num_classes))
        if hasattr(acl.util, "ptr_to_bytes"):
            logits = np.frombuffer(acl.util.ptr_to_bytes(slot.out_host, slot.out_size), np.float32)
        else:
            logits = np.array(acl.util.ptr_to_numpy(slot.out_host, (size * self.num_classes,), NPY_FLOAT32))
        return logits.reshape(size, self.num_classes)[:n].copy()

    def _slot(self, size):
        slot = self._slots.get(size)
        if slot is not None:
            return slot
        slot = _Slot(size)
        try:
            self._build_slot(slot)
        except BaseException:
            errors = []
            self._release_slot(slot, errors)
            for message in errors:
                log.warning("acl backend: releasing a half-made batch-%d slot: %s", size, message)
            raise
        self._slots[size] = slot
        return slot

    def _build_slot(self, slot):
        acl = self.acl
        slot.in_size = slot.batch * self.per_image
        slot.out_size = slot.batch * self.num_classes * 4
        slot.in_dev = self._malloc(slot, slot.in_size)
        slot.out_dev = self._malloc(slot, slot.out_size)
        if self.mbatch_index is not None:
            slot.mbatch_dev = self._malloc(slot, self.mbatch_size)
        ptr, ret = acl.rt.malloc_host(slot.out_size)
        self._checked_run("acl.rt.malloc_host(%d)" % slot.out_size, ret)
        slot.out_host = ptr
        slot.in_ds = self._dataset()
        inputs = {self.input_index: (slot.in_dev, slot.in_size)}
        if self.mbatch_index is not None:
            inputs[self.mbatch_index] = (slot.mbatch_dev, self.mbatch_size)
        for index in range(self.num_inputs):  # buffer i of the dataset is model input i
            self._add_buffer(slot, slot.in_ds, *inputs[index])
        slot.out_ds = self._dataset()
        self._add_buffer(slot, slot.out_ds, slot.out_dev, slot.out_size)

    def _malloc(self, slot, size):
        ptr, ret = self.acl.rt.malloc(size, ACL_MEM_MALLOC_HUGE_FIRST)
        self._checked_run("acl.rt.malloc(%d)" % size, ret)
        slot.device_ptrs.append(ptr)
        return ptr

    def _dataset(self):
        ds = self.acl.mdl.create_dataset()
        if not ds:
            raise BackendError("acl.mdl.create_dataset returned no dataset")
        return ds

    def _add_buffer(self, slot, dataset, ptr, size):
        buf = self.acl.create_data_buffer(ptr, size)
        if not buf:
            raise BackendError("acl.create_data_buffer returned no buffer")
        slot.buffers.append(buf)
        _, ret = self.acl.mdl.add_dataset_buffer(dataset, buf)
        self._checked_run("acl.mdl.add_dataset_buffer", ret)

    def _step(self, errors, call, fn, *args):
        """One teardown call: failures are collected, never raised."""
        try:
            ret = fn(*args)
        except Exception as e:
            errors.append("%s raised %s" % (call, e))
            return
        if ret != ACL_SUCCESS:
            errors.append(str(_error(self.acl, call, ret)))

    def _release_slot(self, slot, errors):
        """Data buffers, datasets, device memory, host memory -- the documented order."""
        acl = self.acl
        destroyed = set()
        for ds in (slot.in_ds, slot.out_ds):
            if not ds:
                continue
            for i in range(acl.mdl.get_dataset_num_buffers(ds)):
                buf = acl.mdl.get_dataset_buffer(ds, i)
                if buf and buf not in destroyed:
                    destroyed.add(buf)
                    self._step(errors, "acl.destroy_data_buffer", acl.destroy_data_buffer, buf)
        for buf in slot.buffers:  # made but not (yet) in a dataset
            if buf not in destroyed:
                destroyed.add(buf)
                self._step(errors, "acl.destroy_data_buffer", acl.destroy_data_buffer, buf)
        for ds in (slot.in_ds, slot.out_ds):
            if ds:
                self._step(errors, "acl.mdl.destroy_dataset", acl.mdl.destroy_dataset, ds)
        for ptr in slot.device_ptrs:
            self._step(errors, "acl.rt.free", acl.rt.free, ptr)
        if slot.out_host:
            self._step(errors, "acl.rt.free_host", acl.rt.free_host, slot.out_host)
        slot.in_ds = slot.out_ds = slot.out_host = None
        slot.device_ptrs, slot.buffers = [], []

    # --- teardown -------------------------------------------------------------------------------

    def close(self):
        """The documented teardown: data buffers, datasets, device/host memory, model, desc,
        context, device; then release the process's pyACL runtime (acl.finalize follows at exit,
        or finalize_runtime()). Errors are logged and kept in self.close_errors; close never raises
        and is safe to call twice, from any thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            errors = self.close_errors = []
            acl = self.acl
            if acl is None:
                return
            step = self._step
            if self.context is not None:
                get_context = getattr(acl.rt, "get_context", None)
                current, ret = get_context() if get_context is not None else (None, -1)
                if ret != ACL_SUCCESS or current != self.context:
                    step(errors, "acl.rt.set_context", acl.rt.set_context, self.context)
            for slot in self._slots.values():
                self._release_slot(slot, errors)
            self._slots = {}
            if self.model_id is not None:
                step(errors, "acl.mdl.unload", acl.mdl.unload, self.model_id)
                self.model_id = None
            if self.desc:
                step(errors, "acl.mdl.destroy_desc", acl.mdl.destroy_desc, self.desc)
                self.desc = None
            if self.context is not None:
                step(errors, "acl.rt.destroy_context", acl.rt.destroy_context, self.context)
                self.context = None
            if self._device_set:
                step(errors, "acl.rt.reset_device(%d)" % self.device_id, acl.rt.reset_device, self.device_id)
                self._device_set = False
            if self._holds_runtime:
                _RUNTIME.release()
                self._holds_runtime = False
            for message in errors:
                log.warning("acl backend close: %s", message)
