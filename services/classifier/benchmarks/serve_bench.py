"""`make bench-serve`: the HTTP service under load, next to the same bundle run in this process.

The service runs as a subprocess (`python -m classifier`, ONNX Runtime backend) and classifies real
JPEG photos (matplotlib's sample photos, re-encoded at a few crops and sizes) from 1, 8 and 32
concurrent keep-alive clients. The in-process reference decodes, preprocesses and runs the same
images one at a time through ONNX Runtime, so the ratios say what HTTP, the queue and the
micro-batcher cost at one client and what batching buys at many, on whatever machine this runs.
No TensorFlow here: a missing bundle is made by the `mbv3` command in a subprocess.
Exit status is 1 only on errors (failed requests, a service that will not start or stop);
a missed goal is printed, not failed.
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np

LATENCY_GOAL = 1.25   # service p50 at concurrency 1 / in-process p50: at most
SCALING_GOAL = 1.3    # service throughput at the highest concurrency / at concurrency 1: at least


class BenchError(RuntimeError):
    pass


def log(msg):
    print(msg, file=sys.stderr, flush=True)


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


def sample_photos(quality=90):
    """[(name, JPEG bytes)]: distinct real photos from matplotlib's sample data, cropped, resized and
    re-encoded so the service decodes a realistic mix of sizes."""
    from matplotlib import cbook
    from PIL import Image

    def load(name):
        with Image.open(cbook.get_sample_data(name, asfileobj=False)) as img:
            if img.mode == "RGBA":  # flatten onto white, as a browser would show it
                bg = Image.new("RGB", img.size, (255, 255, 255))
                bg.paste(img, mask=img.split()[3])
                return bg
            return img.convert("RGB")

    hopper, present = load("grace_hopper.jpg"), load("Minduka_Present_Blue_Pack.png")
    variants = [
        ("hopper-512x600", hopper),
        ("hopper-face-256", hopper.crop((120, 40, 376, 296))),
        ("hopper-centre-400", hopper.crop((56, 100, 456, 500))),
        ("hopper-224x262", hopper.resize((224, 262), Image.BILINEAR)),
        ("hopper-1024x1200", hopper.resize((1024, 1200), Image.BICUBIC)),
        ("present-256", present.resize((256, 256), Image.BICUBIC)),
    ]
    photos = []
    for name, img in variants:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        photos.append((name, buf.getvalue()))
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


def ratios(result):
    """Service p50 at concurrency 1 over the in-process p50; throughput at the top level over level 1."""
    levels = {lvl["concurrency"]: lvl for lvl in result["levels"]}
    ref = result["reference"]
    one, top = levels.get(1), levels[max(levels)]
    latency = one["latency"]["p50_ms"] / ref["latency"]["p50_ms"] if one else None
    scaling = top["throughput_rps"] / one["throughput_rps"] if one and one["throughput_rps"] else None
    return {
        "latency_p50_c1_over_in_process": latency, "latency_goal_max": LATENCY_GOAL,
        "latency_goal_met": latency is not None and latency <= LATENCY_GOAL,
        "throughput_c%d_over_c1" % top["concurrency"]: scaling, "throughput_goal_min": SCALING_GOAL,
        "throughput_goal_met": scaling is not None and scaling >= SCALING_GOAL,
    }


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


# --- the in-process reference ----------------------------------------------------------------

def reference(bundle_dir, photos, threads=0, seconds=10.0, max_runs=400, warmup=5):
    """Per image, in this process: decode + eval preprocessing + ONNX Runtime at batch 1."""
    from mbv3 import numpy_preprocess, onnx_classifier
    clf = onnx_classifier.OnnxClassifier(bundle_dir, threads)
    prep = clf.bundle.metadata["preprocessing"]

    def one(data):
        t0 = time.perf_counter()
        x = numpy_preprocess.eval_transform(numpy_preprocess.decode(data), prep["size"], prep)[np.newaxis]
        t1 = time.perf_counter()
        clf.logits(x)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    for i in range(warmup):
        one(photos[i % len(photos)][1])
    total, pre, inf, names = [], [], [], []
    meter = CpuMeter()
    start = time.perf_counter()
    while len(total) < max_runs and time.perf_counter() - start < seconds:
        name, data = photos[len(total) % len(photos)]
        p, n = one(data)
        pre.append(p * 1000)
        inf.append(n * 1000)
        total.append((p + n) * 1000)
        names.append(name)
    wall = time.perf_counter() - start
    return {"what": "decode + preprocess + ONNX Runtime batch 1, in this process", "threads": threads or "ort-default",
            "latency": percentiles(total), "throughput_rps": len(total) / wall, "wall_s": wall,
            "parts_p50_ms": {"decode_preprocess": percentiles(pre)["p50_ms"], "inference": percentiles(inf)["p50_ms"]},
            "per_photo_p50_ms": per_photo(names, total), "cpu": meter.stop()}


# --- the service -----------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """`python -m classifier` in a subprocess, its output in a log file."""

    def __init__(self, bundle_dir, log_path, threads=0, extra_env=None):
        self.port = free_port()
        self.log_path = log_path
        env = dict(os.environ, MODEL_DIR=os.path.abspath(bundle_dir), HOST="127.0.0.1", PORT=str(self.port),
                   BACKEND="onnxruntime", THREADS=str(threads))
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
        self._log.flush()
        with open(self.log_path, "rb") as f:
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])


# --- load ------------------------------------------------------------------------------------

def check_answer(status, body):
    """(None, server timings) for a well-formed 200 answer to one image, else (what is wrong, None)."""
    if status != 200:
        return "HTTP %s: %s" % (status, body[:200].decode("utf-8", "replace")), None
    try:
        doc = json.loads(body)
        result = doc["results"][0]
        result["predictions"][0]["label"], doc["model"]["name"]
        return None, dict(result["timings_ms"])
    except (ValueError, KeyError, IndexError, TypeError) as e:
        return "malformed answer (%r): %s" % (e, body[:200].decode("utf-8", "replace")), None


def run_level(port, photos, concurrency, max_requests, seconds, top_k=5, service_pid=None):
    """`concurrency` clients, each on its own keep-alive connection, send photos until max_requests
    are done or `seconds` pass; latency per request, throughput over the level's wall time."""
    lock = threading.Lock()
    state = {"issued": 0}
    latencies, names, server, errors = [], [], {"preprocess": [], "queue": [], "inference": []}, []
    path = "/classify?top_k=%d" % top_k
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
                name, data = photos[(n + worker) % len(photos)]
                t0 = time.perf_counter()
                try:
                    conn.request("POST", path, body=data, headers={"Content-Type": "image/jpeg"})
                    resp = conn.getresponse()
                    status, body = resp.status, resp.read()
                except (OSError, http.client.HTTPException) as e:
                    problem, timings = "connection error: %r" % e, None
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                else:
                    problem, timings = check_answer(status, body)
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

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(concurrency)]
    meter = CpuMeter(service_pid)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu = meter.stop()
    wall = last[0] - start
    return {"concurrency": concurrency, "requests": len(latencies), "errors": len(errors), "error_samples": errors[:5],
            "wall_s": wall, "throughput_rps": len(latencies) / wall if wall > 0 else 0.0,
            "latency": percentiles(latencies),
            "server_p50_ms": {k: percentiles(v)["p50_ms"] for k, v in server.items()},
            "per_photo_p50_ms": per_photo(names, latencies), "cpu": cpu}


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


