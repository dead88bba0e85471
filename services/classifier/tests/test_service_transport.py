"""Every connection bounded in time and size, on a real server (uvicorn on a loopback port) with short
deadlines, for both HTTP parsers: the head's deadline, size and line count; a malformed chunk inside
a body the app is reading; the body's minimum pace; the connection cap; bodies that hold no request
slot while they arrive; slots and memory free the moment a client goes."""
import concurrent.futures
import socket
import threading
import time

import pytest
import requests

from classifier.backends.onnxruntime import OnnxRuntimeBackend
from mbv3 import bundle as bundle_mod

from svc_support import ThreadServer, bundle_dir, classify, jpeg_bytes  # noqa: F401

FAST = {"HEADER_TIMEOUT_SECONDS": 0.6, "BODY_GRACE_SECONDS": 0.5, "MIN_BODY_RATE": 10000, "MAX_HEADER_BYTES": 4096,
        "MAX_HEADERS": 20, "MAX_CONCURRENT_REQUESTS": 2, "MAX_CONNECTIONS": 40, "KEEP_ALIVE_SECONDS": 5}


@pytest.fixture(scope="module", params=["httptools", "h11"])
def server(request, bundle_dir):  # noqa: F811
    with ThreadServer(dict(FAST, MODEL_DIR=bundle_dir, HTTP_PARSER=request.param)) as s:
        s.parser = request.param
        yield s


def connect(server):
    c = socket.create_connection(("127.0.0.1", server.port))
    c.settimeout(5)
    return c


def answer(c, timeout=5):
    """Everything the server sends until it closes (or `timeout`): (bytes, seconds)."""
    c.settimeout(timeout)
    start, out = time.perf_counter(), b""
    try:
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            out += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return out, time.perf_counter() - start


def status_and_code(raw):
    head, _, body = raw.partition(b"\r\n\r\n")
    import json
    return int(head.split()[1]), json.loads(body)["error"]["code"]


def load(server):
    return requests.get(server.url + "/v1/model", timeout=5).json()["serving"]["load"]


def assert_all_free(server):
    assert load(server) == {"requests_processing": 0, "body_bytes_held": 0, "preprocess_bytes_held": 0}
    assert requests.get(server.url + "/readyz", timeout=5).status_code == 200
    assert classify(server.url, jpeg_bytes()).status_code == 200


def test_a_malformed_chunk_inside_a_body_is_answered_at_once_and_holds_nothing(server):
    """llhttp refuses a 20-digit chunk size at once; h11 reads it as a size and waits for the bytes,
    so there the body's pace ends the request instead. Either way nothing stays held."""
    expected = (400, "invalid_http") if server.parser == "httptools" else (408, "body_timeout")
    socks = []
    for i in range(8):   # four times the request slots
        c = connect(server)
        c.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"5\r\nhello\r\n" + b"F" * 20 + b"\r\n")
        socks.append(c)
    for c in socks:
        raw, seconds = answer(c)
        assert status_and_code(raw) == expected and seconds < 2
        c.close()
    assert_all_free(server)


def test_a_head_over_its_bytes_or_lines_is_431(server):
    c = connect(server)
    c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
    assert status_and_code(answer(c)[0]) == (431, "headers_too_large")
    c = connect(server)
    c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-a: b\r\n" * 25 + b"\r\n")
    assert status_and_code(answer(c)[0]) == (431, "headers_too_large")
    c = connect(server)   # the limits leave an ordinary head alone, body bytes in the same packet too
    body = jpeg_bytes()
    c.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n"
              b"Connection: close\r\n" % len(body) + b"X-a: b\r\n" * 15 + b"\r\n" + body)
    assert answer(c)[0].startswith(b"HTTP/1.1 200")


def test_a_head_that_does_not_arrive_in_time_is_408_and_an_idle_connection_closes(server):
    c = connect(server)
    c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    raw, seconds = answer(c)
    assert status_and_code(raw) == (408, "header_timeout") and 0.5 < seconds < 2
    c = connect(server)
    raw, seconds = answer(c)
    assert raw == b"" and seconds < 2


