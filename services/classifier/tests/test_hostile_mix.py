"""The hostile mix: one real server on its defaults (`python -m classifier`, BACKEND=auto), two probe
clients running throughout (ordinary 640x480 JPEGs to /classify every ~50 ms, /healthz every 50 ms),
and ten attacks in turn, each in its own phase of a few seconds. Every phase checks what the attack
got back, that the probes kept their service level while it ran, and that the server is whole
afterwards; the last test checks the whole mix (no 5xx anywhere, slots free, peak memory within
the bound the service publishes, nothing leaked).

Attack inputs are crafted in hostile.py. Run one phase: `pytest test_hostile_mix.py -k header_flood`
(PHASES below names them). The per-phase table (probe latencies, peak memory) is written to the
terminal at the end of the module, without -s.

If a phase leaves the server unusable (a normal request not answered 200 within 10 s), the next
phase restarts it, so each phase's own failures show; the final test fails on any restart."""
import concurrent.futures
import json
import os
import re
import threading
import time

import numpy as np
import pytest
import requests

import hostile
from hostile import MB, Conn, drive, error_code, open_conns, proc_status, request_head, reset_peak
from svc_support import Server, bundle_dir, jpeg_bytes  # noqa: F401

PROBE_INTERVAL = 0.05
PROBE_TIMEOUT = 10.0
HEALTHZ_TIMEOUT = 5.0
MIN_PHASE_SECONDS = 3.0        # so the 50 ms healthz probe has >= 40 samples in every phase
PROBE_SUCCESS = 0.95
PROBE_P99 = 1.0
# healthz p99: < 100 ms where one request is big (decoding or parsing must be off the event loop),
# < 500 ms elsewhere (noisy 2-core CI: attackers and probes share the cores with the server).
HEALTHZ_P99_STRICT = 0.1
HEALTHZ_P99 = 0.5
STRICT_HEALTHZ_PHASES = {"many_scan_jpeg", "ico_bomb", "near_limit_mix"}
# No start-of-phase slack: every sample whose request started inside the phase counts. (The brief
# allows excluding the first 0.5 s of a phase if needed; it has not been needed.)
PHASE_START_SLACK = 0.0
# 503s that are the service's intended answer to a client it sheds (Retry-After), allowed only for
# the attackers that ask for them (phase 6's near-limit uploads, phase 7's budget hogs), never for a probe.
SHED_CODES = {"busy", "too_many_requests", "queue_full"}
HARD_LIMIT_SECONDS = 600       # the probes stop by themselves even if the module never tears down


class Checks:
    """Collects a phase's failed checks, so one run shows all of them, each with its numbers."""

    def __init__(self, phase):
        self.phase, self.failures = phase, []

    def that(self, ok, message):
        if not ok:
            self.failures.append("[%s] %s" % (self.phase, message))
        return ok

    def done(self):
        assert not self.failures, "\n".join(self.failures)


def p99(values):
    return float(np.percentile(values, 99)) if len(values) else float("nan")


class Probe(threading.Thread):
    """Sends `request(session, url)` every PROBE_INTERVAL until stopped, recording
    (start, seconds, status, error code or exception name)."""

    def __init__(self, mix, name, request):
        super().__init__(name="probe-" + name, daemon=True)
        self.mix, self.request, self.samples = mix, request, []

    def run(self):
        session, url = None, None
        hard_stop = time.monotonic() + HARD_LIMIT_SECONDS
        while not self.mix.stopping.is_set() and time.monotonic() < hard_stop:
            if self.mix.restarting.is_set():
                time.sleep(0.1)
                continue
            if url != self.mix.url:
                url, session = self.mix.url, requests.Session()
            start = time.monotonic()
            try:
                r = self.request(session, url)
                status, detail = r.status_code, (error_code(r.content) if r.status_code >= 400 else None)
            except requests.RequestException as e:
                status, detail = None, e.__class__.__name__
            seconds = time.monotonic() - start
            self.samples.append((start, seconds, status, detail))
            if status is not None and status >= 500:
                self.mix.fivexx.append((self.mix.current, self.name, status, detail))
            time.sleep(max(0.0, PROBE_INTERVAL - seconds) if seconds < PROBE_INTERVAL else 0.005)

    def window(self, start, end):
        return [s for s in self.samples if start + PHASE_START_SLACK <= s[0] <= end]


