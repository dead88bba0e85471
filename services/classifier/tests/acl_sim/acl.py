"""A pyACL simulator: the part of Huawei's `acl` module the Ascend backend uses, for machines with
no Ascend card and no CANN. Tests put this folder on sys.path so `import acl` finds it.

It keeps pyACL's real call shapes (as in the CANN pyACL API reference and Huawei's Ascend/samples): a plain `ret` from init,
rt.set_device, rt.set_context, rt.memcpy, mdl.get_desc, mdl.execute, rt.free(_host), destroy_*,
mdl.unload, rt.reset_device, finalize, mdl.set_dynamic_batch_size; `(value, ret)` from
rt.create_context, rt.create_stream, mdl.load_from_file, rt.malloc(_host), mdl.get_(cur_)output_dims,
mdl.get_input_index_by_name, mdl.get_dynamic_batch, rt.get_run_mode, rt.get_device_count,
mdl.add_dataset_buffer; bare values from create_desc, create_dataset, create_data_buffer, get_num_*,
get_*_size_by_index, get_dataset_num_buffers, get_dataset_buffer.

It ENFORCES the rules and answers a broken one with the error code the real runtime uses for that
class of mistake (numbers from CANN's acl_base.h / rt_error_codes.h); `get_recent_err_msg()` and
`sim_errors` say why:

    100000 ACL_ERROR_INVALID_PARAM        unknown/destroyed handle, wrong batch input index, wrong buffer count
    100001 ACL_ERROR_UNINITIALIZE         any runtime call before acl.init() (or after finalize)
    100002 ACL_ERROR_REPEAT_INITIALIZE    acl.init() twice -- also after finalize: pyACL documents one
                                          init per process (sim_reset(allow_reinit=True) relaxes it)
    100003 ACL_ERROR_INVALID_FILE         load_from_file: no such file
    100011 ACL_ERROR_INVALID_MODEL_ID     unknown or unloaded model id
    100013 ACL_ERROR_PARSE_MODEL          the .om is not a simulated model
    100014 ACL_ERROR_READ_MODEL_FAILURE   the ONNX model the .om points at cannot be loaded
    100017 ACL_ERROR_MODEL_INPUT_NOT_MATCH   input dataset does not match the model's inputs
    100018 ACL_ERROR_MODEL_OUTPUT_NOT_MATCH  output dataset does not match the model's outputs
    100019 ACL_ERROR_MODEL_NOT_DYNAMIC    set_dynamic_batch_size on a model without batch profiles
    145013 ACL_ERROR_GE_DYNAMIC_BATCH_SIZE_INVALID
                                          set_dynamic_batch_size with a batch that is not a profile
                                          (GraphEngine's GeExecutor::SetDynamicBatchSize, mindspore-ai/
                                          graphengine ge/executor/ge_executor.cc; the number is in
                                          inc/external/ge/ge_error_codes.h)
    100037 ACL_ERROR_REPEAT_FINALIZE      finalize twice
    148051 ACL_ERROR_RELATIVE_RESOURCE_NOT_CLEARED
                                          unload with live datasets/buffers used with the model;
                                          destroy_context/reset_device with resources still in them;
                                          finalize with anything still held (see sim_leaks())
    107000 ACL_ERROR_RT_PARAM_INVALID     memcpy out of bounds / count > dst_max / unknown pointer /
                                          use after free; a dataset buffer outside live device memory
    107001 ACL_ERROR_RT_INVALID_DEVICEID  no such device; reset of a device that is not set
    107002 ACL_ERROR_RT_CONTEXT_NULL      no current context on the calling thread (contexts are bound
                                          to the thread that made them; rt.set_context binds another)
    107004 ACL_ERROR_RT_MODEL_CONTEXT     model executed/unloaded from a context it was not loaded in
    107016 ACL_ERROR_RT_INVALID_MEMORY_TYPE  memcpy kind 0-3 does not match the pointers (host/device);
                                          kind 4, ACL_MEMCPY_DEFAULT, takes the direction from the
                                          pointers (aclrtMemcpyKind in the CANN 8.1+ API reference);
                                          kinds 5-7 (CANN 8.2+) are not simulated: 107000
    207002 ACL_ERROR_RT_MEMORY_FREE       double free, freeing an unknown or interior pointer, or
                                          freeing host memory with rt.free (or device with free_host)
    507011 ACL_ERROR_RT_MODEL_EXECUTE     what sim_fail_next_execute() injects by default
    507899 ACL_ERROR_RT_DRV_INTERNAL_ERROR   what every device call returns after sim_lose_device()

Deliberately stricter than the hardware (so bugs show up here rather than on the card): memcpy
bounds are checked against the size asked of rt.malloc, not the rounded-up capacity; a memcpy kind
0-3 must match the pointers, which the backend's explicit kinds rely on (CANN 8.0's aclrtMemcpy page
calls kind a reserved parameter, the direction taken from the pointers; whether later runtimes refuse
a mismatch is not documented); teardown order (buffers/datasets before unload, everything before
destroy_context/reset_device/finalize) is enforced. Where real pyACL would crash the process
(reading device memory from Python, an unknown pointer in ptr_to_bytes), the simulator raises
SimFault instead.

Memory is simulated: "pointers" are integers into bytearrays the simulator owns, device and host
allocations in separate address ranges, never reused (so a stale pointer is always recognised).
rt.malloc rounds the size up to a multiple of 32 and adds 32. util.bytes_to_ptr/numpy_to_ptr
register the Python object's memory (the last EXTERNAL_LIMIT registrations stay valid);
bytes_to_ptr takes bytes only and raises ValueError("needs an byte as argument") for anything else,
a bytearray included, as pyACL's PyBytes_Check does (hicann/runtime python/pyACL/util/bytes_convert.cpp).

Models: mdl.load_from_file reads a simulated `.om` -- a small JSON file written by sim_write_om()
that points at the bundle's model.onnx -- and mdl.execute runs that ONNX model with ONNX Runtime on
the bytes in the input device buffer. Batch profiles (ATC --dynamic_batch_size) add the
`ascend_mbatch_shape_data` input; AIPP makes the input uint8 NHWC RGB and normalises
(x - 127.5) * (1/127.5) before the float model, as an AIPP config with min_chn 127.5 does.

Test-facing control API (everything named sim_*): sim_reset(), sim_state(), sim_leaks(),
sim_calls, sim_errors, sim_last_finalize_leaks, sim_fail_next(call, code), sim_fail_next_execute(code),
sim_lose_device(), sim_restore_device(), sim_calls_named(name), sim_write_om().
"""
from __future__ import annotations

import collections
import functools
import json
import os
import struct
import threading
import types

import numpy as np

# --- constants (the pyACL API reference) ----------------------------------------------------------------------
ACL_SUCCESS = 0
ACL_ERROR_NONE = 0
ACL_MEM_MALLOC_HUGE_FIRST = 0
ACL_MEM_MALLOC_HUGE_ONLY = 1
ACL_MEM_MALLOC_NORMAL_ONLY = 2
ACL_MEMCPY_HOST_TO_HOST = 0
ACL_MEMCPY_HOST_TO_DEVICE = 1
ACL_MEMCPY_DEVICE_TO_HOST = 2
ACL_MEMCPY_DEVICE_TO_DEVICE = 3
ACL_MEMCPY_DEFAULT = 4
ACL_DEVICE = 0
ACL_HOST = 1
ACL_FLOAT = 0
ACL_FLOAT16 = 1
ACL_INT8 = 2
ACL_INT32 = 3
ACL_UINT8 = 4
ACL_INT64 = 9
NPY_FLOAT32 = 11
NPY_HALF = 23

