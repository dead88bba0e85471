"""KServe v2 / Open Inference Protocol request and response encoding, including Triton's binary
tensor data extension (the official tritonclient sends and asks for binary data by default):
a JSON header of `Inference-Header-Content-Length` bytes, then the raw tensors in order.

A request is checked in an order that never lets the client choose how much is allocated or how
deep anything recurses: the JSON header's nesting depth and its count of arrays and objects (the
values that cost `json.loads` most, about 75 bytes each) are bounded on the raw bytes before
`json.loads`; the parsed header goes through one pydantic schema (InferenceRequest); each tensor's
element count (from its shape, in Python integers) must fit the body before any array is made;
values must be in their datatype's range, and floats finite (JSON has no NaN or Infinity, and a
binary NaN would come back as a bare `NaN` token in a JSON answer)."""
from __future__ import annotations

import base64
import json
import re
import struct
from typing import Any, List, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError, conint

from .errors import ServiceError

HEADER = "Inference-Header-Content-Length"
DTYPES = {"FP32": np.dtype("<f4"), "FP16": np.dtype("<f2"), "FP64": np.dtype("<f8"), "UINT8": np.dtype("u1"),
          "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8")}
MAX_JSON_DEPTH = 32   # a v2 request needs about 4 + the rank of nested `data`
MAX_JSON_CONTAINERS = 1 << 17   # arrays and objects in the JSON header: nested `data` of two 224x224 images
MAX_DIMS = 8
MAX_TENSORS = 16


class ProtocolError(ServiceError, ValueError):
    """A request that breaks the protocol: 400 with one of the codes below (errors.CODES)."""

    def __init__(self, message, code="invalid_inference_request"):
        super().__init__(message)
        self.code = code


# --- the request schema: what a v2 inference request's JSON header may hold ---------------------------
Dim = conint(strict=True, ge=0)


class _Parameters(BaseModel):
    model_config = ConfigDict(extra="allow")   # the protocol lets clients add their own parameters


class InputParameters(_Parameters):
    binary_data_size: Optional[conint(strict=True, ge=0)] = None


class RequestInput(BaseModel):
    name: StrictStr
    datatype: Literal["FP32", "FP16", "FP64", "UINT8", "INT32", "INT64", "BYTES"]
    shape: List[Dim] = Field(max_length=MAX_DIMS)
    parameters: Optional[InputParameters] = None
    data: Any = Field(None, description="row-major values, flat or nested; BYTES elements as base64 strings")


class OutputParameters(_Parameters):
    binary_data: Optional[StrictBool] = None
    classification: Optional[StrictInt] = Field(None, description="not supported: ask for probabilities")


class RequestOutput(BaseModel):
    name: StrictStr
    parameters: Optional[OutputParameters] = None


class RequestParameters(_Parameters):
    binary_data_output: Optional[StrictBool] = None


class InferenceRequest(BaseModel):
    id: Optional[StrictStr] = None
    parameters: Optional[RequestParameters] = None
    inputs: List[RequestInput] = Field(min_length=1, max_length=MAX_TENSORS)
    outputs: Optional[List[RequestOutput]] = Field(None, max_length=MAX_TENSORS)


def request_schema():
    """InferenceRequest as one self-contained JSON schema (its $defs inlined) for the OpenAPI document."""
    schema = InferenceRequest.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node
    return inline(schema)


def describe(error: ValidationError, limit=3):
    """One line from pydantic's errors: 'inputs[0].shape[1]: Input should be ... (got -1)'."""
    parts = []
    for e in error.errors()[:limit]:
        where = "".join("[%d]" % p if isinstance(p, int) else ("." if i else "") + str(p) for i, p in enumerate(e["loc"]))
        got = repr(e.get("input"))
        message = re.sub(r" or instance of \w+", "", e["msg"])
        parts.append("%s: %s (got %s)" % (where or "request", message, got if len(got) <= 40 else got[:37] + "..."))
    more = error.error_count() - limit
    return "; ".join(parts) + ("; and %d more" % more if more > 0 else "")


# --- reading a request ------------------------------------------------------------------------------
def split_body(body, header_length):
    """(JSON header, binary tensors) as memoryviews of the body: nothing is copied."""
    view = memoryview(body)
    if header_length is None:
        return view, view[len(body):]
    try:
        n = int(header_length)
    except ValueError:
        raise ProtocolError("%s must be an integer, got %r" % (HEADER, header_length[:40]))
    if not 0 <= n <= len(body):
        raise ProtocolError("%s %d does not fit the %d-byte body" % (HEADER, n, len(body)))
    return view[:n], view[n:]