def test_a_slow_body_is_408_and_slow_bodies_hold_no_slot(server):
    """Six uploads trickle their bodies while the server has two request slots: ordinary requests
    are served meanwhile, and each trickler is cut off once it falls behind MIN_BODY_RATE."""
    socks = []
    for i in range(6):
        c = connect(server)
        c.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\nab")
        socks.append(c)
    for i in range(4):
        assert classify(server.url, jpeg_bytes(seed=i)).status_code == 200
    for c in socks:
        raw, seconds = answer(c)
        assert status_and_code(raw) == (408, "body_timeout"), raw
        c.close()
    assert_all_free(server)


def test_an_abandoned_upload_is_499_not_a_server_fault(server):
    for i in range(3):
        c = connect(server)
        c.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
                  + b"x" * 50000)
        time.sleep(0.1)
        c.close()
    time.sleep(0.3)
    metrics = requests.get(server.url + "/metrics", timeout=5).text
    assert 'status="499"' in metrics and 'status="500"' not in metrics
    assert_all_free(server)


def test_idle_connections_at_the_cap_make_room_for_newcomers(bundle_dir):  # noqa: F811
    """MAX_CONNECTIONS sockets that send nothing or trickle a head cannot lock anyone out: each
    newcomer closes the connection that has waited longest for a request."""
    with ThreadServer(dict(FAST, MODEL_DIR=bundle_dir, MAX_CONNECTIONS=10, HEADER_TIMEOUT_SECONDS=30)) as s:
        socks = [connect(s) for _ in range(10)]
        socks[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")   # the oldest: a head trickling in
        try:
            time.sleep(0.1)
            assert [classify(s.url, jpeg_bytes(seed=i)).status_code for i in range(5)] == [200] * 5
            assert status_and_code(answer(socks[0], timeout=2)[0]) == (503, "too_many_connections")   # told why
            socks += [connect(s) for _ in range(3)]   # 9 + 3 idle ones: the two oldest make room
            evicted = [answer(c, timeout=0.5) for c in socks[1:6]]
            assert [raw for raw, _ in evicted] == [b""] * 5
            assert [seconds < 0.4 for _, seconds in evicted] == [True] * 2 + [False] * 3, evicted
        finally:
            for c in socks:
                c.close()


def test_a_newcomer_is_refused_only_when_every_connection_has_a_request(bundle_dir):  # noqa: F811
    with ThreadServer(dict(FAST, MODEL_DIR=bundle_dir, MAX_CONNECTIONS=6, BODY_GRACE_SECONDS=20)) as s:
        busy = []
        for i in range(6):   # each has a request in the app, its body still arriving
            c = connect(s)
            c.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\nab")
            busy.append(c)
        time.sleep(0.2)
        late = connect(s)
        try:
            raw, _ = answer(late, timeout=2)
            assert status_and_code(raw) == (503, "too_many_connections")
        finally:
            late.close()
            for c in busy:
                c.close()
        time.sleep(0.3)
        assert requests.get(s.url + "/healthz", timeout=5).status_code == 200


def test_bodies_past_body_memory_are_503_busy(bundle_dir):  # noqa: F811
    """BODY_MEMORY_MB=2 holds one 1 MB body (charged twice): a second one arriving meanwhile is refused."""
    with ThreadServer(dict(FAST, MODEL_DIR=bundle_dir, BODY_MEMORY_MB=2, MAX_BODY_BYTES=1 << 20)) as s:
        first = connect(s)
        first.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000000\r\n\r\n"
                      + b"x" * 600000)
        time.sleep(0.2)
        second = connect(s)
        second.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000000\r\n\r\n"
                       + b"x" * 600000)
        assert status_and_code(answer(second)[0]) == (503, "busy")
        first.close()
        second.close()
        time.sleep(0.3)
        assert load(s)["body_bytes_held"] == 0


class Held(OnnxRuntimeBackend):
    """ONNX Runtime whose runs after warm-up (a lone image's too) wait for `release` (set)."""
    release = threading.Event()
    warm = 0

    def run(self, batch):
        type(self).warm += 1
        if type(self).warm > 2:
            self.release.wait(20)
        return super().run(batch)

    def run_alone(self, batch):
        return self.run(batch)


