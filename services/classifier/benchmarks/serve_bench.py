"""`make bench-serve`: the HTTP service under load, next to the same work in this process, the
engine alone, and the same work behind other Python servers.

The service runs as a subprocess (`python -m classifier`) and classifies real 640x427 JPEG photos
(scikit-learn's sample images, sent as they are) from 1, 8 and 32 concurrent keep-alive clients.
References, measured in the same run:
- the engine alone: ONNX Runtime (and OpenVINO) at batch 1, 2 threads, on the same model.onnx;
- in process: the service's own decode, preprocessing and backend, one image at a time, no HTTP;
- peers (peer_harness.py): the same preprocessing and engine behind a bare ASGI app, LitServe
  (batching on at 32 clients) and KServe's ModelServer, at 1 and 32 clients, each in its own venv.
The ratios say what the service adds to the model at one client and what batching buys at many,
on whatever machine this runs. No TensorFlow here: a missing bundle is made by the `mbv3` command
in a subprocess. Exit status is 1 only on errors (failed requests, a server that will not start
or stop); a missed goal is printed, not failed. The report (ratios, floors, table, plot) is
serve_report.py.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np

import peer_harness
from peer_harness import free_port, log
from serve_report import plot, ratios, table

ENGINE_THREADS = 2   # the engine-alone reference: the "ONNX Runtime alone, batch 1, 2 threads"


class BenchError(RuntimeError):
    pass


# --- inputs ----------------------------------------------------------------------------------

def ensure_bundle(path):
    """The benchmark bundle; made like `make bench-onnx` does (V3_LARGE 224, random weights) if missing."""
    if os.path.isfile(os.path.join(path, "model.json")):
        return path
    ckpt = os.path.join(os.path.dirname(os.path.abspath(path)), "ckpt")
    shutil.rmtree(ckpt, ignore_errors=True)
    mbv3 = [sys.executable, "-m", "mbv3.cli"]
    for cmd in (mbv3 + ["init", "--model-dir", ckpt], mbv3 + ["export", "--checkpoint", ckpt, "--output", path]):
        log("+ " + " ".join(cmd))
        if subprocess.run(cmd).returncode != 0:
            raise BenchError("making the benchmark bundle failed: %s" % " ".join(cmd))
    return path


def sample_photos():
    """[(name, JPEG bytes)]: scikit-learn's two sample photos (640x427 JPEGs), as the files are."""
    import sklearn.datasets
    folder = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    photos = []
    for name in ("china.jpg", "flower.jpg"):
        with open(os.path.join(folder, name), "rb") as f:
            photos.append((name, f.read()))
    return photos


# --- statistics ------------------------------------------------------------------------------

def percentiles(samples_ms):
    a = np.asarray(samples_ms, dtype=np.float64)
    if not a.size:
        return {"n": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "mean_ms": None}
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"n": int(a.size), "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(a.mean())}


def per_photo(names, samples_ms):
    """p50 per photo: the photos differ in size, so the mix's median alone can hide where time goes."""
    groups = {}
    for name, ms in zip(names, samples_ms):
        groups.setdefault(name, []).append(ms)
    return {name: percentiles(v)["p50_ms"] for name, v in sorted(groups.items())}


class CpuMeter:
    """CPU cores used during a measurement by this process (the clients, or the reference), by the
    service, and by everything else on the machine: on a small machine the load generator and other
    people's jobs compete with the service, and the figures only mean something next to that."""

    def __init__(self, service_pid=None):
        self.pid = service_pid
        self.start = self._sample()

    def _sample(self):
        try:
            with open("/proc/stat") as f:
                ticks = [int(v) for v in f.readline().split()[1:9]]
            busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
            service = 0.0
            if self.pid:
                with open("/proc/%d/stat" % self.pid) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                service = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        except (OSError, ValueError, IndexError):
            return None  # not Linux: no CPU accounting
        return time.perf_counter(), time.process_time(), service, busy

    def stop(self):
        end = self._sample()
        if not (self.start and end):
            return None
        wall, own, service, busy = (b - a for a, b in zip(self.start, end))
        return {"client_cores": own / wall, "service_cores": service / wall,
                "other_cores": max(0.0, busy - own - service) / wall}