def nests_deeper_than(text, limit):
    """Whether the JSON in `text` nests arrays and objects more than `limit` deep (brackets inside
    strings do not count). Linear time, memory bounded by a chunk, no Python loop over the text."""
    if text.count(b"[") + text.count(b"{") <= limit:   # the common case: no need to look closer
        return False
    text = text.replace(b"\\\\", b"").replace(b'\\"', b"")   # escapes, left to right as JSON reads them
    codes = np.frombuffer(text, np.uint8)
    depth = quotes = 0
    for start in range(0, len(codes), 1 << 18):
        chunk = codes[start:start + (1 << 18)]
        is_quote = chunk == ord('"')
        outside = (quotes + np.cumsum(is_quote, dtype=np.int64)) % 2 == 0
        opens = ((chunk == ord("[")) | (chunk == ord("{"))) & outside
        closes = ((chunk == ord("]")) | (chunk == ord("}"))) & outside
        levels = depth + np.cumsum(opens.astype(np.int64) - closes, dtype=np.int64)
        if int(levels.max()) > limit:
            return True
        depth, quotes = int(levels[-1]), quotes + int(is_quote.sum())
    return False


def _refuse_constant(name):
    raise ValueError("%s is not a JSON number" % name)


# What one JSON value costs once parsed, at most: a Python float (24 bytes) and its list slot (8), then
# its element in the array made from the list (8 as float64)
BYTES_PER_JSON_VALUE = 40


def json_values(body, header_length=None):
    """An upper bound on the values (numbers, strings) in the JSON header, read before it is parsed:
    its commas plus one. What parsing costs grows with this, not with the header's bytes."""
    end = len(body)
    if header_length is not None and header_length.isdigit():
        end = min(end, int(header_length))
    return body.count(b",", 0, end) + 1


