"""Attack helpers for test_hostile_mix.py: hostile inputs crafted in bytes, and a raw-socket driver
that speaks to the server the way no HTTP client library would (half requests, drips, floods,
malformed framing). Loopback only; every loop here is bounded in time and in bytes."""
import io
import json
import selectors
import socket
import struct
import subprocess
import time
import zlib

import numpy as np
from PIL import Image

MB = 1024 * 1024


# --- crafted inputs ------------------------------------------------------------------------------
def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def flat_png(width, height, value=0x80, colour_type=2, bit_depth=8, palette=None):
    """A PNG of one flat value, written row by row through zlib, so a huge image costs the test
    (and the wire) almost nothing: the decoder pays for every pixel, the sender for ~1/1000 of them."""
    channels = {0: 1, 2: 3, 3: 1}[colour_type]
    row_bytes = (width * channels * bit_depth + 7) // 8
    row = b"\0" + bytes([value]) * row_bytes
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    chunks = [_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0))]
    if colour_type == 3:
        chunks.append(_png_chunk(b"PLTE", palette or b"\x00\x00\x00\xff\xff\xff"))
    chunks += [_png_chunk(b"IDAT", idat), _png_chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def budget_hog_png(width=8000, height=5000):
    """40 megapixels of one colour in ~116 KB: just under MAX_IMAGE_PIXELS, so it is accepted, and
    the service reserves ~760 MB of its 1 GB preprocessing budget for it. A few clients looping it
    hold the budget for everyone at the cost of 116 KB a request."""
    return flat_png(width, height)


def ico_with_huge_png(side=13376):
    """An ICO whose one directory entry says 256x256 (0 = 256) but holds a 1-bit palette PNG of
    side x side pixels (~179 megapixels, just under Pillow's decompression-bomb error at 2x
    MAX_IMAGE_PIXELS): a size check that trusts the ICO header passes, and the decode then allocates
    hundreds of MB and spends seconds of CPU for a ~25 KB upload."""
    png = flat_png(side, side, value=0, colour_type=3, bit_depth=1)
    offset = 6 + 16
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), offset)
    return header + entry + png


def many_scan_jpeg(size=(1000, 1000), scans=4000, seed=0):
    """A valid progressive grayscale JPEG followed by `scans` extra AC scans, each 12 bytes: a scan
    header and one EOB run covering every block of the image. libjpeg accepts the repetition without
    a warning (first AC scans at Al=0 may repeat), and walks all ~15600 blocks of a 1000x1000 image
    for every one of them: decoding cost grows with the scan count, not with the pixels, so a
    header-based pixel limit does not see it. The base image is noise, so the file is ~1 MB."""
    width, height = size
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width), dtype=np.uint8), "L").save(
        buf, "JPEG", quality=90, progressive=True)
    base = buf.getvalue()
    assert base.endswith(b"\xff\xd9")
    blocks = ((width + 7) // 8) * ((height + 7) // 8)
    n = blocks.bit_length() - 1              # EOBn: a run of 2**n + (n extra bits) blocks
    assert 0 < n <= 14
    # a DHT for AC table 1 with one 1-bit code ("0") for the symbol EOBn (n << 4)
    counts = bytes([1] + [0] * 15)
    dht = b"\xff\xc4" + struct.pack(">H", 2 + 1 + 16 + 1) + b"\x11" + counts + bytes([n << 4])
    bits = "0" + format(blocks - (1 << n), "0%db" % n)
    bits += "1" * (-len(bits) % 8)
    data = bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8))
    assert b"\xff" not in data
    # SOS: 1 component (id 1), DC table 0 / AC table 1, Ss=1, Se=63, Ah=Al=0
    scan = b"\xff\xda" + struct.pack(">HBBBBBB", 8, 1, 1, 0x01, 1, 63, 0) + data
    return base[:-2] + dht + scan * scans + b"\xff\xd9"


def progressive_scan_count(data):
    """SOS markers in a JPEG (a rough count: enough for a test's sanity check of many_scan_jpeg)."""
    return data.count(b"\xff\xda")