# --- the references ------------------------------------------------------------------------

def preprocessing_alone(bundle_dir, photos, rounds=5, runs=10):
    """p50 ms per photo of the two transforms the service can serve with (fast_preprocess.select:
    fast and reference), interleaved round by round, with their largest difference in 8-bit levels."""
    from mbv3 import bundle, fast_preprocess
    prep = bundle.load(bundle_dir).preprocessing
    try:
        transforms = {"fast": fast_preprocess.select("fast")[0], "reference": fast_preprocess.select("reference")[0]}
    except ImportError as e:
        log("preprocessing alone: no fast path (%s)" % e)
        return None
    samples = {(k, name): [] for k in transforms for name, _ in photos}
    for _ in range(rounds):
        for k, transform in transforms.items():
            for name, data in photos:
                transform(data, prep)
                for _ in range(runs):
                    t = time.perf_counter()
                    transform(data, prep)
                    samples[(k, name)].append((time.perf_counter() - t) * 1000)
    levels = max(float(np.abs(transforms["fast"](d, prep) - transforms["reference"](d, prep)).max()) for _, d in photos)
    out = {k: {name: percentiles(samples[(k, name)])["p50_ms"] for name, _ in photos} for k in transforms}
    out["max_difference_levels"] = levels * prep.pixel_max * min(prep.std)   # model-input units -> 8-bit levels
    return out