# --- error codes (acl_base.h, rt_error_codes.h) --------------------------------------------------
ACL_ERROR_INVALID_PARAM = 100000
ACL_ERROR_UNINITIALIZE = 100001
ACL_ERROR_REPEAT_INITIALIZE = 100002
ACL_ERROR_INVALID_FILE = 100003
ACL_ERROR_INVALID_MODEL_ID = 100011
ACL_ERROR_PARSE_MODEL = 100013
ACL_ERROR_READ_MODEL_FAILURE = 100014
ACL_ERROR_MODEL_INPUT_NOT_MATCH = 100017
ACL_ERROR_MODEL_OUTPUT_NOT_MATCH = 100018
ACL_ERROR_MODEL_NOT_DYNAMIC = 100019
ACL_ERROR_GE_DYNAMIC_BATCH_SIZE_INVALID = 145013
ACL_ERROR_REPEAT_FINALIZE = 100037
ACL_ERROR_RELATIVE_RESOURCE_NOT_CLEARED = 148051
ACL_ERROR_RT_PARAM_INVALID = 107000
ACL_ERROR_RT_INVALID_DEVICEID = 107001
ACL_ERROR_RT_CONTEXT_NULL = 107002
ACL_ERROR_RT_MODEL_CONTEXT = 107004
ACL_ERROR_RT_INVALID_MEMORY_TYPE = 107016
ACL_ERROR_RT_MEMORY_FREE = 207002
ACL_ERROR_RT_MODEL_EXECUTE = 507011
ACL_ERROR_RT_DRV_INTERNAL_ERROR = 507899

ERROR_NAMES = {v: k for k, v in list(globals().items()) if k.startswith("ACL_ERROR_") and k != "ACL_ERROR_NONE"}

MBATCH_INPUT = "ascend_mbatch_shape_data"
MBATCH_SIZE = 8  # one int64: the runtime writes the chosen batch there
OM_FORMAT = "acl-sim-om"
SOC_VERSION = "Ascend310"
AIPP_MIN_CHN = 127.5
AIPP_VAR_RECI_CHN = 1.0 / 127.5
EXTERNAL_LIMIT = 256

_DEVICE_BASE = 0x100000000000
_HOST_BASE = 0x200000000000
_EXTERNAL_BASE = 0x300000000000
_PAGE = 4096

_RET, _TUPLE, _BARE = "ret", "tuple", "bare"

SimCall = collections.namedtuple("SimCall", "name thread ret args")
SimError = collections.namedtuple("SimError", "name thread code reason")


class SimFault(RuntimeError):
    """Where real pyACL would crash the process (e.g. reading device memory from Python)."""


class _Reject(Exception):
    def __init__(self, code, reason, value=0):
        super().__init__(reason)
        self.code, self.reason, self.value = code, reason, value


# --- simulated objects ---------------------------------------------------------------------------

class _Alloc(object):
    def __init__(self, base, size, capacity, kind, data, ctx=None, device=None, writable=True, owner=None):
        self.base, self.size, self.capacity, self.kind = base, size, capacity, kind
        self.data, self.ctx, self.device, self.writable = data, ctx, device, writable
        self.owner = owner  # the Python object behind an external region (kept alive)
        self.thread = threading.current_thread().name

    def contains(self, ptr, length=0):
        return self.base <= ptr and ptr + length <= self.base + self.size

    def describe(self):
        return "%s memory 0x%x (%d bytes, allocated on %s)" % (self.kind, self.base, self.size, self.thread)


class _Ctx(object):
    def __init__(self, handle, device, default, thread):
        self.handle, self.device, self.default, self.thread = handle, device, default, thread


class _Model(object):
    def __init__(self, model_id, ctx, device, path, om, session):
        self.id, self.ctx, self.device, self.path, self.om, self.session = model_id, ctx, device, path, om, session
        self.height, self.width = om["input"]["shape"][0], om["input"]["shape"][1]
        self.num_classes = om["output"]["num_classes"]
        self.profiles = sorted(om.get("batch_profiles") or [])
        self.aipp = om.get("aipp")
        self.batches = self.profiles or [int(om.get("static_batch") or 1)]
        self.max_batch = self.batches[-1]
        self.cur_batch = self.max_batch
        self.input_name = om["input"].get("name", "input")
        self.output_name = om["output"].get("name", "logits")

    @property
    def per_image(self):
        return self.height * self.width * 3 * (1 if self.aipp else 4)

    def inputs(self):
        """[(name, size, dims, dtype)] as the model desc reports them (largest profile)."""
        data = (self.input_name, self.max_batch * self.per_image, [self.max_batch, self.height, self.width, 3],
                ACL_UINT8 if self.aipp else ACL_FLOAT)
        if self.profiles:
            return [data, (MBATCH_INPUT, MBATCH_SIZE, [1], ACL_INT64)]
        return [data]

    def outputs(self):
        return [(self.output_name, self.max_batch * self.num_classes * 4, [self.max_batch, self.num_classes], ACL_FLOAT)]


class _Dataset(object):
    def __init__(self, handle):
        self.handle, self.buffers, self.batch, self.used_with = handle, [], None, set()
        self.thread = threading.current_thread().name


class _Buffer(object):
    def __init__(self, handle, ptr, size):
        self.handle, self.ptr, self.size, self.used_with = handle, ptr, size, set()
        self.thread = threading.current_thread().name


class _Desc(object):
    def __init__(self, handle):
        self.handle, self.model_id = handle, None


