"""KServe v2 / Open Inference Protocol request and response encoding, including Triton's binary
tensor data extension (the official tritonclient sends and asks for binary data by default):
a JSON header of `Inference-Header-Content-Length` bytes, then the raw tensors in order."""
from __future__ import annotations

import base64
import json
import struct

import numpy as np

HEADER = "Inference-Header-Content-Length"
DTYPES = {"FP32": np.float32, "FP16": np.float16, "FP64": np.float64, "UINT8": np.uint8, "INT32": np.int32,
          "INT64": np.int64}


class ProtocolError(ValueError):
    """A malformed or unsupported request: 400 with {"error": message}."""


def split_body(body, header_length):
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        raise ProtocolError("%s must be an integer" % HEADER)
    if not 0 <= n <= len(body):
        raise ProtocolError("%s %d does not fit the %d-byte body" % (HEADER, n, len(body)))
    return body[:n], body[n:]


def parse_request(body, header_length=None):
    """(request dict, {input name: numpy array or list of bytes})."""
    head, binary = split_body(body, header_length)
    try:
        request = json.loads(head.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError("request header is not JSON: %s" % e)
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list) or not request["inputs"]:
        raise ProtocolError("request needs a non-empty 'inputs' list")
    tensors, offset = {}, 0
    for spec in request["inputs"]:
        name, dtype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
        if not isinstance(name, str) or not isinstance(shape, list) or dtype not in list(DTYPES) + ["BYTES"]:
            raise ProtocolError("input needs name, shape and a datatype (FP32 or BYTES), got %r" % {
                k: spec.get(k) for k in ("name", "datatype", "shape")})
        size = (spec.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            raw = binary[offset:offset + int(size)]
            if len(raw) != int(size):
                raise ProtocolError("input %s: binary data is shorter than binary_data_size" % name)
            offset += int(size)
            tensors[name] = _from_binary(raw, dtype, shape, name)
        elif "data" in spec:
            tensors[name] = _from_json(spec["data"], dtype, shape, name)
        else:
            raise ProtocolError("input %s has neither data nor binary_data_size" % name)
    return request, tensors


def _count(shape):
    return int(np.prod(shape)) if shape else 1


def _from_binary(raw, dtype, shape, name):
    if dtype == "BYTES":
        items, i = [], 0
        while i < len(raw):
            if i + 4 > len(raw):
                raise ProtocolError("input %s: truncated BYTES element" % name)
            (n,) = struct.unpack_from("<I", raw, i)
            items.append(bytes(raw[i + 4:i + 4 + n]))
            i += 4 + n
        if len(items) != _count(shape):
            raise ProtocolError("input %s: %d BYTES elements for shape %s" % (name, len(items), shape))
        return items
    array = np.frombuffer(raw, dtype=DTYPES[dtype])
    if array.size != _count(shape):
        raise ProtocolError("input %s: %d values for shape %s" % (name, array.size, shape))
    return array.reshape(shape)


def _from_json(data, dtype, shape, name):
    if dtype == "BYTES":
        flat = list(np.asarray(data, dtype=object).reshape(-1))
        try:  # JSON cannot carry raw bytes: BYTES elements are base64 strings here
            items = [base64.b64decode(x, validate=True) if isinstance(x, str) else bytes(x) for x in flat]
        except (ValueError, TypeError):
            raise ProtocolError("input %s: JSON BYTES elements must be base64 strings" % name)
        if len(items) != _count(shape):
            raise ProtocolError("input %s: %d BYTES elements for shape %s" % (name, len(items), shape))
        return items
    try:
        array = np.asarray(data, dtype=DTYPES[dtype]).reshape(-1)
    except (ValueError, TypeError):
        raise ProtocolError("input %s: data is not a list of %s numbers" % (name, dtype))
    if array.size != _count(shape):
        raise ProtocolError("input %s: %d values for shape %s" % (name, array.size, shape))
    return array.reshape(shape)


def requested_outputs(request, available):
    """[(name, binary)] the client asked for (all, as JSON unless it asked for binary, when none named)."""
    default_binary = bool((request.get("parameters") or {}).get("binary_data_output", False))
    asked = request.get("outputs")
    if not asked:
        return [(name, default_binary) for name in available]
    out = []
    for spec in asked:
        name = spec.get("name")
        if name not in available:
            raise ProtocolError("unknown output %r (this model has %s)" % (name, ", ".join(available)))
        out.append((name, bool((spec.get("parameters") or {}).get("binary_data", default_binary))))
    return out


def encode_response(model_name, model_version, request_id, outputs):
    """(body bytes, headers) for [(name, array, binary)]."""
    specs, blobs = [], []
    for name, array, binary in outputs:
        array = np.ascontiguousarray(array, np.float32)
        spec = {"name": name, "datatype": "FP32", "shape": list(array.shape)}
        if binary:
            blob = array.tobytes()
            spec["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            spec["data"] = array.reshape(-1).tolist()
        specs.append(spec)
    head = {"model_name": model_name, "model_version": model_version, "outputs": specs}
    if request_id is not None:
        head["id"] = request_id
    head_bytes = json.dumps(head).encode("utf-8")
    if not blobs:
        return head_bytes, {"Content-Type": "application/json"}
    return head_bytes + b"".join(blobs), {"Content-Type": "application/octet-stream", HEADER: str(len(head_bytes))}