# --- report ----------------------------------------------------------------------------------

def table(result):
    ref, r = result["reference"], result["ratios"]
    cores = lambda m: "-" if not m.get("cpu") else "%.2f / %.1f / %.1f" % (
        m["cpu"]["client_cores"], m["cpu"]["service_cores"], m["cpu"]["other_cores"])
    rows = ["%-22s %8s %8s %8s %8s %10s   %-16s   %s" % ("", "p50 ms", "p90 ms", "p99 ms", "requests", "req/s",
                                                    "CPU cores: this", "server p50 ms: preprocess / queue / inference"),
            "%-22s %8s %8s %8s %8s %10s   %-16s" % ("", "", "", "", "", "", "/ service / other")]
    lat = ref["latency"]
    rows.append("%-22s %8.2f %8.2f %8.2f %8d %10.1f   %-16s   %s" % (
        "in-process reference", lat["p50_ms"], lat["p90_ms"], lat["p99_ms"], lat["n"], ref["throughput_rps"], cores(ref),
        "%.2f / - / %.2f" % (ref["parts_p50_ms"]["decode_preprocess"], ref["parts_p50_ms"]["inference"])))
    for lvl in result["levels"]:
        lat, s = lvl["latency"], lvl["server_p50_ms"]
        fmt = lambda v: "-" if v is None else "%.2f" % v
        rows.append("%-22s %8.2f %8.2f %8.2f %8d %10.1f   %-16s   %s / %s / %s%s" % (
            "service, concurrency %d" % lvl["concurrency"], lat["p50_ms"], lat["p90_ms"], lat["p99_ms"],
            lvl["requests"], lvl["throughput_rps"], cores(lvl), fmt(s["preprocess"]), fmt(s["queue"]), fmt(s["inference"]),
            "   (%d errors)" % lvl["errors"] if lvl["errors"] else ""))
    scaling_key = [k for k in r if k.startswith("throughput_c")][0]
    one = [lvl for lvl in result["levels"] if lvl["concurrency"] == 1]
    if one:
        rows.append("")
        rows.append("per photo, p50 ms, in-process -> service at concurrency 1:")
        svc = one[0]["per_photo_p50_ms"]
        rows.extend("  %-20s %7.2f -> %7.2f" % (name, ms, svc.get(name) or float("nan"))
                    for name, ms in ref["per_photo_p50_ms"].items())
    if result.get("http_floor"):
        rows.append("HTTP alone (GET %s on one connection): p50 %.2f ms" % (result["http_floor"]["path"],
                                                                           result["http_floor"]["p50_ms"]))
    rows.append("")
    rows.append("latency:    service p50 at concurrency 1 / in-process p50 = %.2f (goal <= %.2f): %s" % (
        r["latency_p50_c1_over_in_process"], LATENCY_GOAL, "met" if r["latency_goal_met"] else "MISSED"))
    rows.append("throughput: service req/s at concurrency %s / at concurrency 1 = %.2f (goal >= %.2f): %s" % (
        scaling_key[len("throughput_c"):-len("_over_c1")], r[scaling_key], SCALING_GOAL,
        "met" if r["throughput_goal_met"] else "MISSED"))
    return "\n".join(rows)