class Mix:
    """The server under attack, its probes, and what each phase measured."""

    def __init__(self, bundle):
        self.bundle = bundle
        self.stopping, self.restarting = threading.Event(), threading.Event()
        self.fivexx, self.stats, self.restarts, self.peaks = [], {}, [], []
        self.current = "start"
        self.server = None
        self.ordinary = jpeg_bytes(size=(640, 480), seed=7)
        self._start_server()
        self.classify_probe = Probe(self, "classify", lambda s, url: s.post(
            url + "/classify", data=self.ordinary, headers={"Content-Type": "image/jpeg"}, timeout=PROBE_TIMEOUT))
        self.healthz_probe = Probe(self, "healthz", lambda s, url: s.get(url + "/healthz", timeout=HEALTHZ_TIMEOUT))

    # --- the server ---------------------------------------------------------------------------
    def _start_server(self):
        self.server = Server(self.bundle, BACKEND="auto").__enter__()
        self.url, self.port, self.pid = self.server.url, self.server.port, self.server.proc.pid
        model = requests.get(self.url + "/v1/model", timeout=10).json()
        self.model_name = model["name"]
        self.input_size = tuple(model["input"]["shape"][1:3])
        # serving.limits.memory_bound_mb: the enforced worst case of memory in flight above the ready
        # server's baseline, as the service computes it from its settings (docs/api.md).
        self.memory_bound_mb = model["serving"]["limits"]["memory_bound_mb"]
        for _ in range(5):   # warm: first requests allocate pools and arenas that stay
            requests.post(self.url + "/classify", data=self.ordinary, headers={"Content-Type": "image/jpeg"}, timeout=30)
        self.baseline_rss = proc_status(self.pid, "VmRSS")
        self.stderr_mark = 0

    def stderr(self):
        return self.server.stderr()

    def usable(self, timeout=10.0):
        """Whether an ordinary request is answered 200 within `timeout` s (slots and budget free)."""
        try:
            r = requests.post(self.url + "/classify", data=self.ordinary, headers={"Content-Type": "image/jpeg"},
                              timeout=timeout)
            return r.status_code == 200, "%s %s" % (r.status_code, error_code(r.content))
        except requests.RequestException as e:
            return False, e.__class__.__name__

    def ensure_usable(self, phase):
        ok, what = self.usable()
        if ok:
            return None
        self.restarting.set()
        try:
            self.peaks.append(("before " + phase, self.peak_growth()))
            self.server.stop()
            self._start_server()
        finally:
            self.restarting.clear()
        reason = "server unusable before phase %s (ordinary request: %s): restarted" % (phase, what)
        self.restarts.append(reason)
        return reason

    def peak_growth(self):
        """VmHWM since the last reset_peak, over the ready server's RSS."""
        return proc_status(self.pid, "VmHWM") - self.baseline_rss

    def start_probes(self):
        self.classify_probe.start()
        self.healthz_probe.start()

    def stop(self):
        self.stopping.set()
        self.classify_probe.join(PROBE_TIMEOUT + 5)
        self.healthz_probe.join(HEALTHZ_TIMEOUT + 5)
        if self.server is not None:
            self.server.stop()

    def conn(self, payload, allowed=None, stop_on_answer=True):
        return Conn(self.port, payload, allowed, stop_on_answer)

    def post(self, path, data, content_type, timeout=15, session=None, **kw):
        return (session or requests).post(self.url + path, data=data, headers={"Content-Type": content_type},
                                          timeout=timeout, **kw)

    def note_5xx(self, who, status, code, allowed_codes=()):
        if status is not None and status >= 500 and not (status == 503 and code in allowed_codes):
            self.fivexx.append((self.current, who, status, code))


# --- the phases ---------------------------------------------------------------------------------
def phase_bad_chunks(mix, ck):
    """64 chunked uploads whose chunk-size line is 20 hex digits, and 16 with `Transfer-Encoding:
    xchunked`: answered 400 invalid_http (or closed) at once, nothing held afterwards."""
    head = request_head("POST", "/classify", [("Content-Type", "image/jpeg"), ("Transfer-Encoding", "chunked")])
    bad_size = head + b"0123456789abcdef0123\r\n" + b"x" * 16 + b"\r\n"
    xhead = request_head("POST", "/classify", [("Content-Type", "image/jpeg"), ("Transfer-Encoding", "xchunked")])
    xchunked = xhead + b"5\r\nhello\r\n0\r\n\r\n"
    conns = open_conns(mix.port, 64, bad_size) + open_conns(mix.port, 16, xchunked)
    drive(conns, duration=3.0)
    for c in conns:
        mix.note_5xx("bad_chunks", c.status, c.code)
    refused = [c for c in conns if c.status == 400 and c.code == "invalid_http" and c.answered < 1.0]
    closed = [c for c in conns if c.status is None and c.closed_by_server is not None and c.closed_by_server < 1.0]
    other = [c.summary() for c in conns if c not in refused and c not in closed]
    ck.that(not other, "%d of %d malformed requests neither got 400 invalid_http nor a close within 1 s; first: %s"
            % (len(other), len(conns), other[:3]))
    # our side is closed now: a server that never closed its side holds the socket in CLOSE-WAIT
    deadline, waiting = time.monotonic() + 3.0, None
    while time.monotonic() < deadline:
        waiting = hostile.close_wait_count(mix.port)
        if waiting == 0:
            break
        time.sleep(0.2)
    ck.that(waiting == 0, "%d server sockets still in CLOSE-WAIT 3 s after the clients closed" % waiting)
    ok, what = mix.usable(timeout=5)
    ck.that(ok, "an ordinary request after the malformed ones: %s (slots not freed?)" % what)
    ready = requests.get(mix.url + "/readyz", timeout=5).status_code
    ck.that(ready == 200, "/readyz after the malformed requests: %s" % ready)
    return "%d refused 400, %d closed, %d other; CLOSE-WAIT %s" % (len(refused), len(closed), len(other), waiting)