class EngineAlone:
    """Each CPU engine at batch 1 on a preprocessed photo with ENGINE_THREADS threads: what the model
    alone costs here, the reference of the goals' ratios."""

    def __init__(self, bundle_dir, photos, threads=ENGINE_THREADS):
        from mbv3 import bundle, fast_preprocess
        loaded = bundle.load(bundle_dir)
        x = fast_preprocess.reference_input(photos[0][1], loaded.preprocessing)[np.newaxis]
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(loaded.file(bundle.ONNX), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        self.runners = {"onnxruntime": lambda: session.run(None, {name: x})}
        try:
            from classifier.backends.openvino import OpenVinoBackend
            ov = OpenVinoBackend(loaded.file(bundle.ONNX), loaded.info, threads, 1)
            self.runners["openvino"] = lambda: ov.run(x)
        except Exception as e:   # openvino not installed: the ONNX Runtime reference is the one that counts
            log("engine alone: no OpenVINO (%s)" % e)

    def measure(self, runs=30, warmup=3):
        """{engine: [ms]}, the engines one after the other, each warmed up first."""
        samples = {}
        for key, run in self.runners.items():
            for _ in range(warmup):
                run()
            samples[key] = []
            for _ in range(runs):
                t = time.perf_counter()
                run()
                samples[key].append((time.perf_counter() - t) * 1000)
        return samples


class InProcess:
    """Per image, in this process: the service's decode + preprocessing (PREPROCESSING=auto) and its
    backend (built as the service builds it) at batch 1: the service's work without HTTP or queues."""

    def __init__(self, bundle_dir, photos, backend, threads=0, warmup=5):
        from mbv3 import bundle, fast_preprocess
        from classifier import backends
        from classifier.settings import available_cpus
        loaded = bundle.load(bundle_dir)
        self.prep, self.photos = loaded.preprocessing, photos
        self.transform, described = fast_preprocess.select("auto")
        plan = backends.plan(backend=backend, device_ids=(0,), cpu_workers=1, threads=threads, max_batch=8,
                             cpus=available_cpus())
        self.engine = backends.create(loaded, backend=plan.backend, device_id=0, threads=plan.threads, max_batch=8)
        self.what = "decode + preprocess (%s) + %s batch 1, in this process" % (described, self.engine.describe())
        self.measure(warmup)

    def measure(self, runs):
        """[(photo name, decode + preprocess ms, inference ms)], the photos in turn."""
        rows = []
        for i in range(runs):
            name, data = self.photos[i % len(self.photos)]
            t0 = time.perf_counter()
            x = self.transform(data, self.prep)[np.newaxis]
            t1 = time.perf_counter()
            self.engine.run(x)
            rows.append((name, (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000))
        return rows

    def summary(self, rows, wall, cpu=None):
        total = [p + n for _, p, n in rows]
        return {"what": self.what, "backend": self.engine.name, "latency": percentiles(total),
                "throughput_rps": len(rows) / wall if wall > 0 else 0.0, "wall_s": wall,
                "parts_p50_ms": {"decode_preprocess": percentiles([p for _, p, _ in rows])["p50_ms"],
                                 "inference": percentiles([n for _, _, n in rows])["p50_ms"]},
                "per_photo_p50_ms": per_photo([name for name, _, _ in rows], total), "cpu": cpu}

    def close(self):
        self.engine.close()


def lone_rounds(engines, inproc, port, reqs, rounds, per_round, service_pid):
    """One client, interleaved with its references: each round measures the engine alone, the same
    work in process and then the service (whose engine sits idle meanwhile, as the references' do
    while it runs), so all three see the same machine, and each round gives its own ratios. On a
    shared machine whose speed drifts by 2x within minutes, a reference measured at another moment
    than the service moves a ratio more than anything the service does.
    Returns the pooled 1-client level, the pooled references and the rounds' p50s and ratios."""
    levels, engine_samples, in_rows, in_wall, out = [], {}, [], 0.0, []
    for _ in range(rounds):
        alone = engines.measure()
        t = time.perf_counter()
        rows = inproc.measure(per_round // 2)
        in_wall += time.perf_counter() - t
        time.sleep(0.05)   # ONNX Runtime's idle workers spin a little while after a run
        level = run_level(port, reqs, 1, per_round, 60.0, service_pid=service_pid, keep=True)
        levels.append(level)
        for key, values in alone.items():
            engine_samples.setdefault(key, []).extend(values)
        in_rows += rows
        served = level["latency"]["p50_ms"]
        engine_p50 = percentiles(alone["onnxruntime"])["p50_ms"]
        in_p50 = percentiles([p + n for _, p, n in rows])["p50_ms"]
        out.append({"service_p50_ms": served, "engine_alone_p50_ms": {k: percentiles(v)["p50_ms"] for k, v in alone.items()},
                    "in_process_p50_ms": in_p50, "service_over_engine": served / engine_p50,
                    "service_over_in_process": served / in_p50})
    return {"level": merge_levels(levels), "engine_alone": {k: dict(percentiles(v), threads=ENGINE_THREADS)
                                                            for k, v in engine_samples.items()},
            "in_process": inproc.summary(in_rows, in_wall), "rounds": out}


# --- the service -----------------------------------------------------------------------------

class Service:
    """`python -m classifier` in a subprocess, its output in a log file."""

    def __init__(self, bundle_dir, log_path, backend, threads=0, extra_env=None):
        self.port = free_port()
        self.log_path = log_path
        env = dict(os.environ, MODEL_DIR=os.path.abspath(bundle_dir), HOST="127.0.0.1", PORT=str(self.port),
                   BACKEND=backend, THREADS=str(threads))
        env.update(extra_env or {})
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "classifier"], env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self.returncode = None

    def wait_ready(self, timeout=180.0):
        url = "http://127.0.0.1:%d/readyz" % self.port
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError("the service exited with status %s before it was ready:\n%s"
                                 % (self.proc.returncode, self.log_tail()))
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - deadline + timeout
            except OSError:  # refused while starting, 503 (HTTPError) while loading and warming
                pass
            time.sleep(0.2)
        raise BenchError("the service did not answer 200 on %s within %.0f s:\n%s" % (url, timeout, self.log_tail()))

    def stop(self, timeout=40.0):
        """SIGTERM and wait; returns (exit status, seconds, needed SIGKILL)."""
        if self.proc.poll() is None:
            t = time.monotonic()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
                killed = False
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                killed = True
            seconds = time.monotonic() - t
        else:
            seconds, killed = 0.0, False
        self._log.close()
        self.returncode = self.proc.returncode
        return self.returncode, seconds, killed

    def log_tail(self, lines=15):
        return peer_harness.tail(self._log, self.log_path, lines)


def stopped_cleanly(exit_status, killed):
    """Whether Service.stop() found the service exiting by itself on SIGTERM, with status 0 (it drains,
    then exits normally: test_service_faults), not killed after the timeout."""
    return not killed and exit_status == 0


# --- load ------------------------------------------------------------------------------------

def run_level(port, reqs, concurrency, max_requests=800, seconds=20.0, protocol="service", service_pid=None, keep=False):
    """`concurrency` clients, each on its own keep-alive connection, send `reqs` (peer_harness.requests_for)
    in turn until max_requests are done or `seconds` pass; latency per request, throughput over
    the level's wall time."""
    lock = threading.Lock()
    state = {"issued": 0}
    latencies, names, server, errors = [], [], {"preprocess": [], "queue": [], "inference": [], "pipeline": []}, []
    start = time.perf_counter()
    deadline = start + seconds
    last = [start]

    def client(worker):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            while time.perf_counter() < deadline:
                with lock:
                    if state["issued"] >= max_requests:
                        return
                    n = state["issued"]
                    state["issued"] += 1
                name, path, body, headers = reqs[(n + worker) % len(reqs)]
                t0 = time.perf_counter()
                try:
                    conn.request("POST", path, body=body, headers=headers)
                    resp = conn.getresponse()
                    status, answer = resp.status, resp.read()
                except (OSError, http.client.HTTPException) as e:
                    problem, timings = "connection error: %r" % e, None
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                else:
                    problem, timings = peer_harness.check_answer(protocol, status, answer)
                t1 = time.perf_counter()
                with lock:
                    if problem:
                        errors.append(problem)
                        continue
                    latencies.append((t1 - t0) * 1000)
                    names.append(name)
                    last[0] = max(last[0], t1)
                    for k in server:
                        if timings.get(k) is not None:
                            server[k].append(float(timings[k]))
        finally:
            conn.close()

    crashed = []

    def guarded(worker):
        """A client that dies of a bug (not a failed request, which counts as an error) would
        otherwise leave the level short of requests without a word."""
        try:
            client(worker)
        except Exception as e:
            crashed.append(e)

    threads = [threading.Thread(target=guarded, args=(i,), daemon=True) for i in range(concurrency)]
    meter = CpuMeter(service_pid)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu = meter.stop()
    if crashed:
        raise BenchError("%d of %d clients failed: %r" % (len(crashed), concurrency, crashed[0]))
    wall = last[0] - start
    level = {"concurrency": concurrency, "requests": len(latencies), "errors": len(errors), "error_samples": errors[:5],
             "wall_s": wall, "throughput_rps": len(latencies) / wall if wall > 0 else 0.0,
             "latency": percentiles(latencies),
             "server_p50_ms": {k: percentiles(v)["p50_ms"] for k, v in server.items()},
             "per_photo_p50_ms": per_photo(names, latencies), "cpu": cpu}
    if keep:   # for merge_levels; not written out
        level["_raw"] = {"latencies": latencies, "names": names, "server": server, "errors": errors}
    return level


def merge_levels(levels):
    """One level from several runs of run_level(keep=True) at the same concurrency: samples pooled,
    wall times and CPU use added up."""
    lat, names, errors, server = [], [], [], {}
    for lvl in levels:
        raw = lvl.pop("_raw")
        lat += raw["latencies"]
        names += raw["names"]
        errors += raw["errors"]
        for k, v in raw["server"].items():
            server.setdefault(k, []).extend(v)
    wall = sum(lvl["wall_s"] for lvl in levels)
    cpus = [lvl["cpu"] for lvl in levels if lvl.get("cpu")]
    cpu = {k: sum(c[k] * lvl["wall_s"] for c, lvl in zip(cpus, levels)) / wall for k in cpus[0]} if cpus and wall else None
    return {"concurrency": levels[0]["concurrency"], "requests": len(lat), "errors": len(errors),
            "error_samples": errors[:5], "wall_s": wall, "throughput_rps": len(lat) / wall if wall > 0 else 0.0,
            "latency": percentiles(lat), "server_p50_ms": {k: percentiles(v)["p50_ms"] for k, v in server.items()},
            "per_photo_p50_ms": per_photo(names, lat), "cpu": cpu, "rounds": len(levels)}


def http_floor(port, requests=200):
    """p50 of GET /healthz (or /readyz) on one keep-alive connection: what HTTP alone costs here."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for path in ("/healthz", "/readyz"):
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            if resp.status == 200:
                break
        else:
            return None
        samples = []
        for _ in range(requests):
            t0 = time.perf_counter()
            conn.request("GET", path)
            conn.getresponse().read()
            samples.append((time.perf_counter() - t0) * 1000)
        return dict(percentiles(samples), path=path)
    finally:
        conn.close()


# --- main ------------------------------------------------------------------------------------

def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _env(text):
    if "=" not in text:
        raise argparse.ArgumentTypeError("KEY=VALUE")
    return tuple(text.split("=", 1))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="build/bench/bundle", help="made with `mbv3 init` + `export` if missing")
    p.add_argument("--concurrency", type=_positive, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=_positive, default=800, help="at most this many requests per level")
    p.add_argument("--rounds", type=_positive, default=8,
                   help="1 client: rounds of engine alone / in process / service, the level's requests split among them")
    p.add_argument("--seconds", type=float, default=20.0, help="at most this long per level of more than one client")
    p.add_argument("--threads", type=int, default=0, help="the service's THREADS (0: its default)")
    p.add_argument("--backend", default="auto", help="the service's BACKEND (auto: what it picks on this host)")
    p.add_argument("--compare-backends", action="store_true",
                   help="also serve with the other CPU backend, at 1 client and the most")
    p.add_argument("--peers", nargs="*", default=list(peer_harness.PEERS), choices=list(peer_harness.PEERS),
                   metavar="PEER",
                   help="peers to run at 1 client and the most (default: %s; none: no argument)"
                   % ", ".join(peer_harness.PEERS))
    p.add_argument("--peer-venvs", default="build/peers", help="where the peers' virtual environments live")
    p.add_argument("--env", type=_env, action="append", default=[], metavar="KEY=VALUE",
                   help="a service setting for this run (A/B of settings), e.g. --env ONE_HOP_MAX_PIXELS=0")
    p.add_argument("--max-batch", type=_positive, help="service MAX_BATCH (default: the service's)")
    p.add_argument("--max-delay-ms", type=float, help="service MAX_DELAY_MS (default: the service's)")
    p.add_argument("--json", default="build/bench/serve.json")
    p.add_argument("--plot", default="build/bench/serve.png")
    return p.parse_args(argv)


def serve(bundle_dir, photos, backend, levels, args, extra, log_dir, engines):
    """The service with `backend` at each concurrency of `levels`; one client in rounds interleaved
    with the engine alone (`engines`, an EngineAlone) and the same work in process."""
    inproc = None
    if 1 in levels:   # the references are measured only beside one client
        log("in process (%s): loading ..." % backend)
        inproc = InProcess(bundle_dir, photos, backend, args.threads)
    service = Service(bundle_dir, os.path.join(log_dir, "serve-service-%s.log" % backend), backend, args.threads, extra)
    reqs = peer_harness.requests_for("service", photos)
    out, floor, lone = [], None, None
    try:
        ready = service.wait_ready()
        log("service (%s) ready on port %d after %.1f s" % (backend, service.port, ready))
        floor = http_floor(service.port)
        warm = run_level(service.port, reqs, max(levels), 4 * max(levels), args.seconds)
        if warm["errors"]:
            raise BenchError("warm-up requests failed: %s" % warm["error_samples"])
        for c in levels:
            if c == 1:
                log("service (%s), 1 client: %d rounds of the engine alone, in process, the service ..." % (
                    backend, args.rounds))
                lone = lone_rounds(engines, inproc, service.port, reqs, args.rounds, max(2, args.requests // args.rounds),
                                   service.proc.pid)
                out.append(lone["level"])
                continue
            log("service (%s), concurrency %d ..." % (backend, c))
            out.append(run_level(service.port, reqs, c, args.requests, args.seconds, service_pid=service.proc.pid))
    finally:
        if inproc:
            inproc.close()
        stopped = service.stop()
        log("service stopped by SIGTERM: exit status %s after %.1f s%s" % (stopped[0], stopped[1],
                                                                         ", needed SIGKILL" if stopped[2] else ""))
    return {"backend": backend, "in_process": lone and lone["in_process"], "engine_alone": lone and lone["engine_alone"],
            "rounds": lone["rounds"] if lone else [], "levels": out, "http_floor": floor,
            "exit_status": stopped[0], "stop_seconds": stopped[1], "killed": stopped[2]}


def main(argv=None):
    args = parse_args(argv)
    for out in (args.json, args.plot):
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    log_dir = os.path.dirname(os.path.abspath(args.json))
    bundle_dir = ensure_bundle(args.bundle)
    from mbv3 import bundle
    from classifier import backends
    meta = bundle.load(bundle_dir).metadata
    photos = sample_photos()
    log("bundle %s (%s, input %s); photos: %s" % (bundle_dir, meta["name"], meta["input"]["shape"],
                                                 ", ".join("%s %d KB" % (n, len(b) // 1024) for n, b in photos)))
    primary = backends.cpu_choice()[0] if args.backend == "auto" else args.backend
    extra = dict(args.env)
    if args.max_batch:
        extra["MAX_BATCH"] = str(args.max_batch)
    if args.max_delay_ms is not None:
        extra["MAX_DELAY_MS"] = str(args.max_delay_ms)
    top = max(args.concurrency)
    edges = sorted({1, top})
    log("preprocessing alone ...")
    prep_alone = preprocessing_alone(bundle_dir, photos)
    engines = EngineAlone(bundle_dir, photos)
    runs = [serve(bundle_dir, photos, primary, args.concurrency, args, extra, log_dir, engines)]
    if args.compare_backends:
        for other in (b for b in backends.CPU_PREFERENCE if b != primary):
            runs.append(serve(bundle_dir, photos, other, edges, args, extra, log_dir, engines))
    peers = {}
    for name in args.peers:
        python = peer_harness.python_for(name, args.peer_venvs)
        peers[name] = peer_harness.run_peer(name, python, bundle_dir, photos, edges, primary, ENGINE_THREADS, run_level,
                                            log_dir, max_requests=args.requests, seconds=args.seconds)
    engine = runs[0]["engine_alone"] or {k: dict(percentiles(v), threads=ENGINE_THREADS)
                                         for k, v in engines.measure(runs=200).items()}
    settings = "BACKEND=%s %s" % (primary, " ".join("%s=%s" % kv for kv in sorted(extra.items())) or "defaults")
    result = {"bundle": bundle_dir, "model": meta["name"], "input_shape": meta["input"]["shape"], "cpus": os.cpu_count(),
              "load_average": os.getloadavg(), "photos": [{"name": n, "bytes": len(b)} for n, b in photos],
              "backend": primary, "settings": settings, "engine_alone": engine, "preprocessing_alone": prep_alone,
              "services": runs,
              "in_process": runs[0]["in_process"], "levels": runs[0]["levels"], "http_floor": runs[0]["http_floor"],
              "peers": peers}
    result["ratios"] = ratios(result)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    plot(result, args.plot)
    print(table(result))
    measured = [run["in_process"] for run in runs if run["in_process"]] + [lvl for run in runs for lvl in run["levels"]]
    busy = [m["cpu"]["other_cores"] for m in measured if m.get("cpu")]
    if busy and max(busy) > 0.25:
        log("note: other processes used up to %.1f of the %d CPU cores during the measurements: these figures are "
            "noisy; rerun on a quiet machine" % (max(busy), os.cpu_count() or 0))
    log("wrote %s and %s" % (args.json, args.plot))
    failures = sum(lvl["errors"] for run in runs for lvl in run["levels"])
    failures += sum(lvl["errors"] for levels in peers.values() for lvl in levels)
    unclean = [run for run in runs if not stopped_cleanly(run["exit_status"], run["killed"])]
    if failures:
        log("serve_bench: error: %d requests failed, e.g. %s" % (failures, [
            lvl["error_samples"] for run in runs for lvl in run["levels"] if lvl["errors"]] + [
            lvl["error_samples"] for levels in peers.values() for lvl in levels if lvl["errors"]]))
    for run in unclean:
        log("serve_bench: error: the service (%s) did not stop cleanly on SIGTERM (exit status %s%s)"
            % (run["backend"], run["exit_status"], ", killed after the timeout" if run["killed"] else ""))
    return 1 if failures or unclean else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BenchError, peer_harness.PeerError) as e:
        print("serve_bench: error: %s" % e, file=sys.stderr)
        sys.exit(1)