def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    levels = result["levels"]
    conc = [lvl["concurrency"] for lvl in levels]
    ref = result["reference"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, style in (("p50_ms", "o-"), ("p90_ms", "s--"), ("p99_ms", "^:")):
        ax1.plot(conc, [lvl["latency"][key] for lvl in levels], style, label="service " + key[:3])
    ax1.axhline(ref["latency"]["p50_ms"], color="k", lw=1, label="in-process p50 (batch 1)")
    ax1.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="latency per request (ms)",
            title="latency")
    ax2.plot(conc, [lvl["throughput_rps"] for lvl in levels], "o-", label="service")
    ax2.axhline(ref["throughput_rps"], color="k", lw=1, label="in-process, one image at a time")
    ax2.set(xscale="log", xlabel="concurrent clients", ylabel="images / s", title="throughput")
    ax2.set_ylim(0, 1.15 * max([ref["throughput_rps"]] + [lvl["throughput_rps"] for lvl in levels]))
    for ax in (ax1, ax2):
        ax.set_xticks(conc)
        ax.set_xticklabels([str(c) for c in conc])
        ax.minorticks_off()
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("%s via HTTP (%s) vs in-process ONNX Runtime" % (result["model"], result["service"]["settings"]), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main ------------------------------------------------------------------------------------

def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="build/bench/bundle", help="made with `mbv3 init` + `export` if missing")
    p.add_argument("--concurrency", type=_positive, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=_positive, default=800, help="at most this many requests per level")
    p.add_argument("--seconds", type=float, default=20.0, help="at most this long per level (and for the reference)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads, both sides (0: its default)")
    p.add_argument("--max-batch", type=_positive, help="service MAX_BATCH (default: the service's)")
    p.add_argument("--max-delay-ms", type=float, help="service MAX_DELAY_MS (default: the service's)")
    p.add_argument("--json", default="build/bench/serve.json")
    p.add_argument("--plot", default="build/bench/serve.png")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    for out in (args.json, args.plot):
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    bundle_dir = ensure_bundle(args.bundle)
    from mbv3 import bundle
    meta = bundle.load(bundle_dir).metadata
    photos = sample_photos()
    log("bundle %s (%s, input %s); %d real photos: %s" % (bundle_dir, meta["name"], meta["input"]["shape"], len(photos),
                                                       ", ".join("%s %d KB" % (n, len(b) // 1024) for n, b in photos)))
    log("in-process reference ...")
    ref = reference(bundle_dir, photos, args.threads, seconds=args.seconds, max_runs=args.requests)
    extra = {}
    if args.max_batch:
        extra["MAX_BATCH"] = str(args.max_batch)
    if args.max_delay_ms is not None:
        extra["MAX_DELAY_MS"] = str(args.max_delay_ms)
    log_path = os.path.splitext(os.path.abspath(args.json))[0] + "-service.log"
    service = Service(bundle_dir, log_path, args.threads, extra)
    levels, stopped, floor = [], None, None
    try:
        ready = service.wait_ready()
        log("service ready on port %d after %.1f s (log: %s)" % (service.port, ready, log_path))
        floor = http_floor(service.port)
        warm = run_level(service.port, photos, max(args.concurrency), 4 * max(args.concurrency), args.seconds)
        if warm["errors"]:
            raise BenchError("warm-up requests failed: %s" % warm["error_samples"])
        for c in args.concurrency:
            log("concurrency %d ..." % c)
            levels.append(run_level(service.port, photos, c, args.requests, args.seconds, service_pid=service.proc.pid))
    finally:
        stopped = service.stop()
        log("service stopped by SIGTERM: exit status %s after %.1f s%s" % (stopped[0], stopped[1],
                                                                         ", needed SIGKILL" if stopped[2] else ""))
    settings = "MAX_BATCH=%s MAX_DELAY_MS=%s THREADS=%s" % (extra.get("MAX_BATCH", "default"),
                                                          extra.get("MAX_DELAY_MS", "default"), args.threads)
    result = {"bundle": bundle_dir, "model": meta["name"], "input_shape": meta["input"]["shape"], "cpus": os.cpu_count(),
              "photos": [{"name": n, "bytes": len(b)} for n, b in photos],
              "service": {"command": "python -m classifier", "backend": "onnxruntime", "settings": settings,
                          "exit_status": stopped[0], "stop_seconds": stopped[1], "killed": stopped[2]},
              "http_floor": floor, "reference": ref, "levels": levels}
    result["ratios"] = ratios(result)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    plot(result, args.plot)
    print(table(result))
    busy = [m["cpu"]["other_cores"] for m in [ref] + levels if m.get("cpu")]
    if busy and max(busy) > 0.25:
        log("note: other processes used up to %.1f of the %d CPU cores during the measurements: these figures are "
            "noisy; rerun on a quiet machine" % (max(busy), os.cpu_count() or 0))
    log("wrote %s and %s" % (args.json, args.plot))
    failures = sum(lvl["errors"] for lvl in levels)
    clean = not stopped[2] and stopped[0] in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM once shut down
    if failures:
        log("serve_bench: error: %d requests failed, e.g. %s" % (failures, [lvl["error_samples"] for lvl in levels]))
    if not clean:
        log("serve_bench: error: the service did not stop cleanly on SIGTERM (exit status %s%s; log %s)"
            % (stopped[0], ", killed after the timeout" if stopped[2] else "", log_path))
    return 1 if failures or not clean else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print("serve_bench: error: %s" % e, file=sys.stderr)
        sys.exit(1)