def v2_json_tensor(size, target_bytes=8 * MB, value="0.25"):
    """A KServe v2 JSON body of FP32 `input` images close to `target_bytes`: legal, under
    MAX_BODY_BYTES and MAX_IMAGES_PER_REQUEST, and a few seconds of json.loads + float conversion
    wherever it is parsed (on the event loop it stalls every other request)."""
    h, w = size
    per_image = h * w * 3
    count = max(1, target_bytes // (per_image * (len(value) + 1)))
    data = ",".join([value] * (count * per_image))
    return ('{"inputs":[{"name":"input","datatype":"FP32","shape":[%d,%d,%d,3],"data":[%s]}]}'
            % (count, h, w, data)).encode("ascii")


def padded_jpeg(total_bytes, jpeg):
    """A valid JPEG followed by zeros up to total_bytes: a near-limit upload that decodes cheaply,
    so its cost is the bytes held while it arrives."""
    return jpeg + b"\0" * (total_bytes - len(jpeg))


def multipart_raw(parts, boundary=b"X"):
    """A multipart/form-data body from (raw part-header bytes, data) pairs: the header bytes go on
    the wire exactly as given (undecodable filenames, escapes meant for a hostile charset)."""
    out = b""
    for header, data in parts:
        out += b"--" + boundary + b"\r\n" + header + b"\r\n\r\n" + data + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


# --- raw HTTP ------------------------------------------------------------------------------------
def request_head(method, path, headers=(), host=b"127.0.0.1"):
    """A request line and headers, ending in the blank line; bytes in, bytes out, nothing checked."""
    def b(x):
        return x if isinstance(x, bytes) else x.encode("latin-1")
    lines = [b(method) + b" " + b(path) + b" HTTP/1.1", b"Host: " + b(host)]
    lines += [b(k) + b": " + b(v) for k, v in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def parse_response(data):
    """(status, {lower-case header: value}, body, complete) of the first response in `data`, or None
    while its head is incomplete."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = bytes(data[:end]).decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return None
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    body = bytes(data[end + 4:])
    length = headers.get("content-length")
    complete = length is not None and length.isdigit() and len(body) >= int(length)
    if complete:
        body = body[:int(length)]
    return status, headers, body, complete


def error_code(body):
    """The `code` of an error body in either of the service's shapes, else None."""
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if isinstance(error, dict):
        return error.get("code")
    return payload.get("code")


class Conn:
    """One raw client connection driven by `drive`: `payload` bytes (head and body) released on the
    schedule `allowed(seconds since open) -> bytes that may have been sent by then`."""

    def __init__(self, port, payload, allowed=None, stop_on_answer=True):
        self.payload = memoryview(payload)
        self.allowed = allowed or (lambda t: len(payload))
        self.stop_on_answer = stop_on_answer
        self.sent = 0
        self.received = bytearray()
        self.opened = time.monotonic()
        self.answered = None         # seconds from open to a complete response
        self.closed_by_server = None  # seconds from open to EOF/reset from the server
        self.send_error = None
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setblocking(False)

    @property
    def response(self):
        parsed = parse_response(self.received)
        return parsed if parsed and parsed[3] else None

    @property
    def status(self):
        r = self.response
        return r[0] if r else None

    @property
    def code(self):
        r = self.response
        return error_code(r[2]) if r else None

    @property
    def done(self):
        return self.closed_by_server is not None or (self.stop_on_answer and self.answered is not None)

    def pump(self, now):
        """Send what the schedule allows, without blocking (a full socket buffer is back-pressure)."""
        if self.done or self.send_error:
            return
        target = min(len(self.payload), int(self.allowed(now - self.opened)))
        while self.sent < target:
            try:
                n = self.sock.send(self.payload[self.sent:target])
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:         # reset, broken pipe: the server hung up
                self.send_error = e.__class__.__name__
                if self.closed_by_server is None:
                    self.closed_by_server = now - self.opened
                return
            self.sent += n

    def read(self, now):
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            if self.closed_by_server is None:
                self.closed_by_server = now - self.opened
            return
        self.received += data
        if self.answered is None and self.response is not None:
            self.answered = now - self.opened

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def summary(self):
        return {"status": self.status, "code": self.code, "answered": self.answered,
                "closed": self.closed_by_server, "sent": self.sent}


def drive(conns, duration, tick=0.02, stop_when_done=True):
    """Pump and read every connection for at most `duration` seconds (or until all are done), then
    close them all. Returns the connections (their summaries tell what the server did)."""
    sel = selectors.DefaultSelector()
    for c in conns:
        sel.register(c.sock, selectors.EVENT_READ, c)
    deadline = time.monotonic() + duration
    try:
        while True:
            now = time.monotonic()
            if now >= deadline or (stop_when_done and all(c.done for c in conns)):
                break
            for c in conns:
                c.pump(now)
            for key, _ in sel.select(timeout=min(tick, max(0.0, deadline - now))):
                c = key.data
                c.read(time.monotonic())
                if c.closed_by_server is not None:
                    sel.unregister(c.sock)
    finally:
        sel.close()
        for c in conns:
            c.close()
    return conns


def open_conns(port, count, payload, allowed=None, stop_on_answer=True):
    return [Conn(port, payload, allowed, stop_on_answer) for _ in range(count)]


def exchange(port, data, timeout=5.0):
    """Send `data` at once, read until a complete response, EOF or `timeout`: (Conn summary)."""
    c = Conn(port, data)
    drive([c], timeout)
    return c


# --- the server process, from outside -------------------------------------------------------------
def proc_status(pid, field):
    """A /proc/PID/status memory field (VmRSS, VmHWM) in bytes."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no %s for %d" % (field, pid))


def reset_peak(pid):
    """Reset the kernel's peak-RSS counter (VmHWM) of `pid` to its current RSS."""
    with open("/proc/%d/clear_refs" % pid, "w") as f:
        f.write("5")


def close_wait_count(port):
    """TCP sockets of the server on `port` in CLOSE-WAIT (the client hung up, the server never closed)."""
    try:
        out = subprocess.run(["ss", "-tanH", "state", "close-wait", "( sport = :%d )" % port],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True,
                             timeout=10).stdout
        return len([line for line in out.splitlines() if line.strip()])
    except (OSError, subprocess.SubprocessError):
        pass
    count = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[3] == "08" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                        count += 1
        except OSError:
            pass
    return count