class _State(object):
    def __init__(self, devices=1, allow_reinit=False):
        self.device_count = devices
        self.allow_reinit = allow_reinit
        self.initialised = False
        self.finalized = False
        self.devices = {}          # id -> set_device count
        self.default_ctx = {}      # device id -> _Ctx
        self.lost = {}             # device id -> error code
        self.contexts = {}         # handle -> _Ctx (default and explicit)
        self.current = {}          # threading.Thread -> _Ctx (the object, not a reusable ident)
        self.streams = {}          # handle -> _Ctx
        self.allocs = {}           # base -> _Alloc (device, host)
        self.freed = {}            # base -> _Alloc
        self.external = collections.OrderedDict()  # base -> _Alloc
        self.models = {}           # id -> _Model
        self.descs = {}            # handle -> _Desc
        self.datasets = {}         # handle -> _Dataset
        self.buffers = {}          # handle -> _Buffer
        self.next_addr = {"device": _DEVICE_BASE, "host": _HOST_BASE, "external": _EXTERNAL_BASE}
        self.next_handle = 0x5000
        self.next_model = 1
        self.inject = collections.defaultdict(list)
        self.recent_error = ""
        self.last_finalize_leaks = []

    def handle(self):
        self.next_handle += 0x10
        return self.next_handle

    def address(self, kind, capacity):
        base = self.next_addr[kind]
        self.next_addr[kind] = base + (capacity // _PAGE + 2) * _PAGE  # a guard page between regions
        return base


_LOCK = threading.RLock()
_S = _State()
_SESSIONS = {}
sim_calls = []
sim_errors = []
sim_last_finalize_leaks = []


def _thread_name():
    return threading.current_thread().name


def _summarise(value):
    if isinstance(value, (bytes, bytearray)):
        return "<%d bytes>" % len(value)
    if isinstance(value, np.ndarray):
        return "<ndarray %s %s>" % (value.dtype, list(value.shape))
    if isinstance(value, (int, float, str, type(None))):
        return value
    return "<%s>" % type(value).__name__


def _api(name, conv):
    """Wrap one API function: lock, fault injection, convert _Reject to the call's convention, log."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args):
            with _LOCK:
                injected = _S.inject.get(name)
                if injected and conv != _BARE:
                    code = injected.pop(0)
                    result = code if conv == _RET else (0, code)
                    _record_error(name, code, "injected failure (sim_fail_next)")
                else:
                    try:
                        result = fn(*args)
                    except _Reject as r:
                        _record_error(name, r.code, r.reason)
                        result = r.code if conv == _RET else (r.value, r.code)
                ret = result if conv == _RET else (result[1] if conv == _TUPLE else None)
                sim_calls.append(SimCall(name, _thread_name(), ret, tuple(_summarise(a) for a in args)))
                return result
        wrapper.sim_name = name
        return wrapper
    return deco


def _record_error(name, code, reason):
    _S.recent_error = reason
    sim_errors.append(SimError(name, _thread_name(), code, reason))


def _bare_error(name, reason):
    """Bare-value calls cannot return a code: note the misuse, return what pyACL does (0)."""
    _record_error(name, ACL_ERROR_INVALID_PARAM, reason)
    return 0


# --- checks --------------------------------------------------------------------------------------

def _need_init():
    if not _S.initialised:
        raise _Reject(ACL_ERROR_UNINITIALIZE, "acl.init() has not been called" if not _S.finalized
                      else "acl.finalize() was called")


def _check_device(device):
    if device in _S.lost:
        raise _Reject(_S.lost[device], "device %d was lost" % device)


def _need_ctx():
    """The calling thread's current context (bound by create_context, set_device or set_context)."""
    ctx = _S.current.get(threading.current_thread())
    if ctx is None or ctx.handle not in _S.contexts:
        raise _Reject(ACL_ERROR_RT_CONTEXT_NULL,
                      "no current context on thread %s: a context is bound to the thread that created it; "
                      "call acl.rt.set_context(ctx) on this thread first" % _thread_name())
    _check_device(ctx.device)
    return ctx


def _model(model_id):
    model = _S.models.get(model_id)
    if model is None:
        raise _Reject(ACL_ERROR_INVALID_MODEL_ID, "model id %r is not loaded" % (model_id,))
    return model


def _find(ptr, length=0):
    """(alloc, status): status 'ok', 'freed', 'bounds' or 'unknown'."""
    for table, status in ((_S.allocs, "ok"), (_S.external, "ok"), (_S.freed, "freed")):
        for alloc in table.values():
            if alloc.base <= ptr < alloc.base + max(alloc.size, 1):
                if status == "ok" and not alloc.contains(ptr, length):
                    return alloc, "bounds"
                return alloc, status
    return None, "unknown"


def _region(ptr, length, what):
    alloc, status = _find(ptr, length)
    if status == "freed":
        raise _Reject(ACL_ERROR_RT_PARAM_INVALID, "%s 0x%x is in %s, which was freed (use after free)"
                      % (what, ptr, alloc.describe()))
    if status == "bounds":
        raise _Reject(ACL_ERROR_RT_PARAM_INVALID, "%s [0x%x, +%d) runs past the end of %s (out of bounds by %d bytes)"
                      % (what, ptr, length, alloc.describe(), ptr + length - alloc.base - alloc.size))
    if alloc is None:
        raise _Reject(ACL_ERROR_RT_PARAM_INVALID, "%s 0x%x is not memory the runtime knows" % (what, ptr))
    return alloc


def _view(alloc, ptr, length):
    start = ptr - alloc.base
    return memoryview(alloc.data)[start:start + length]


# --- acl -----------------------------------------------------------------------------------------

@_api("acl.init", _RET)
def init(config_path=None):
    if _S.initialised:
        raise _Reject(ACL_ERROR_REPEAT_INITIALIZE, "acl.init() was already called in this process")
    if _S.finalized and not _S.allow_reinit:
        raise _Reject(ACL_ERROR_REPEAT_INITIALIZE, "acl.init() may be called once per process (it was, then finalized)")
    _S.initialised = True
    return ACL_SUCCESS


@_api("acl.finalize", _RET)
def finalize():
    if not _S.initialised:
        if _S.finalized:
            raise _Reject(ACL_ERROR_REPEAT_FINALIZE, "acl.finalize() was already called")
        raise _Reject(ACL_ERROR_UNINITIALIZE, "acl.init() has not been called")
    leaks = sim_leaks()
    sim_last_finalize_leaks[:] = leaks
    _S.last_finalize_leaks = list(leaks)
    if leaks:
        raise _Reject(ACL_ERROR_RELATIVE_RESOURCE_NOT_CLEARED,
                      "%d resource(s) still held: %s" % (len(leaks), "; ".join(leaks)))
    _S.initialised = False
    _S.finalized = True
    _S.current.clear()
    return ACL_SUCCESS


@_api("acl.create_data_buffer", _BARE)
def create_data_buffer(ptr, size):
    buf = _Buffer(_S.handle(), ptr, size)  # like pyACL: not validated until used
    _S.buffers[buf.handle] = buf
    return buf.handle


@_api("acl.destroy_data_buffer", _RET)
def destroy_data_buffer(buf):
    if _S.buffers.pop(buf, None) is None:
        raise _Reject(ACL_ERROR_INVALID_PARAM, "data buffer %r does not exist (destroyed twice?)" % (buf,))
    return ACL_SUCCESS


@_api("acl.get_data_buffer_addr", _BARE)
def get_data_buffer_addr(buf):
    b = _S.buffers.get(buf)
    return b.ptr if b else _bare_error("acl.get_data_buffer_addr", "no data buffer %r" % (buf,))


@_api("acl.get_data_buffer_size_v2", _BARE)
def get_data_buffer_size_v2(buf):
    b = _S.buffers.get(buf)
    return b.size if b else _bare_error("acl.get_data_buffer_size_v2", "no data buffer %r" % (buf,))


@_api("acl.get_recent_err_msg", _BARE)
def get_recent_err_msg():
    return _S.recent_error


@_api("acl.get_soc_name", _BARE)
def get_soc_name():
    return SOC_VERSION


# --- acl.rt --------------------------------------------------------------------------------------

@_api("acl.rt.get_run_mode", _TUPLE)
def _rt_get_run_mode():
    _need_init()
    return ACL_HOST, ACL_SUCCESS


@_api("acl.rt.get_device_count", _TUPLE)
def _rt_get_device_count():
    _need_init()
    return _S.device_count, ACL_SUCCESS


def _valid_device(device):
    if not isinstance(device, int) or not 0 <= device < _S.device_count:
        raise _Reject(ACL_ERROR_RT_INVALID_DEVICEID, "no device %r (this machine has %d)" % (device, _S.device_count))


@_api("acl.rt.set_device", _RET)
def _rt_set_device(device):
    _need_init()
    _valid_device(device)
    _check_device(device)
    _S.devices[device] = _S.devices.get(device, 0) + 1
    ctx = _S.default_ctx.get(device)
    if ctx is None:
        ctx = _S.default_ctx[device] = _Ctx(_S.handle(), device, True, _thread_name())
        _S.contexts[ctx.handle] = ctx
    _S.current[threading.current_thread()] = ctx  # aclrtSetDevice makes the default context current
    return ACL_SUCCESS


def _held_by_device(device):
    ctxs = set(h for h, c in _S.contexts.items() if c.device == device)
    return ([c for c in _S.contexts.values() if c.device == device and not c.default] +
            [a for a in _S.allocs.values() if a.ctx in ctxs] +
            [m for m in _S.models.values() if m.ctx in ctxs] +
            [s for s, c in _S.streams.items() if c.handle in ctxs])


def _drop_device_state(device):
    for handle, ctx in list(_S.contexts.items()):
        if ctx.device == device:
            del _S.contexts[handle]
    for thread, ctx in list(_S.current.items()):
        if ctx.device == device:
            del _S.current[thread]
    for base, alloc in list(_S.allocs.items()):
        if alloc.device == device:
            _S.freed[base] = _S.allocs.pop(base)
    for model_id, model in list(_S.models.items()):
        if model.device == device:
            del _S.models[model_id]
    for stream, ctx in list(_S.streams.items()):
        if ctx.device == device:
            del _S.streams[stream]
    _S.default_ctx.pop(device, None)
    _S.devices.pop(device, None)


@_api("acl.rt.reset_device", _RET)
def _rt_reset_device(device):
    _need_init()
    _valid_device(device)
    if not _S.devices.get(device):
        raise _Reject(ACL_ERROR_RT_INVALID_DEVICEID, "device %d is not set on this process (reset twice?)" % device)
    if device in _S.lost:  # the device is gone: its resources went with it
        _drop_device_state(device)
        raise _Reject(_S.lost[device], "device %d was lost" % device)
    if _S.devices[device] == 1:
        held = _held_by_device(device)
        if held:
            raise _Reject(ACL_ERROR_RELATIVE_RESOURCE_NOT_CLEARED, "device %d still holds %d context(s)/allocation(s)/"
                          "model(s)/stream(s): destroy them before reset_device" % (device, len(held)))
        _drop_device_state(device)
    else:
        _S.devices[device] -= 1
    return ACL_SUCCESS


@_api("acl.rt.create_context", _TUPLE)
def _rt_create_context(device):
    _need_init()
    _valid_device(device)
    _check_device(device)
    if not _S.devices.get(device):
        raise _Reject(ACL_ERROR_RT_INVALID_DEVICEID, "device %d is not set: call acl.rt.set_device first" % device)
    ctx = _Ctx(_S.handle(), device, False, _thread_name())
    _S.contexts[ctx.handle] = ctx
    _S.current[threading.current_thread()] = ctx
    return ctx.handle, ACL_SUCCESS


@_api("acl.rt.destroy_context", _RET)
def _rt_destroy_context(context):
    _need_init()
    ctx = _S.contexts.get(context)
    if ctx is None or ctx.default:
        raise _Reject(ACL_ERROR_INVALID_PARAM, "context %r does not exist or is a device's default context" % (context,))
    if ctx.device not in _S.lost:
        held = ([a for a in _S.allocs.values() if a.ctx == context] + [m for m in _S.models.values() if m.ctx == context]
                + [s for s, c in _S.streams.items() if c.handle == context])
        if held:
            raise _Reject(ACL_ERROR_RELATIVE_RESOURCE_NOT_CLEARED, "context 0x%x still holds %d allocation(s)/model(s)/"
                          "stream(s)" % (context, len(held)))
    del _S.contexts[context]
    for thread, current in list(_S.current.items()):
        if current is ctx:
            del _S.current[thread]
    _check_device(ctx.device)
    return ACL_SUCCESS


@_api("acl.rt.set_context", _RET)
def _rt_set_context(context):
    _need_init()
    ctx = _S.contexts.get(context)
    if ctx is None:
        raise _Reject(ACL_ERROR_INVALID_PARAM, "context %r does not exist (destroyed?)" % (context,))
    _check_device(ctx.device)
    _S.current[threading.current_thread()] = ctx
    return ACL_SUCCESS


@_api("acl.rt.get_context", _TUPLE)
def _rt_get_context():
    _need_init()
    ctx = _S.current.get(threading.current_thread())
    if ctx is None:
        raise _Reject(ACL_ERROR_RT_CONTEXT_NULL, "no current context on thread %s" % _thread_name())
    return ctx.handle, ACL_SUCCESS


@_api("acl.rt.create_stream", _TUPLE)
def _rt_create_stream():
    _need_init()
    ctx = _need_ctx()
    stream = _S.handle()
    _S.streams[stream] = ctx
    return stream, ACL_SUCCESS


@_api("acl.rt.destroy_stream", _RET)
def _rt_destroy_stream(stream):
    _need_init()
    if _S.streams.pop(stream, None) is None:
        raise _Reject(ACL_ERROR_INVALID_PARAM, "stream %r does not exist" % (stream,))
    return ACL_SUCCESS


@_api("acl.rt.synchronize_stream", _RET)
def _rt_synchronize_stream(stream):
    _need_init()
    if stream not in _S.streams:
        raise _Reject(ACL_ERROR_INVALID_PARAM, "stream %r does not exist" % (stream,))
    _check_device(_S.streams[stream].device)
    return ACL_SUCCESS


@_api("acl.rt.malloc", _TUPLE)
def _rt_malloc(size, policy):
    _need_init()
    ctx = _need_ctx()
    if policy not in (ACL_MEM_MALLOC_HUGE_FIRST, ACL_MEM_MALLOC_HUGE_ONLY, ACL_MEM_MALLOC_NORMAL_ONLY):
        raise _Reject(ACL_ERROR_INVALID_PARAM, "unknown malloc policy %r" % (policy,))
    if not isinstance(size, int) or size <= 0:
        raise _Reject(ACL_ERROR_INVALID_PARAM, "size %r must be a positive int" % (size,))
    capacity = (size + 31) // 32 * 32 + 32
    base = _S.address("device", capacity)
    _S.allocs[base] = _Alloc(base, size, capacity, "device", bytearray(capacity), ctx.handle, ctx.device)
    return base, ACL_SUCCESS


@_api("acl.rt.malloc_host", _TUPLE)
def _rt_malloc_host(size):
    _need_init()
    ctx = _need_ctx()
    if not isinstance(size, int) or size <= 0:
        raise _Reject(ACL_ERROR_INVALID_PARAM, "size %r must be a positive int" % (size,))
    base = _S.address("host", size)
    _S.allocs[base] = _Alloc(base, size, size, "host", bytearray(size), ctx.handle, None)
    return base, ACL_SUCCESS


def _free(ptr, kind):
    _need_init()
    alloc = _S.allocs.get(ptr)
    if alloc is None:
        if ptr in _S.freed and _S.freed[ptr].kind == kind:
            raise _Reject(ACL_ERROR_RT_MEMORY_FREE, "0x%x was already freed (double free)" % ptr)
        inside, _ = _find(ptr)
        raise _Reject(ACL_ERROR_RT_MEMORY_FREE, "0x%x is %s" % (
            ptr, "inside %s, not its start" % inside.describe() if inside else "not an allocation"))
    if alloc.kind != kind:
        raise _Reject(ACL_ERROR_RT_MEMORY_FREE, "0x%x is %s memory: free it with %s" % (
            ptr, alloc.kind, "acl.rt.free" if alloc.kind == "device" else "acl.rt.free_host"))
    if alloc.device is not None and alloc.device in _S.lost:
        _S.freed[ptr] = _S.allocs.pop(ptr)  # gone with the device
        _check_device(alloc.device)
    if kind == "device":  # pinned host memory stays freeable whatever happened to the device
        _need_ctx()
    _S.freed[ptr] = _S.allocs.pop(ptr)
    return ACL_SUCCESS


@_api("acl.rt.free", _RET)
def _rt_free(ptr):
    return _free(ptr, "device")


@_api("acl.rt.free_host", _RET)
def _rt_free_host(ptr):
    return _free(ptr, "host")


_KINDS = {ACL_MEMCPY_HOST_TO_HOST: ("host", "host"), ACL_MEMCPY_HOST_TO_DEVICE: ("host", "device"),
          ACL_MEMCPY_DEVICE_TO_HOST: ("device", "host"), ACL_MEMCPY_DEVICE_TO_DEVICE: ("device", "device")}
_KIND_NAMES = {0: "HOST_TO_HOST", 1: "HOST_TO_DEVICE", 2: "DEVICE_TO_HOST", 3: "DEVICE_TO_DEVICE"}


def _side(alloc):
    return "device" if alloc.kind == "device" else "host"


@_api("acl.rt.memcpy", _RET)
def _rt_memcpy(dst, dst_max, src, count, kind):
    _need_init()
    _need_ctx()
    if kind not in _KINDS and kind != ACL_MEMCPY_DEFAULT:
        raise _Reject(ACL_ERROR_RT_PARAM_INVALID, "unknown memcpy kind %r" % (kind,))
    if count < 0 or dst_max < 0:
        raise _Reject(ACL_ERROR_RT_PARAM_INVALID, "negative size")
    if count > dst_max:
        raise _Reject(ACL_ERROR_RT_PARAM_INVALID, "count %d is larger than dst_max %d" % (count, dst_max))
    d = _region(dst, dst_max, "destination")
    s = _region(src, count, "source")
    want_src, want_dst = (_side(s), _side(d)) if kind == ACL_MEMCPY_DEFAULT else _KINDS[kind]
    if _side(s) != want_src or _side(d) != want_dst:
        raise _Reject(ACL_ERROR_RT_INVALID_MEMORY_TYPE, "%s copy from %s memory to %s memory" % (
            _KIND_NAMES[kind], _side(s), _side(d)))
    for alloc in (s, d):
        if alloc.device is not None:
            _check_device(alloc.device)
    if not d.writable:
        raise _Reject(ACL_ERROR_RT_PARAM_INVALID, "destination 0x%x is read-only (bytes from bytes_to_ptr)" % dst)
    _view(d, dst, count)[:] = _view(s, src, count)
    return ACL_SUCCESS


# --- acl.util ------------------------------------------------------------------------------------

def _register_external(data, owner, writable):
    size = max(len(data), 1)
    base = _S.address("external", size)
    _S.external[base] = _Alloc(base, len(data), size, "external", data, writable=writable, owner=owner)
    while len(_S.external) > EXTERNAL_LIMIT:
        _S.external.popitem(last=False)
    return base


@_api("acl.util.bytes_to_ptr", _BARE)
def _util_bytes_to_ptr(data):
    if not isinstance(data, bytes):
        raise ValueError("needs an byte as argument")
    return _register_external(data, data, False)


@_api("acl.util.numpy_to_ptr", _BARE)
def _util_numpy_to_ptr(array):
    if not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
        raise TypeError("numpy_to_ptr expects a C-contiguous numpy array")
    view = memoryview(array.reshape(-1).view(np.uint8))
    return _register_external(view, array, array.flags.writeable)


def _host_view(ptr, size, name):
    alloc, status = _find(ptr, size)
    if alloc is None or status != "ok":
        raise SimFault("%s(0x%x, %d): %s pointer -- real pyACL would crash here" % (name, ptr, size, status))
    if alloc.kind == "device":
        raise SimFault("%s(0x%x): device memory is not readable from the host -- real pyACL would crash here"
                       % (name, ptr))
    return _view(alloc, ptr, size)


@_api("acl.util.ptr_to_bytes", _BARE)
def _util_ptr_to_bytes(ptr, size):
    return bytes(_host_view(ptr, size, "ptr_to_bytes"))


_NPY = {11: np.float32, 23: np.float16, 12: np.float64, 2: np.uint8, 1: np.int8, 5: np.int32, 7: np.int64}


@_api("acl.util.ptr_to_numpy", _BARE)
def _util_ptr_to_numpy(ptr, shape, npy_type):
    dtype = np.dtype(_NPY[npy_type])
    count = int(np.prod(shape)) * dtype.itemsize
    return np.frombuffer(_host_view(ptr, count, "ptr_to_numpy"), dtype).reshape(shape)


# --- acl.mdl -------------------------------------------------------------------------------------

def _session(onnx_path):
    import onnxruntime as ort
    st = os.stat(onnx_path)
    key = (os.path.realpath(onnx_path), st.st_mtime_ns, st.st_size)
    if key not in _SESSIONS:
        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = min(2, os.cpu_count() or 1)
        _SESSIONS[key] = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    return _SESSIONS[key]


@_api("acl.mdl.load_from_file", _TUPLE)
def _mdl_load_from_file(path):
    _need_init()
    ctx = _need_ctx()
    if not os.path.isfile(path):
        raise _Reject(ACL_ERROR_INVALID_FILE, "no model file %s" % path)
    try:
        with open(path) as f:
            om = json.load(f)
        if om.get("format") != OM_FORMAT:
            raise ValueError("not an %s file" % OM_FORMAT)
        if "shape" not in om["input"] or "num_classes" not in om["output"]:
            raise KeyError("input.shape / output.num_classes")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise _Reject(ACL_ERROR_PARSE_MODEL, "%s is not a simulated .om (%s)" % (path, e))
    onnx_path = os.path.join(os.path.dirname(os.path.abspath(path)), om["onnx"])
    try:
        session = _session(onnx_path)
    except Exception as e:  # ORT raises its own exception types
        raise _Reject(ACL_ERROR_READ_MODEL_FAILURE, "cannot load %s: %s" % (onnx_path, str(e).splitlines()[0]))
    model = _Model(_S.next_model, ctx.handle, ctx.device, path, om, session)
    _S.next_model += 1
    _S.models[model.id] = model
    return model.id, ACL_SUCCESS


@_api("acl.mdl.unload", _RET)
def _mdl_unload(model_id):
    _need_init()
    model = _model(model_id)
    if model.device in _S.lost:
        del _S.models[model_id]
        _check_device(model.device)
    ctx = _need_ctx()
    if ctx.handle != model.ctx:
        raise _Reject(ACL_ERROR_RT_MODEL_CONTEXT, "model %d was loaded in another context" % model_id)
    live = ([d for d in _S.datasets.values() if model_id in d.used_with] +
            [b for b in _S.buffers.values() if model_id in b.used_with])
    if live:
        raise _Reject(ACL_ERROR_RELATIVE_RESOURCE_NOT_CLEARED, "%d dataset(s)/data buffer(s) used with model %d are "
                      "still alive: destroy them before unloading" % (len(live), model_id))
    del _S.models[model_id]
    return ACL_SUCCESS


@_api("acl.mdl.create_desc", _BARE)
def _mdl_create_desc():
    desc = _Desc(_S.handle())
    _S.descs[desc.handle] = desc
    return desc.handle


@_api("acl.mdl.destroy_desc", _RET)
def _mdl_destroy_desc(desc):
    if _S.descs.pop(desc, None) is None:
        raise _Reject(ACL_ERROR_INVALID_PARAM, "model desc %r does not exist (destroyed twice?)" % (desc,))
    return ACL_SUCCESS


@_api("acl.mdl.get_desc", _RET)
def _mdl_get_desc(desc, model_id):
    _need_init()
    d = _S.descs.get(desc)
    if d is None:
        raise _Reject(ACL_ERROR_INVALID_PARAM, "model desc %r does not exist" % (desc,))
    _model(model_id)
    d.model_id = model_id
    return ACL_SUCCESS


def _desc_model(name, desc):
    d = _S.descs.get(desc)
    if d is None or d.model_id is None:
        return None, _bare_error(name, "model desc %r does not exist or get_desc was not called" % (desc,))
    model = _S.models.get(d.model_id)
    if model is None:
        return None, _bare_error(name, "the model of desc %r was unloaded" % (desc,))
    return model, None


def _io_field(name, desc, index, which, field):
    model, err = _desc_model(name, desc)
    if model is None:
        return err
    items = model.inputs() if which == "in" else model.outputs()
    if not 0 <= index < len(items):
        return _bare_error(name, "index %r out of range (%d)" % (index, len(items)))
    return items[index][field]


@_api("acl.mdl.get_num_inputs", _BARE)
def _mdl_get_num_inputs(desc):
    model, err = _desc_model("acl.mdl.get_num_inputs", desc)
    return err if model is None else len(model.inputs())


@_api("acl.mdl.get_num_outputs", _BARE)
def _mdl_get_num_outputs(desc):
    model, err = _desc_model("acl.mdl.get_num_outputs", desc)
    return err if model is None else len(model.outputs())


@_api("acl.mdl.get_input_size_by_index", _BARE)
def _mdl_get_input_size_by_index(desc, index):
    return _io_field("acl.mdl.get_input_size_by_index", desc, index, "in", 1)


@_api("acl.mdl.get_output_size_by_index", _BARE)
def _mdl_get_output_size_by_index(desc, index):
    return _io_field("acl.mdl.get_output_size_by_index", desc, index, "out", 1)


@_api("acl.mdl.get_input_name_by_index", _BARE)
def _mdl_get_input_name_by_index(desc, index):
    return _io_field("acl.mdl.get_input_name_by_index", desc, index, "in", 0) or ""


@_api("acl.mdl.get_output_name_by_index", _BARE)
def _mdl_get_output_name_by_index(desc, index):
    return _io_field("acl.mdl.get_output_name_by_index", desc, index, "out", 0) or ""


@_api("acl.mdl.get_input_data_type", _BARE)
def _mdl_get_input_data_type(desc, index):
    return _io_field("acl.mdl.get_input_data_type", desc, index, "in", 3)


@_api("acl.mdl.get_output_data_type", _BARE)
def _mdl_get_output_data_type(desc, index):
    return _io_field("acl.mdl.get_output_data_type", desc, index, "out", 3)


def _dims(name, desc, index, which, current):
    d = _S.descs.get(desc)
    if d is None or d.model_id is None:
        raise _Reject(ACL_ERROR_INVALID_PARAM, "model desc %r does not exist or get_desc was not called" % (desc,),
                      value=None)
    model = _S.models.get(d.model_id)
    if model is None:
        raise _Reject(ACL_ERROR_INVALID_MODEL_ID, "the model of desc %r was unloaded" % (desc,), value=None)
    items = model.inputs() if which == "in" else model.outputs()
    if not isinstance(index, int) or not 0 <= index < len(items):
        raise _Reject(ACL_ERROR_INVALID_PARAM, "index %r out of range (%d)" % (index, len(items)), value=None)
    dims = list(items[index][2])
    if current and items[index][0] != MBATCH_INPUT:
        dims[0] = model.cur_batch
    return {"name": items[index][0], "dimCount": len(dims), "dims": dims}, ACL_SUCCESS


@_api("acl.mdl.get_input_dims", _TUPLE)
def _mdl_get_input_dims(desc, index):
    return _dims("acl.mdl.get_input_dims", desc, index, "in", False)


@_api("acl.mdl.get_output_dims", _TUPLE)
def _mdl_get_output_dims(desc, index):
    return _dims("acl.mdl.get_output_dims", desc, index, "out", False)


@_api("acl.mdl.get_cur_output_dims", _TUPLE)
def _mdl_get_cur_output_dims(desc, index):
    return _dims("acl.mdl.get_cur_output_dims", desc, index, "out", True)


@_api("acl.mdl.get_input_index_by_name", _TUPLE)
def _mdl_get_input_index_by_name(desc, name):
    d = _S.descs.get(desc)
    model = _S.models.get(d.model_id) if d is not None else None
    if model is None:
        raise _Reject(ACL_ERROR_INVALID_PARAM, "model desc %r is not filled (get_desc) or its model was unloaded"
                      % (desc,), value=-1)
    for i, item in enumerate(model.inputs()):
        if item[0] == name:
            return i, ACL_SUCCESS
    raise _Reject(ACL_ERROR_INVALID_PARAM, "the model has no input named %r" % (name,), value=-1)


@_api("acl.mdl.get_dynamic_batch", _TUPLE)
def _mdl_get_dynamic_batch(desc):
    d = _S.descs.get(desc)
    model = _S.models.get(d.model_id) if d is not None else None
    if model is None:
        raise _Reject(ACL_ERROR_INVALID_PARAM, "model desc %r is not filled (get_desc)" % (desc,), value=None)
    return {"batch": list(model.profiles), "batchCount": len(model.profiles)}, ACL_SUCCESS


@_api("acl.mdl.create_dataset", _BARE)
def _mdl_create_dataset():
    ds = _Dataset(_S.handle())
    _S.datasets[ds.handle] = ds
    return ds.handle


@_api("acl.mdl.destroy_dataset", _RET)
def _mdl_destroy_dataset(dataset):
    if _S.datasets.pop(dataset, None) is None:
        raise _Reject(ACL_ERROR_INVALID_PARAM, "dataset %r does not exist (destroyed twice?)" % (dataset,))
    return ACL_SUCCESS


@_api("acl.mdl.add_dataset_buffer", _TUPLE)
def _mdl_add_dataset_buffer(dataset, buf):
    ds = _S.datasets.get(dataset)
    if ds is None:
        raise _Reject(ACL_ERROR_INVALID_PARAM, "dataset %r does not exist" % (dataset,))
    if buf not in _S.buffers:
        raise _Reject(ACL_ERROR_INVALID_PARAM, "data buffer %r does not exist" % (buf,))
    ds.buffers.append(buf)
    return dataset, ACL_SUCCESS


@_api("acl.mdl.get_dataset_num_buffers", _BARE)
def _mdl_get_dataset_num_buffers(dataset):
    ds = _S.datasets.get(dataset)
    return len(ds.buffers) if ds else _bare_error("acl.mdl.get_dataset_num_buffers", "no dataset %r" % (dataset,))


@_api("acl.mdl.get_dataset_buffer", _BARE)
def _mdl_get_dataset_buffer(dataset, index):
    ds = _S.datasets.get(dataset)
    if ds is None or not 0 <= index < len(ds.buffers):
        return _bare_error("acl.mdl.get_dataset_buffer", "no dataset %r or index %r out of range" % (dataset, index))
    return ds.buffers[index]


def _dataset(handle, what):
    ds = _S.datasets.get(handle)
    if ds is None:
        raise _Reject(ACL_ERROR_INVALID_PARAM, "%s dataset %r does not exist (destroyed?)" % (what, handle))
    return ds


def _device_region(buf_handle, need, what):
    buf = _S.buffers.get(buf_handle)
    if buf is None:
        raise _Reject(ACL_ERROR_INVALID_PARAM, "%s data buffer %r was destroyed" % (what, buf_handle))
    if buf.size < need:
        raise _Reject(ACL_ERROR_RT_PARAM_INVALID, "%s data buffer holds %d bytes, the model needs %d"
                      % (what, buf.size, need))
    alloc = _region(buf.ptr, need, "%s data buffer memory" % what)
    if alloc.kind != "device":
        raise _Reject(ACL_ERROR_RT_PARAM_INVALID, "%s data buffer points at %s memory; datasets take device memory "
                      "(run mode ACL_HOST)" % (what, alloc.kind))
    _check_device(alloc.device)
    return buf, alloc


@_api("acl.mdl.set_dynamic_batch_size", _RET)
def _mdl_set_dynamic_batch_size(model_id, dataset, index, batch):
    _need_init()
    model = _model(model_id)
    _check_device(model.device)
    ds = _dataset(dataset, "input")
    if not model.profiles:
        raise _Reject(ACL_ERROR_MODEL_NOT_DYNAMIC, "model %d has no batch profiles" % model_id)
    mbatch_index = [item[0] for item in model.inputs()].index(MBATCH_INPUT)
    if index != mbatch_index:
        raise _Reject(ACL_ERROR_INVALID_PARAM, "index %r is not the %s input (%d)" % (index, MBATCH_INPUT, mbatch_index))
    if batch not in model.profiles:
        raise _Reject(ACL_ERROR_GE_DYNAMIC_BATCH_SIZE_INVALID, "batch %r is not one of the model's profiles %s"
                      % (batch, model.profiles))
    if len(ds.buffers) <= index:
        raise _Reject(ACL_ERROR_INVALID_PARAM, "the input dataset has no buffer at index %d for %s"
                      % (index, MBATCH_INPUT))
    buf, alloc = _device_region(ds.buffers[index], MBATCH_SIZE, MBATCH_INPUT)
    _view(alloc, buf.ptr, MBATCH_SIZE)[:] = struct.pack("<q", batch)
    ds.batch = batch
    ds.used_with.add(model_id)
    model.cur_batch = batch
    return ACL_SUCCESS


def _run(model, in_ds, out_ds):
    inputs = model.inputs()
    names = [item[0] for item in inputs]
    if len(in_ds.buffers) != len(inputs):
        raise _Reject(ACL_ERROR_MODEL_INPUT_NOT_MATCH, "input dataset has %d buffer(s), the model has %d input(s)"
                      % (len(in_ds.buffers), len(inputs)))
    if len(out_ds.buffers) != len(model.outputs()):
        raise _Reject(ACL_ERROR_MODEL_OUTPUT_NOT_MATCH, "output dataset has %d buffer(s), the model has %d output(s)"
                      % (len(out_ds.buffers), len(model.outputs())))
    if model.profiles:
        if in_ds.batch is None:
            raise _Reject(ACL_ERROR_INVALID_PARAM, "dynamic-batch model: call acl.mdl.set_dynamic_batch_size on this "
                          "input dataset before execute")
        batch = in_ds.batch
        _device_region(in_ds.buffers[names.index(MBATCH_INPUT)], MBATCH_SIZE, MBATCH_INPUT)
    else:
        batch = model.max_batch
    in_buf, in_alloc = _device_region(in_ds.buffers[names.index(model.input_name)], batch * model.per_image, "input")
    out_need = batch * model.num_classes * 4
    out_buf, out_alloc = _device_region(out_ds.buffers[0], out_need, "output")
    if not out_alloc.writable:
        raise _Reject(ACL_ERROR_RT_PARAM_INVALID, "output buffer is read-only")
    raw = _view(in_alloc, in_buf.ptr, batch * model.per_image)
    shape = (batch, model.height, model.width, 3)
    if model.aipp:
        aipp = model.aipp if isinstance(model.aipp, dict) else {}
        mean = np.float32(aipp.get("mean_chn", 0.0))
        minimum = np.float32(aipp.get("min_chn", AIPP_MIN_CHN))
        var_reci = np.float32(aipp.get("var_reci_chn", AIPP_VAR_RECI_CHN))
        images = (np.frombuffer(raw, np.uint8).reshape(shape).astype(np.float32) - mean - minimum) * var_reci
    else:
        images = np.frombuffer(raw, np.float32).reshape(shape)
    logits = model.session.run(None, {model.session.get_inputs()[0].name: images})[0]
    logits = np.ascontiguousarray(logits, np.float32)
    _view(out_alloc, out_buf.ptr, out_need)[:] = logits.tobytes()
    model.cur_batch = batch
    for obj in (in_ds, out_ds):
        obj.used_with.add(model.id)
        for b in obj.buffers:
            _S.buffers[b].used_with.add(model.id)
    return ACL_SUCCESS


@_api("acl.mdl.execute", _RET)
def _mdl_execute(model_id, in_dataset, out_dataset):
    _need_init()
    model = _model(model_id)
    ctx = _need_ctx()
    if ctx.handle != model.ctx:
        raise _Reject(ACL_ERROR_RT_MODEL_CONTEXT, "model %d was loaded in context 0x%x, the current context of thread "
                      "%s is 0x%x" % (model_id, model.ctx, _thread_name(), ctx.handle))
    _check_device(model.device)
    return _run(model, _dataset(in_dataset, "input"), _dataset(out_dataset, "output"))


@_api("acl.mdl.execute_async", _RET)
def _mdl_execute_async(model_id, in_dataset, out_dataset, stream):
    _need_init()
    if stream not in _S.streams:
        raise _Reject(ACL_ERROR_INVALID_PARAM, "stream %r does not exist" % (stream,))
    model = _model(model_id)
    ctx = _need_ctx()
    if ctx.handle != model.ctx:
        raise _Reject(ACL_ERROR_RT_MODEL_CONTEXT, "model %d was loaded in another context" % model_id)
    _check_device(model.device)
    return _run(model, _dataset(in_dataset, "input"), _dataset(out_dataset, "output"))


# --- namespaces ----------------------------------------------------------------------------------

def _namespace(prefix):
    return types.SimpleNamespace(**{name[len(prefix):]: fn for name, fn in globals().items()
                                    if name.startswith(prefix) and callable(fn)})


rt = _namespace("_rt_")
mdl = _namespace("_mdl_")
util = _namespace("_util_")
_UTIL_FULL = dict(vars(util))


# --- test-facing control API ---------------------------------------------------------------------

def sim_reset(devices=1, allow_reinit=False, legacy_util=False):
    """A fresh "process": nothing initialised, no resources, empty logs. legacy_util drops
    util.bytes_to_ptr/ptr_to_bytes (older pyACL) so callers must use numpy_to_ptr/ptr_to_numpy."""
    global _S
    with _LOCK:
        _S = _State(devices, allow_reinit)
        del sim_calls[:]
        del sim_errors[:]
        del sim_last_finalize_leaks[:]
        for name in list(vars(util)):
            delattr(util, name)
        for name, fn in _UTIL_FULL.items():
            if not (legacy_util and name in ("bytes_to_ptr", "ptr_to_bytes")):
                setattr(util, name, fn)


def sim_leaks():
    """Everything still held, one line each (what finalize would complain about)."""
    with _LOCK:
        out = ["data buffer 0x%x (0x%x, %d bytes, created on %s)" % (b.handle, b.ptr, b.size, b.thread)
               for b in _S.buffers.values()]
        out += ["dataset 0x%x (%d buffer(s), created on %s)" % (d.handle, len(d.buffers), d.thread)
                for d in _S.datasets.values()]
        out += [a.describe() for a in _S.allocs.values()]
        out += ["model %d (%s)" % (m.id, m.path) for m in _S.models.values()]
        out += ["model desc 0x%x" % d for d in _S.descs]
        out += ["stream 0x%x" % s for s in _S.streams]
        out += ["context 0x%x on device %d (created on %s)" % (c.handle, c.device, c.thread)
                for c in _S.contexts.values() if not c.default]
        out += ["device %d (set %d time(s) without reset_device)" % (d, n) for d, n in _S.devices.items() if n]
        return out


def sim_state():
    """A snapshot for assertions."""
    with _LOCK:
        return {
            "initialised": _S.initialised,
            "finalized": _S.finalized,
            "devices": dict(_S.devices),
            "lost": dict(_S.lost),
            "contexts": sorted(h for h, c in _S.contexts.items() if not c.default),
            "current_context": {t.name: c.handle for t, c in _S.current.items()},
            "device_memory": {a.base: (a.size, a.capacity) for a in _S.allocs.values() if a.kind == "device"},
            "host_memory": {a.base: a.size for a in _S.allocs.values() if a.kind == "host"},
            "models": sorted(_S.models),
            "descs": sorted(_S.descs),
            "datasets": sorted(_S.datasets),
            "buffers": sorted(_S.buffers),
            "streams": sorted(_S.streams),
        }


def sim_fail_next(call, code, times=1):
    """The next `times` calls of `call` (e.g. "acl.rt.malloc") return `code` without doing anything."""
    with _LOCK:
        _S.inject[call].extend([code] * times)


def sim_fail_next_execute(code=ACL_ERROR_RT_MODEL_EXECUTE, times=1):
    sim_fail_next("acl.mdl.execute", code, times)


def sim_lose_device(device=0, code=ACL_ERROR_RT_DRV_INTERNAL_ERROR):
    """From now on every call that touches `device` returns `code`, as after a real device loss;
    teardown calls still release their bookkeeping (the memory went with the device)."""
    with _LOCK:
        _S.lost[device] = code


def sim_restore_device(device=0):
    """The device answers again (as after a driver reset); what was on it stays gone."""
    with _LOCK:
        _S.lost.pop(device, None)


def sim_calls_named(name):
    return [c for c in sim_calls if c.name == name]


def sim_write_om(bundle_dir, batch_profiles=None, aipp=False, static_batch=1, filename="model.om",
                 update_metadata=True):
    """Write a simulated .om into a bundle directory (what `atc` would produce), pointing at the
    bundle's model.onnx, and record it as model.json's "om" entry."""
    meta_path = os.path.join(bundle_dir, "model.json")
    with open(meta_path) as f:
        meta = json.load(f)
    shape = meta["input"]["shape"]
    if batch_profiles is not None:
        profiles = sorted(set(int(b) for b in batch_profiles))
        if not 2 <= len(profiles) <= 100 or profiles[0] < 1:
            raise ValueError("ATC takes 2 to 100 positive batch profiles, got %r" % (batch_profiles,))
    else:
        profiles = None
    om = {
        "format": OM_FORMAT,
        "format_version": 1,
        "soc_version": SOC_VERSION,
        "onnx": meta.get("onnx", {}).get("file", "model.onnx"),
        "input": {"name": meta["input"]["name"], "shape": [shape[1], shape[2], 3],
                  "dtype": "uint8" if aipp else "float32"},
        "output": {"name": meta["output"]["name"], "num_classes": meta["output"]["num_classes"]},
        "batch_profiles": profiles,
        "static_batch": None if profiles else int(static_batch),
        "aipp": {"input_format": "RGB888_U8", "mean_chn": 0.0, "min_chn": AIPP_MIN_CHN,
                 "var_reci_chn": AIPP_VAR_RECI_CHN} if aipp else None,
    }
    path = os.path.join(bundle_dir, filename)
    with open(path, "w") as f:
        json.dump(om, f, indent=2)
    if update_metadata:
        meta["om"] = {"file": filename, "batch_profiles": profiles, "aipp": bool(aipp), "soc_version": SOC_VERSION,
                      "input_dtype": "uint8" if aipp else "float32"}
        if "files" in meta:
            import hashlib
            with open(path, "rb") as f:
                meta["files"][filename] = {"sha256": hashlib.sha256(f.read()).hexdigest(), "bytes": os.path.getsize(path)}
        with open(meta_path, "w") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")
    return path


# --- process-exit report, for tests that run the whole service in a subprocess -------------------

def _exit_report():
    """With ACL_SIM_EXIT_REPORT=path, write at exit whether acl.finalize ran, what is still held and
    every rule violation, so a test can check the service's teardown from outside the process.
    Registered at import: the backend's own atexit finalize (registered later) runs before it."""
    path = os.environ.get("ACL_SIM_EXIT_REPORT")
    if not path:
        return
    with open(path, "w") as f:
        json.dump({"finalized": _S.finalized, "leaks": sim_leaks(), "errors": [str(e) for e in sim_errors],
                   "executes": len(sim_calls_named("acl.mdl.execute")),
                   "calls_by_thread": {t: sorted({c.name for c in sim_calls if c.thread == t})
                                       for t in {c.thread for c in sim_calls}}}, f)


import atexit  # noqa: E402

atexit.register(_exit_report)