def held_server(bundle, slots):
    """A server with `slots` request slots whose one device holds each run until Held.release is set."""
    Held.release.clear()
    Held.warm = 0

    def factory(bundle, *, threads, max_batch, **choices):
        return Held(bundle.file(bundle_mod.ONNX), bundle.info, threads, max_batch)
    return ThreadServer(dict(FAST, MODEL_DIR=bundle, MAX_CONCURRENT_REQUESTS=slots, CPU_WORKERS=1), factory)


def test_readiness_is_503_while_every_request_slot_is_held(bundle_dir):  # noqa: F811
    with held_server(bundle_dir, 1) as s:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            held = pool.submit(classify, s.url, jpeg_bytes())
            wait_for(lambda: load(s)["requests_processing"] == 1)
            ready = requests.get(s.url + "/readyz", timeout=5)
            assert ready.status_code == 503 and "request slots" in ready.json()["error"]["message"]
            assert classify(s.url, jpeg_bytes(seed=1)).json()["error"]["code"] == "too_many_requests"
            assert requests.get(s.url + "/healthz", timeout=5).status_code == 200   # alive, not ready
            Held.release.set()
            assert held.result().status_code == 200
        assert requests.get(s.url + "/readyz", timeout=5).status_code == 200


def test_a_client_that_leaves_while_its_request_waits_frees_its_slot_at_once(bundle_dir):  # noqa: F811
    """The device is held by a first request; a second one waits in the queue and its client leaves:
    its slot is free again at once (not when the device is), and it counts as 499, not 500."""
    with held_server(bundle_dir, 2) as s:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(classify, s.url, jpeg_bytes())
            wait_for(lambda: load(s)["requests_processing"] == 1)
            body = jpeg_bytes(seed=1)
            c = connect(s)
            c.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                      % len(body) + body)
            wait_for(lambda: load(s)["requests_processing"] == 2)
            c.close()
            wait_for(lambda: load(s)["requests_processing"] == 1, timeout=2)
            assert not first.done()   # the device is still held: the slot came back before it
            Held.release.set()
            assert first.result().status_code == 200
        metrics = requests.get(s.url + "/metrics", timeout=5).text
        assert 'status="499"' in metrics and 'status="500"' not in metrics
        assert_all_free(s)


def wait_for(condition, timeout=10):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "not within %s s" % timeout
        time.sleep(0.02)


def test_an_answer_left_unread_aborts_the_connection_after_the_send_timeout():
    """The guard's send deadline on its own (on loopback the kernel's buffers take every answer this
    service has, so a real socket never fills the process's): pause_writing arms it, resume_writing
    disarms it, and when it fires the connection is aborted."""
    import asyncio

    import dataclasses

    from classifier.settings import Settings
    from classifier.transport import Guard, limits_from

    class Transport:
        aborted = False

        def abort(self):
            self.aborted = True

    class Base:
        def pause_writing(self):
            pass

        def resume_writing(self):
            pass

    class Guarded(Guard, Base):
        limits = dataclasses.replace(limits_from(Settings()), send_timeout=0.05)

    async def main():
        g = Guarded()
        g.loop, g.transport = asyncio.get_running_loop(), Transport()
        g.pause_writing()
        g.resume_writing()   # drained in time: nothing happens
        await asyncio.sleep(0.1)
        assert not g.transport.aborted
        g.pause_writing()
        await asyncio.sleep(0.1)
        assert g.transport.aborted
    asyncio.run(main())


def test_a_packet_of_pipelined_requests_is_cut_off_after_the_queue_limit(server):
    """7,000 GETs in one burst would queue 7,000 requests (about 600 bytes each) on one connection:
    the first are answered in order (h11 reads one at a time; httptools queues at most
    MAX_PIPELINED behind the one being answered), then the connection closes."""
    from classifier.transport import MAX_PIPELINED
    one = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    c = connect(server)
    c.sendall(one * 7000)
    raw, seconds = answer(c, timeout=5)
    answered = raw.count(b"HTTP/1.1 200")
    assert 1 <= answered < 7000 and seconds < 5, (answered, seconds)
    if server.parser == "httptools":
        assert answered <= MAX_PIPELINED + 1 and raw.count(b"invalid_http") == 1
    assert_all_free(server)