def phase_slow_bodies(mix, ck):
    """64 uploads declaring 10 MB that send 1 byte every 2 s: each cut with 408 body_timeout after the
    5 s grace (MIN_BODY_RATE 64 KB/s), and while they hang on, ordinary requests go on unharmed."""
    head = request_head("POST", "/classify", [("Content-Type", "image/jpeg"), ("Content-Length", "10000000")])
    conns = open_conns(mix.port, 64, head + b"\xff" * 16, allowed=lambda t: len(head) + 1 + int(t / 2))
    drive(conns, duration=8.0)
    for c in conns:
        mix.note_5xx("slow_bodies", c.status, c.code)
    cut = [c for c in conns if c.status == 408 and c.code == "body_timeout"]
    ck.that(len(cut) >= 48, "only %d of 64 slow uploads were cut with 408 body_timeout within 8 s (want >= 48); "
            "answers: %s" % (len(cut), sorted({(c.status, c.code) for c in conns}, key=str)))
    late = [round(c.answered, 2) for c in cut if not 4.0 <= c.answered <= 7.5]
    ck.that(not late, "408 body_timeout should come ~5 s after the headers (grace), got at %s s" % late[:5])
    return "%d/64 cut 408 body_timeout at %s s" % (
        len(cut), "%.1f-%.1f" % (min(c.answered for c in cut), max(c.answered for c in cut)) if cut else "-")


def phase_many_scan_jpeg(mix, ck):
    """A ~1 MB progressive JPEG of 1000x1000 with 25000 scans, sent one at a time for ~3.5 s: each
    refused 400 invalid_image before decoding, and /healthz stays fast meanwhile."""
    data = mix.inputs["many_scan_jpeg"]
    answers, deadline = [], time.monotonic() + 3.5
    while time.monotonic() < deadline and len(answers) < 30:
        start = time.monotonic()
        try:
            r = mix.post("/classify", data, "image/jpeg", timeout=15)
            status, code = r.status_code, error_code(r.content)
        except requests.RequestException as e:
            status, code = None, e.__class__.__name__
        answers.append((status, code, time.monotonic() - start))
        mix.note_5xx("many_scan_jpeg", status, code)
    wrong = [a for a in answers if (a[0], a[1]) != (400, "invalid_image")]
    slow = [round(a[2], 3) for a in answers if a[2] >= 0.5]
    ck.that(not wrong, "%d of %d many-scan JPEGs not answered 400 invalid_image: %s" % (len(wrong), len(answers), wrong[:3]))
    ck.that(not slow, "many-scan JPEG answers should take < 0.5 s (refused before decoding), took %s s" % slow[:5])
    return "%d sent (%d scans, %d KB): %s; slowest %.2f s" % (
        len(answers), hostile.progressive_scan_count(data), len(data) // 1024,
        sorted({(a[0], a[1]) for a in answers}, key=str), max(a[2] for a in answers))