def load_header(head):
    """The JSON header as a dict, its depth checked before the parser recurses into it."""
    head = bytes(head)
    if head.count(b"[") + head.count(b"{") > MAX_JSON_CONTAINERS:   # each costs json.loads about 75 bytes
        raise ProtocolError("request header holds more than %d arrays and objects: send tensor data flat"
                            % MAX_JSON_CONTAINERS, "invalid_json")
    if nests_deeper_than(head, MAX_JSON_DEPTH):
        raise ProtocolError("request header nests deeper than %d levels" % MAX_JSON_DEPTH, "invalid_json")
    try:
        return json.loads(head.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise ProtocolError("request header is not JSON: %s" % e, "invalid_json")
    except RecursionError:   # unreachable past nests_deeper_than; kept so no parse can become a 500
        raise ProtocolError("request header nests too deep", "invalid_json")


def parse_request(body, header_length=None):
    """(InferenceRequest, {input name: numpy array, or list of bytes for BYTES})."""
    head, binary = split_body(body, header_length)
    raw = load_header(head)
    if not isinstance(raw, dict):
        raise ProtocolError("the request must be a JSON object with an 'inputs' list, got %s" % type(raw).__name__)
    try:
        request = InferenceRequest.model_validate(raw)
    except ValidationError as e:
        raise ProtocolError("invalid inference request: %s" % describe(e))
    tensors, offset = {}, 0
    for spec in request.inputs:
        name = spec.name
        if name in tensors:
            raise ProtocolError("input %r appears twice" % name)
        count = 1
        for dim in spec.shape:
            count *= dim
        if count == 0:
            raise ProtocolError("input %r: shape %s has no elements; send at least one" % (name, spec.shape))
        if count > len(body):   # every element takes at least a byte, in JSON or binary
            shape = str(spec.shape)
            raise ProtocolError("input %r: shape %s claims more elements than a %d-byte body can carry"
                                % (name, shape if len(shape) <= 60 else shape[:57] + "...", len(body)))
        size = spec.parameters.binary_data_size if spec.parameters else None
        if size is not None:
            if "data" in spec.model_fields_set:
                raise ProtocolError("input %r has both data and binary_data_size" % name)
            if offset + size > len(binary):
                raise ProtocolError("input %r: binary_data_size %d is more than the %d binary bytes left"
                                    % (name, size, len(binary) - offset))
            tensors[name] = _from_binary(binary[offset:offset + size], spec.datatype, spec.shape, count, name)
            offset += size
        elif "data" in spec.model_fields_set:
            tensors[name] = _from_json(spec.data, spec.datatype, spec.shape, count, name)
        else:
            raise ProtocolError("input %r has neither data nor binary_data_size" % name)
    if offset != len(binary):
        raise ProtocolError("%d bytes after the JSON header belong to no input's binary_data_size" % (len(binary) - offset))
    return request, tensors


def _from_binary(raw, dtype, shape, count, name):
    if dtype == "BYTES":   # each element: a little-endian uint32 length, then that many bytes
        items, i = [], 0
        while i < len(raw) and len(items) <= count:
            if i + 4 > len(raw):
                raise ProtocolError("input %r: truncated BYTES element" % name)
            (n,) = struct.unpack_from("<I", raw, i)
            if i + 4 + n > len(raw):
                raise ProtocolError("input %r: BYTES element %d claims %d bytes, past the end of its data"
                                    % (name, len(items), n))
            items.append(bytes(raw[i + 4:i + 4 + n]))
            i += 4 + n
        if len(items) != count or i != len(raw):
            raise ProtocolError("input %r: shape %s needs %d BYTES elements, the binary data holds %s"
                                % (name, shape, count, len(items) if i == len(raw) else "more"))
        return items
    dt = DTYPES[dtype]
    if len(raw) != count * dt.itemsize:
        raise ProtocolError("input %r: binary_data_size %d is not %d %s elements of %d bytes (shape %s)"
                            % (name, len(raw), count, dtype, dt.itemsize, shape))
    return _checked(np.frombuffer(raw, dt), dtype, name).reshape(shape)


def _from_json(data, dtype, shape, count, name):
    if dtype == "BYTES":
        try:
            flat = np.asarray(data, dtype=object).reshape(-1)
        except (ValueError, TypeError):
            raise ProtocolError("input %r: BYTES data must be a list of base64 strings" % name)
        if flat.size != count:
            raise ProtocolError("input %r: shape %s needs %d BYTES elements, data has %d" % (name, shape, count, flat.size))
        if not all(isinstance(x, str) for x in flat):
            raise ProtocolError("input %r: JSON BYTES elements must be base64 strings" % name)
        try:  # JSON cannot carry raw bytes: BYTES elements are base64 strings here
            return [base64.b64decode(x, validate=True) for x in flat]
        except ValueError:
            raise ProtocolError("input %r: JSON BYTES elements must be base64 strings" % name)
    dt = DTYPES[dtype]
    try:
        values = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        values = None
    if dt.kind in "iu":
        info = np.iinfo(dt)
        if values is None or values.dtype.kind not in "iu" or (values.size and (
                int(values.min()) < info.min or int(values.max()) > info.max)):
            raise ProtocolError("input %r: %s data must be a flat or nested list of integers from %d to %d"
                                % (name, dtype, info.min, info.max))
    elif values is None or values.dtype.kind not in "iuf":
        raise ProtocolError("input %r: %s data must be a flat or nested list of numbers" % (name, dtype))
    if values.size != count:
        raise ProtocolError("input %r: shape %s needs %d values, data has %d" % (name, shape, count, values.size))
    with np.errstate(over="ignore"):
        return _checked(values.astype(dt), dtype, name).reshape(shape)


def _checked(array, dtype, name):
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ProtocolError("input %r: %s values must be finite (no NaN or Inf, nothing past the type's range)"
                            % (name, dtype))
    return array


# --- answering --------------------------------------------------------------------------------------
def requested_outputs(request, available):
    """[(name, binary)] the client asked for (all, as JSON unless it asked for binary, when none named)."""
    default_binary = bool(request.parameters and request.parameters.binary_data_output)
    if not request.outputs:
        return [(name, default_binary) for name in available]
    out = []
    for spec in request.outputs:
        if spec.name not in available:
            raise ProtocolError("unknown output %r (this model has %s)" % (spec.name, ", ".join(available)))
        params = spec.parameters
        if params and params.classification:
            raise ProtocolError("output %r: the classification extension is not supported; ask for probabilities"
                                % spec.name)
        binary = params.binary_data if params and params.binary_data is not None else default_binary
        out.append((spec.name, binary))
    return out


def encode_response(model_name, model_version, request_id, outputs):
    """(body bytes, headers) for [(name, array, binary)]; the arrays must be finite (JSON has no NaN)."""
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
    head_bytes = json.dumps(head, allow_nan=False).encode("utf-8")
    if not blobs:
        return head_bytes, {"Content-Type": "application/json"}
    return head_bytes + b"".join(blobs), {"Content-Type": "application/octet-stream", HEADER: str(len(head_bytes))}