def phase_header_flood(mix, ck):
    """4 connections streaming `X-a: b` header lines to /healthz (up to 8 MB each, ~3 s): the server
    answers 431 headers_too_large or closes, and holds no more than a few MB per connection."""
    cap = 8 * MB
    flood = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-a: b\r\n" * (cap // 8)
    rss = proc_status(mix.pid, "VmRSS")
    reset_peak(mix.pid)
    conns = open_conns(mix.port, 4, flood)
    drive(conns, duration=3.0)
    grown = proc_status(mix.pid, "VmHWM") - rss
    for c in conns:
        mix.note_5xx("header_flood", c.status, c.code)
    ok = [c for c in conns if (c.status == 431 and c.code == "headers_too_large")
          or (c.status is None and c.closed_by_server is not None)]
    ck.that(len(ok) == 4, "header floods not answered 431 headers_too_large nor closed: %s"
            % [c.summary() for c in conns if c not in ok])
    swallowed = [c.sent for c in conns if c.sent >= cap and c.closed_by_server is None]
    ck.that(not swallowed, "the server read all %d MB of headers on %d connections without answering" % (
        cap // MB, len(swallowed)))
    ck.that(grown < 4 * 8 * MB + 16 * MB, "peak RSS grew by %.0f MB under 4 header floods (want < 48 MB: "
            "a few MB per connection)" % (grown / MB))
    return "%s; sent %s KB; peak +%.0f MB" % (sorted({(c.status, c.code) for c in conns}, key=str),
                                              [c.sent // 1024 for c in conns], grown / MB)


def _ico_once(mix):
    start = time.monotonic()
    try:
        r = mix.post("/classify", mix.inputs["ico"], "application/octet-stream", timeout=30)
        status, code = r.status_code, error_code(r.content)
    except requests.RequestException as e:
        status, code = None, e.__class__.__name__
    mix.note_5xx("ico_bomb", status, code)
    return status, code, time.monotonic() - start


def phase_ico_bomb(mix, ck):
    """An ICO whose header says 256x256 and whose PNG is 13376x13376: refused 4xx within 0.5 s, and 8
    at once leave memory flat."""
    status, code, seconds = _ico_once(mix)
    fast = status is not None and 400 <= status < 500 and seconds < 0.5
    ck.that(fast, "ICO holding a 13376x13376 PNG: %s %s after %.2f s (want 4xx within 0.5 s)" % (status, code, seconds))
    if not fast:
        # 8 decodes of 179 megapixels at once could take GBs of the host: skipped while one is not refused
        mix.ico_refused = False
        return "single: %s %s %.2f s; 8 at once skipped (protects the host)" % (status, code, seconds)
    mix.ico_refused = True
    rss = proc_status(mix.pid, "VmRSS")
    reset_peak(mix.pid)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: _ico_once(mix), range(8)))
    grown = proc_status(mix.pid, "VmHWM") - rss
    wrong = [a for a in answers if not (a[0] is not None and 400 <= a[0] < 500 and a[2] < 0.5)]
    ck.that(not wrong, "8 ICOs at once: %d not refused 4xx within 0.5 s: %s" % (len(wrong), wrong[:3]))
    ck.that(grown < 64 * MB, "8 ICOs at once grew peak RSS by %.0f MB (want < 64 MB)" % (grown / MB))
    return "single %s %s %.3f s; 8 at once: %s, slowest %.3f s, peak +%.0f MB" % (
        status, code, seconds, sorted({(a[0], a[1]) for a in answers}, key=str), max(a[2] for a in answers), grown / MB)


def phase_near_limit_mix(mix, ck):
    """At once: 40 uploads of 9.9 MB at ~256 KB/s (fair clients: never cut, may be shed with 503 busy),
    16 v2 JSON bodies of ~8 MB (over the JSON cap: refused 4xx quickly) and 8 ICO bombs. Peak RSS
    within the published bound."""
    upload = mix.inputs["near_limit_upload"]
    uhead = request_head("POST", "/classify", [("Content-Type", "image/jpeg"), ("Content-Length", str(len(upload)))])
    rate = 256 * 1024
    uploads = open_conns(mix.port, 40, uhead + upload, allowed=lambda t: len(uhead) + rate * t)
    body = mix.inputs["v2_json"]
    jhead = request_head("POST", "/v2/models/%s/infer" % mix.model_name,
                         [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    jsons = open_conns(mix.port, 16, jhead + body)
    big = mix.inputs["v2_json_10mb"]   # and two of ~10 MB (just under MAX_BODY_BYTES): the JSON cap refuses them
    bhead = request_head("POST", "/v2/models/%s/infer" % mix.model_name,
                         [("Content-Type", "application/json"), ("Content-Length", str(len(big)))])
    jsons += open_conns(mix.port, 2, bhead + big)
    icos = []
    if getattr(mix, "ico_refused", None) is False:
        ck.that(False, "8 ICO bombs skipped: a single one was not refused fast in phase ico_bomb (protects the host)")
    else:
        ico = mix.inputs["ico"]
        ihead = request_head("POST", "/classify", [("Content-Type", "application/octet-stream"),
                                                   ("Content-Length", str(len(ico)))])
        icos = open_conns(mix.port, 8, ihead + ico)
    drive(uploads + jsons + icos, duration=8.0)
    grown = mix.peak_growth()
    for c in uploads:
        mix.note_5xx("near_limit upload", c.status, c.code, SHED_CODES)
    for c in jsons + icos:
        mix.note_5xx("near_limit json/ico", c.status, c.code)
    bad_json = [c.summary() for c in jsons if not (c.status and 400 <= c.status < 500 and c.answered < 3.0)]
    ck.that(not bad_json, "%d of %d v2 JSON bodies of %.1f-%.1f MB not refused 4xx within 3 s: %s"
            % (len(bad_json), len(jsons), len(body) / MB, len(big) / MB, bad_json[:3]))
    bad_ico = [c.summary() for c in icos if not (c.status and 400 <= c.status < 500 and c.answered < 1.0)]
    ck.that(not bad_ico, "%d of %d ICOs not refused 4xx within 1 s: %s" % (len(bad_ico), len(icos), bad_ico[:3]))
    cut = [c.summary() for c in uploads if c.status == 408]
    ck.that(not cut, "%d fair uploads (256 KB/s, over MIN_BODY_RATE) were cut with 408: %s" % (len(cut), cut[:3]))
    bound = mix.memory_bound_mb * MB
    ck.that(grown < bound, "peak RSS grew by %.0f MB in the near-limit mix, over memory_bound_mb %d"
            % (grown / MB, mix.memory_bound_mb))
    return "uploads %s; json %s; ico %s; peak +%.0f MB" % (
        _tally(uploads), _tally(jsons), _tally(icos), grown / MB)


def _tally(conns):
    counts = {}
    for c in conns:
        key = "%s %s" % (c.status, c.code) if c.status else ("closed" if c.closed_by_server is not None else "open")
        counts[key] = counts.get(key, 0) + 1
    return ", ".join("%s x%d" % kv for kv in sorted(counts.items()))


def phase_budget_hogs(mix, ck):
    """8 clients looping a 40-megapixel single-colour PNG (~120 KB, ~760 MB of the budget each) for
    ~6 s: ordinary requests keep their latency (checked on the probes)."""
    data, deadline, answers = mix.inputs["budget_hog"], time.monotonic() + 6.0, []

    def hog():
        session = requests.Session()
        for _ in range(100):
            if time.monotonic() >= deadline:
                return
            start = time.monotonic()
            try:
                r = mix.post("/classify", data, "image/png", timeout=15, session=session)
                status, code = r.status_code, error_code(r.content)
            except requests.RequestException as e:
                status, code = None, e.__class__.__name__
            answers.append((status, code, time.monotonic() - start))
            mix.note_5xx("budget_hog", status, code, SHED_CODES)
    threads = [threading.Thread(target=hog, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    stuck = sum(t.is_alive() for t in threads)
    ck.that(not stuck, "%d hog clients still waiting 30 s after the phase ended" % stuck)
    ck.that(all(a[0] is not None for a in answers), "hog requests failed without an answer: %s"
            % [a for a in answers if a[0] is None][:3])
    return "%d hog requests: %s" % (len(answers), sorted({(a[0], a[1]) for a in answers}, key=str))


def _strict_json(raw):
    """The body as JSON, refusing what strict parsers refuse (invalid UTF-8, lone surrogates)."""
    text = raw.decode("utf-8")
    payload = json.loads(text)
    json.dumps(payload, ensure_ascii=False).encode("utf-8")
    return payload


def phase_charset_tricks(mix, ck):
    """multipart bodies whose Content-Type names a charset (unicode_escape) that turns a filename
    into a lone surrogate, and filenames of bytes that are not UTF-8: always valid JSON, never a 5xx."""
    jpeg = jpeg_bytes(size=(64, 48), seed=11)
    part = b'Content-Disposition: form-data; name="f"; filename="%s"\r\nContent-Type: image/jpeg'
    cases = {
        "unicode_escape surrogate": ("unicode_escape", [(part % b"\\ud800.jpg", jpeg)]),
        "unicode_escape non-UTF-8": ("unicode_escape", [(part % b"\xff\xfe\x80.jpg", jpeg)]),
        "unicode_escape bad escape": ("unicode_escape", [(part % b"\\N{nope}\\x.jpg", jpeg)]),
        "unicode_escape two parts": ("unicode_escape", [(part % b"\\udfff\\x00\\x1b.jpg", jpeg),
                                                       (part % b"\\ud83d.txt", b"not an image")]),
        "utf-8 non-UTF-8 name": ("utf-8", [(b'Content-Disposition: form-data; name="\xc3\x28"; filename="\xed\xa0\x80.jpg"'
                                            b"\r\nContent-Type: image/jpeg", jpeg)]),
        "utf-16 charset": ("utf-16", [(part % b"a.jpg", jpeg)]),
    }
    results = []
    for name, (charset, parts) in cases.items():
        body = hostile.multipart_raw(parts)
        try:
            r = mix.post("/classify", body, "multipart/form-data; boundary=X; charset=%s" % charset, timeout=15)
        except requests.RequestException as e:
            ck.that(False, "%s: no answer (%s)" % (name, e.__class__.__name__))
            continue
        mix.note_5xx("charset " + name, r.status_code, error_code(r.content))
        results.append((name, r.status_code))
        ck.that(r.status_code < 500, "%s: %s %s" % (name, r.status_code, r.content[:200]))
        try:
            _strict_json(r.content)
        except (UnicodeError, ValueError) as e:
            ck.that(False, "%s: the answer is not valid UTF-8 JSON (%s): %r" % (name, e, r.content[:200]))
    return ", ".join("%s %s" % r for r in results)


def phase_abandoned_uploads(mix, ck):
    """16 uploads declaring 1 MB that send half and hang up: logged as 499, no 500 in /metrics, no
    traceback in stderr."""
    mark = len(mix.stderr())
    head = request_head("POST", "/classify", [("Content-Type", "image/jpeg"), ("Content-Length", str(MB))])
    conns = open_conns(mix.port, 16, head + b"\xff" * (MB // 2), stop_on_answer=True)
    drive(conns, duration=1.5, stop_when_done=False)   # then closed by us, half sent
    for c in conns:
        mix.note_5xx("abandoned", c.status, c.code)
    time.sleep(1.5)   # the server notices the hang-ups
    metrics = requests.get(mix.url + "/metrics", timeout=10).text
    five_hundreds = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                        if line.startswith("classifier_requests_total{") and 'status="500"' in line)
    ck.that(five_hundreds == 0, "/metrics counts %g requests with status 500" % five_hundreds)
    err = mix.stderr()[mark:]
    ck.that("Traceback" not in err, "a traceback in stderr after abandoned uploads:\n%s"
            % err[err.find("Traceback"):][:1500])
    logged = len(re.findall(r"POST /classify 499\b", err))
    ck.that(logged >= 1, "no abandoned upload logged as 499 (log lines: %s)"
            % [line for line in err.splitlines() if "POST /classify" in line][:3])
    return "answers %s; 500s in /metrics %g; logged 499: %d" % (_tally(conns), five_hundreds, logged)


def phase_forged_logs(mix, ck):
    """A path of %0d%0a that would start a forged line in the log, control characters, an oversized
    X-Request-ID and one with control characters, a foreign Host: nothing of it comes back raw."""
    mark = len(mix.stderr())
    for path in (b"/%0d%0aFAKE%20LINE", b"/x%0aFAKE%20LINE%20TWO", b"/%1b%5b31mRED%1b%5b0m"):
        c = hostile.exchange(mix.port, request_head("GET", path), timeout=3)
        mix.note_5xx("forged path", c.status, c.code)
    long_id = "r" * 200
    r = requests.get(mix.url + "/healthz", headers={"X-Request-ID": long_id}, timeout=5)
    echoed = r.headers.get("x-request-id", "")
    ck.that(echoed != long_id and len(echoed) <= 128, "a 200-char X-Request-ID came back (%d chars)" % len(echoed))
    huge = hostile.exchange(mix.port, request_head("GET", "/healthz", [("X-Request-ID", "r" * MB)]), timeout=5)
    mix.note_5xx("1 MB X-Request-ID", huge.status, huge.code)
    huge_back = huge.response[1].get("x-request-id", "") if huge.response else ""
    ck.that((huge.status == 431 or (huge.status is None and huge.closed_by_server is not None))
            and len(huge_back) <= 128, "a 1 MB X-Request-ID: %s %s, echoed %d chars (want 431 or a close)"
            % (huge.status, huge.code, len(huge_back)))
    ctl_id = b"abc\x1b[31mdef\x7f"
    c = hostile.exchange(mix.port, request_head("GET", "/healthz", [("X-Request-ID", ctl_id)]), timeout=3)
    back = (c.response[1].get("x-request-id", "") if c.response else "").encode("latin-1")
    ck.that(c.status in (200, 400) and back != ctl_id and not re.search(rb"[\x00-\x1f\x7f]", back),
            "X-Request-ID with control characters: %s, echoed %r" % (c.status, back))
    for path in ("/v1/model/", "/docs/", "/ui", "/classify/", "/"):
        c = hostile.exchange(mix.port, request_head("GET", path, host=b"evil.example.com"), timeout=3)
        location = c.response[1].get("location", "") if c.response else ""
        ck.that("evil.example" not in location, "GET %s with a foreign Host: Location %r" % (path, location))
    time.sleep(0.5)   # the log lines reach the drained stderr
    lines = mix.stderr()[mark:].splitlines()
    forged = [line for line in lines if line.startswith("FAKE LINE")]
    ck.that(not forged, "a request path started its own log line: %r" % forged[:2])
    raw_ctl = [line for line in lines if "\x1b" in line or "\r" in line]
    ck.that(not raw_ctl, "control characters reached stderr unescaped: %r" % raw_ctl[:2])
    ck.that("r" * 129 not in "\n".join(lines), "the 200-char X-Request-ID reached the log unshortened")
    return "forged lines %d, raw control chars %d, long id echoed %d chars" % (len(forged), len(raw_ctl), len(echoed))


class Phase:
    def __init__(self, name, run):
        self.name, self.run = name, run

    def __repr__(self):
        return self.name


PHASES = [Phase("bad_chunks", phase_bad_chunks), Phase("slow_bodies", phase_slow_bodies),
          Phase("many_scan_jpeg", phase_many_scan_jpeg), Phase("header_flood", phase_header_flood),
          Phase("ico_bomb", phase_ico_bomb), Phase("near_limit_mix", phase_near_limit_mix),
          Phase("budget_hogs", phase_budget_hogs), Phase("charset_tricks", phase_charset_tricks),
          Phase("abandoned_uploads", phase_abandoned_uploads), Phase("forged_logs", phase_forged_logs)]


def crafted_inputs(input_size):
    """Every attack input, made before the probes start (crafting would steal the probes' CPU)."""
    return {"many_scan_jpeg": hostile.many_scan_jpeg(scans=25000),
            "ico": hostile.ico_with_huge_png(),
            "budget_hog": hostile.budget_hog_png(),
            "v2_json": hostile.v2_json_tensor(input_size, 8 * MB),
            "v2_json_10mb": hostile.v2_json_tensor(input_size, 10_000_000),
            "near_limit_upload": hostile.padded_jpeg(int(9.9 * MB), jpeg_bytes(size=(320, 240), seed=5))}


@pytest.fixture(scope="module")
def mix(bundle_dir, request):  # noqa: F811
    m = Mix(bundle_dir)
    try:
        m.inputs = crafted_inputs(m.input_size)
        reset_peak(m.pid)
        m.start_probes()
        time.sleep(1.0)
        yield m
    finally:
        m.stop()
        _report(request.config, m)


class _Summary:
    """A plugin registered at teardown: pytest calls its hook at the end of the session."""

    def __init__(self, lines):
        self.lines = lines

    def pytest_terminal_summary(self, terminalreporter):
        terminalreporter.section("hostile mix", sep="-")
        for line in self.lines:
            terminalreporter.write_line(line)


def _report(config, mix):
    """The per-phase table on the terminal (shown without -s), as Markdown for the README."""
    rows = ["| phase | probe n | ok % | p50 s | p99 s | healthz n | healthz p99 s | peak RSS +MB | attack |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, s in mix.stats.items():
        rows.append("| %s | %d | %.1f | %.3f | %.3f | %d | %.3f | %.0f | %s |" % (
            name, s["n"], 100 * s["ok"], s["p50"], s["p99"], s["hn"], s["hp99"], s["peak_mb"], s["attack"]))
    extra = ["memory_bound_mb: %s; restarts: %s; 5xx seen: %d %s" % (
        mix.memory_bound_mb, mix.restarts or "none", len(mix.fivexx), mix.fivexx[:5])]
    # written in pytest's terminal summary (a fixture's own output would be captured away without -s)
    config.pluginmanager.register(_Summary(rows + extra), "hostile-mix-summary-%d" % id(mix))
    path = os.environ.get("HOSTILE_MIX_REPORT")
    if path:
        with open(path, "w") as f:
            f.write("\n".join(rows + extra) + "\n")


@pytest.mark.parametrize("phase", PHASES, ids=[p.name for p in PHASES])
def test_phase(mix, phase):
    ck = Checks(phase.name)
    restarted = mix.ensure_usable(phase.name)
    mix.current = phase.name
    mix.peaks.append(("before " + phase.name, mix.peak_growth()))   # what the probes alone reached
    reset_peak(mix.pid)
    start = time.monotonic()
    attack = phase.run(mix, ck)
    while time.monotonic() - start < MIN_PHASE_SECONDS:
        time.sleep(0.05)
    end = time.monotonic()
    peak = mix.peak_growth()
    mix.peaks.append((phase.name, peak))
    mix.current = "after " + phase.name
    for probe in (mix.classify_probe, mix.healthz_probe):
        # samples are recorded when answered: wait for one started after `end`, so the request in
        # flight at `end` (a slow one is what we are looking for) is in the window
        deadline = time.monotonic() + PROBE_TIMEOUT + 1
        while time.monotonic() < deadline and not (probe.samples and probe.samples[-1][0] > end):
            time.sleep(0.05)
    probe = mix.classify_probe.window(start, end)
    health = mix.healthz_probe.window(start, end)
    ok = [s for s in probe if s[2] == 200]
    latencies, hlat = [s[1] for s in probe], [s[1] for s in health]
    stats = {"n": len(probe), "ok": len(ok) / max(1, len(probe)), "p50": float(np.median(latencies)) if probe else 0.0,
             "p99": p99(latencies), "hn": len(health), "hp99": p99(hlat), "peak_mb": peak / MB,
             "attack": attack + ("; RESTARTED before" if restarted else "")}
    mix.stats[phase.name] = stats
    failed = sorted({(s[2], s[3]) for s in probe if s[2] != 200}, key=str)
    ck.that(restarted is None, restarted)
    ck.that(stats["ok"] >= PROBE_SUCCESS, "ordinary requests: %d of %d answered 200 (%.0f%%, want >= 95%%); failures %s"
            % (len(ok), len(probe), 100 * stats["ok"], failed[:5]))
    ck.that(stats["p99"] < PROBE_P99, "ordinary requests: p99 %.3f s over %d (want < %.1f s); p50 %.3f s"
            % (stats["p99"], len(probe), PROBE_P99, stats["p50"]))
    limit = HEALTHZ_P99_STRICT if phase.name in STRICT_HEALTHZ_PHASES else HEALTHZ_P99
    ck.that(len(health) >= 40 and stats["hp99"] < limit, "/healthz: p99 %.3f s over %d samples (want < %.1f s over >= 40)"
            % (stats["hp99"], len(health), limit))
    usable, what = mix.usable(timeout=10)
    ck.that(usable, "after the phase an ordinary request got %s (slots or budget still held?)" % what)
    ck.done()


def _strings(node, key=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, str(k))
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v, key)
    elif isinstance(node, str):
        yield key, node


def test_after_the_mix(mix, bundle_dir):  # noqa: F811
    ck = Checks("after the mix")
    mix.current = "after the mix"
    restarted = mix.ensure_usable("after the mix")
    ck.that(restarted is None, "the server was unusable after the last phase: %s" % restarted)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        burst = list(pool.map(lambda _: mix.usable(timeout=10), range(8)))
    ck.that(all(ok for ok, _ in burst), "a burst of 8 ordinary requests: %s" % [what for _, what in burst])
    ck.that(not mix.restarts, "the server had to be restarted: %s" % mix.restarts)
    ck.that(not mix.fivexx, "5xx answers seen (phase, who, status, code): %s" % mix.fivexx[:10])
    meta = requests.get(mix.url + "/v1/model", timeout=10).json()
    text = json.dumps(meta)
    absolute = [(k, v) for k, v in _strings(meta) if v.startswith("/") and not k.lower().endswith(("url", "route"))]
    ck.that(not absolute, "/v1/model shows absolute paths: %s" % absolute[:5])
    ck.that(str(bundle_dir) not in text, "/v1/model shows the bundle's directory %s" % bundle_dir)
    sources = [v for k, v in _strings(meta.get("source", {}))]
    ck.that(not [s for s in sources if s.startswith("/") or os.sep + "tmp" in s],
            "/v1/model source values show server paths: %s" % sources)
    peak_mb = max([p for _, p in mix.peaks] + [mix.peak_growth()]) / MB
    ck.that(peak_mb < mix.memory_bound_mb, "peak RSS grew by %.0f MB during the mix, over memory_bound_mb %s (%s)"
            % (peak_mb, mix.memory_bound_mb, [(n, round(p / MB)) for n, p in mix.peaks]))
    samples = [s for s in mix.classify_probe.samples]
    ok = sum(1 for s in samples if s[2] == 200) / max(1, len(samples))
    ck.that(ok >= PROBE_SUCCESS, "ordinary requests over the whole mix: %.1f%% answered 200 of %d" % (100 * ok, len(samples)))
    ck.that(p99([s[1] for s in samples]) < PROBE_P99, "ordinary requests over the whole mix: p99 %.3f s"
            % p99([s[1] for s in samples]))
    err = mix.stderr()
    ck.that("Traceback" not in err, "a traceback in the server's stderr:\n%s" % err[err.find("Traceback"):][:1500])
    ck.done()
