"""`make bench-serve`: the HTTP service under load, next to the same work in this process, the
engine alone, and the same work behind other Python servers.

The service runs as a subprocess (`python -m classifier`) and classifies real 640x427 JPEG photos
(scikit-learn's sample images, sent as they are) from 1, 8 and 32 concurrent keep-alive clients,
once per precision (PRECISION=f32 and each variant the bundle records that this CPU runs: bf16,
int8). References, measured in the same run:
- the engine alone: ONNX Runtime at batch 1 and OpenVINO at batch 1 and 8 in each precision, 2
  threads, on the precision's model file, compiled as mbv3.precision.openvino_config says;
- in process: the service's own decode, preprocessing and backend, one image at a time, no HTTP;
- the ceiling: in process, the same decode + preprocessing on 2 threads feeding batch-8 inference,
  pipelined: the images/s no server on this machine reaches with this engine and precision;
- peers (peer_harness.py): the same preprocessing and engine behind a bare ASGI app, LitServe
  (batching on at 32 clients) and KServe's ModelServer, at 1 and 32 clients, each in its own venv,
  at f32 and at the best variant.
The ratios say what the service adds to the model at one client, what batching buys at many and
what each precision buys, on whatever machine this runs. No TensorFlow here: a missing bundle is made by the `mbv3` command
in a subprocess. Exit status is 1 only on errors (failed requests, a server that will not start
or stop); a missed goal is printed, not failed. The report (ratios, floors, table, plot) is
serve_report.py.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import queue
import threading
import time
import urllib.request

import numpy as np

import bench_bundle
import peer_harness
from peer_harness import free_port, log
from serve_report import best_peer, markdown, plot, ratios, table

ENGINE_THREADS = 2   # the engine-alone reference: the "ONNX Runtime alone, batch 1, 2 threads"
F32 = "f32"
MODEL_BATCH = 8      # the engine alone's batch and the ceiling's: the service's MAX_BATCH default
SIDE_BY_SIDE_ROUNDS = 4


class BenchError(RuntimeError):
    pass


# --- inputs ----------------------------------------------------------------------------------

def ensure_bundle(path):
    """The benchmark bundle, made by bench_bundle.py (`make bench-bundle`) when missing; returns
    (path, {precision: why `mbv3 quantize` did not record it})."""
    try:
        skipped = bench_bundle.ensure(path)
    except bench_bundle.BundleError as e:
        raise BenchError("making the benchmark bundle: %s" % e)
    return path, skipped


def cpu_capabilities():
    """(OpenVINO's OPTIMIZATION_CAPABILITIES for the CPU, the CPU's name); ([], name) without OpenVINO."""
    from mbv3 import precision as mp
    name = mp.cpu_name()
    try:
        import openvino as ov
        core = ov.Core()
        return list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")), str(
            core.get_property("CPU", "FULL_DEVICE_NAME")) or name
    except Exception:   # not installed, or no CPU plugin
        return [], name


def choose_precisions(info, engine, capabilities, requested=None):
    """([precisions to measure], {precision: why not}): f32 and, by default, every variant `info`
    (the bundle's ModelInfo) records for `engine` whose model is current and that the CPU runs
    natively (mbv3.precision.NATIVE's capability in `capabilities`); `requested` names them instead
    (f32 always runs, first)."""
    from mbv3 import precision as mp
    from mbv3.bundle import PRECISIONS
    wanted = [p for p in (requested or [F32] + [p for p in PRECISIONS if p != F32]) if p != F32]
    run, why = [F32], {}
    for p in wanted:
        native = mp.NATIVE.get(p)
        if info.variant(p, engine) is None:
            why[p] = "the bundle records no %s variant validated on %s for its current model" % (p, engine)
        elif native is None:
            why[p] = "this mbv3 names no native capability for %s (mbv3.precision.NATIVE)" % p
        elif engine == "openvino" and native not in capabilities:
            why[p] = "the CPU has no native %s (OPTIMIZATION_CAPABILITIES: %s)" % (p, ", ".join(capabilities) or "?")
        else:
            run.append(p)
    return run, why


def model_file(loaded, precision, engine="openvino"):
    """The precision's model file in the bundle: its variant's own file (int8), else model.onnx."""
    from mbv3 import bundle
    return loaded.file(loaded.info.model_file(precision, engine) or bundle.ONNX)


def openvino_runner(path, precision, threads, batch, image_shape):
    """run(x) of `path` compiled by OpenVINO's CPU plugin for a static `batch`, with the configuration
    the service and `mbv3 quantize` use for `precision` (mbv3.precision.openvino_config)."""
    import openvino as ov
    from mbv3 import precision as mp
    core = ov.Core()
    model = core.read_model(path)
    model.reshape([batch] + list(image_shape))
    request = core.compile_model(model, "CPU", mp.openvino_config(precision, threads)).create_infer_request()
    return lambda x: request.infer({0: x})
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


def engine_key(engine, precision, batch):
    """The name of an engine-alone measurement: "onnxruntime" and "openvino" for float32 at batch 1
    (the 1-client references), "openvino int8 b8" and the like for the others."""
    if precision == F32 and batch == 1:
        return engine
    return "%s %s b%d" % (engine, precision, batch)


class EngineAlone:
    """The model alone with ENGINE_THREADS threads on a preprocessed photo: ONNX Runtime at batch 1 in
    float32 (the reference of the service / engine ratio) and OpenVINO at batch 1 and MODEL_BATCH in
    each precision, on the precision's file and with its compile configuration."""

    def __init__(self, bundle_dir, photos, precisions=(F32,), threads=ENGINE_THREADS):
        from mbv3 import bundle, fast_preprocess
        loaded = bundle.load(bundle_dir)
        x = fast_preprocess.reference_input(photos[0][1], loaded.preprocessing)[np.newaxis]
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(loaded.file(bundle.ONNX), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        self.runners = {engine_key("onnxruntime", F32, 1): (1, lambda: session.run(None, {name: x}))}
        shape = x.shape[1:]
        for precision in precisions:
            path = model_file(loaded, precision)
            for batch in (1, MODEL_BATCH):
                xb = np.ascontiguousarray(np.repeat(x, batch, axis=0))
                try:
                    run = openvino_runner(path, precision, threads, batch, shape)
                except Exception as e:   # openvino not installed: the ONNX Runtime reference is the one that counts
                    log("engine alone: no OpenVINO %s at batch %d (%s)" % (precision, batch, e))
                    continue
                self.runners[engine_key("openvino", precision, batch)] = (batch, lambda run=run, xb=xb: run(xb))

    def measure(self, keys=None, runs=30, batch_runs=10, warmup=3):
        """{key: [ms per run]} for `keys` (None: all), one after the other, each warmed up first;
        batched runs take longer, so fewer of them."""
        samples = {}
        for key in keys or list(self.runners):
            if key not in self.runners:
                continue
            batch, run = self.runners[key]
            for _ in range(warmup):
                run()
            samples[key] = []
            for _ in range(runs if batch == 1 else batch_runs):
                t = time.perf_counter()
                run()
                samples[key].append((time.perf_counter() - t) * 1000)
        return samples


def model_only_rounds(engines, precisions, rounds):
    """OpenVINO alone in every precision at batch 1 and MODEL_BATCH, interleaved in `rounds` (the
    order turned each round): per precision the pooled p50s, batch-MODEL_BATCH images/s, and the
    median and range of the rounds' images/s over float32's at that batch (the goal's ratio)."""
    keys = [engine_key("openvino", p, b) for p in precisions for b in (1, MODEL_BATCH)]
    keys = [k for k in keys if k in engines.runners]
    pooled, per_round = {k: [] for k in keys}, []
    for r in range(rounds):
        turn = r % len(keys) if keys else 0
        got = engines.measure(keys[turn:] + keys[:turn])
        for k, v in got.items():
            pooled[k] += v
        per_round.append({p: percentiles(got[engine_key("openvino", p, MODEL_BATCH)])["p50_ms"]
                          for p in precisions if engine_key("openvino", p, MODEL_BATCH) in got})
    out = {}
    for p in precisions:
        one, many = engine_key("openvino", p, 1), engine_key("openvino", p, MODEL_BATCH)
        if many not in pooled:
            continue
        b8 = percentiles(pooled[many])
        row = {"engine": "openvino", "threads": ENGINE_THREADS, "batch": MODEL_BATCH,
               "batch1": percentiles(pooled.get(one, [])), "batch8": b8,
               "images_per_s": 1000.0 * MODEL_BATCH / b8["p50_ms"] if b8["p50_ms"] else None}
        ratios = [r[F32] / r[p] for r in per_round if r.get(F32) and r.get(p)]
        if ratios:
            row["over_f32"] = float(np.median(ratios))
            row["over_f32_range"] = [float(min(ratios)), float(max(ratios))]
        out[p] = row
    return {"rounds": rounds, "precisions": out}


class Ceiling:
    """The most images/s the service's own arrangement gives on this machine: in this process, no HTTP,
    the service's decode + preprocessing (PREPROCESSING=auto) of the same photos on as many threads as
    the service decodes on, feeding batch-MODEL_BATCH runs on the service's workers (its backends as
    the service builds them: the Plan's CPU workers, each its own models and thread, with the Plan's
    threads and pinning), pipelined (batches run while the next images decode). Service / ceiling
    says how much of that the HTTP service gets."""

    def __init__(self, bundle_dir, photos, backend, threads, precision, decoders):
        """backend, threads, precision: the service's BACKEND, THREADS, PRECISION; decoders: its
        decoding threads."""
        from mbv3 import bundle, fast_preprocess
        loaded = bundle.load(bundle_dir)
        self.prep, self.photos, self.decoders = loaded.preprocessing, photos, decoders
        self.transform, described = fast_preprocess.select("auto")
        planned = service_plan(backend, threads, loaded.info, precision)
        self.backends = [service_backend(loaded, planned) for _ in range(planned.cpu_workers)]
        self.runs = [b.run for b in self.backends]
        self.what = ("decode + preprocess (%s) on %d threads, %s %s batch %d on %d worker(s) of %d thread(s), "
                     "pipelined" % (described, decoders, planned.backend, planned.precision.name, MODEL_BATCH,
                                    planned.cpu_workers, planned.threads))
        for run in self.runs:
            run(np.zeros((MODEL_BATCH, self.prep.height, self.prep.width, 3), np.float32))

    def measure(self, images, seconds):
        """Images/s over at most `images` images (whole batches) or `seconds`."""
        batches = max(2, images // MODEL_BATCH)
        todo = queue.Queue(maxsize=4 * MODEL_BATCH)
        lock, state = threading.Lock(), {"next": 0, "stop": False}

        def decode():
            while True:
                with lock:
                    n = state["next"]
                    state["next"] += 1
                    # once stopped, only the images of batches already taken
                    if n >= (state["batches"] if state["stop"] else batches) * MODEL_BATCH:
                        return
                todo.put(self.transform(self.photos[n % len(self.photos)][1], self.prep))

        counted = [0]
        state["batches"] = 0

        def infer(run):
            while True:
                with lock:
                    if state["stop"] or state["batches"] >= batches:
                        return
                    state["batches"] += 1
                run(np.stack([todo.get(timeout=60) for _ in range(MODEL_BATCH)]))
                with lock:
                    counted[0] += 1
                    if counted[0] >= 2 and time.perf_counter() > deadline:
                        state["stop"] = True

        workers = [threading.Thread(target=decode, daemon=True) for _ in range(self.decoders)]
        runners = [threading.Thread(target=infer, args=(run,), daemon=True) for run in self.runs]
        start = time.perf_counter()
        deadline = start + seconds
        for w in workers + runners:
            w.start()
        try:
            for r in runners:
                r.join()
        finally:
            wall = time.perf_counter() - start
            done = counted[0]
            state["stop"] = True
            while any(w.is_alive() for w in workers):   # let blocked decoders finish their put
                try:
                    todo.get_nowait()
                except queue.Empty:
                    time.sleep(0.001)
        return {"what": self.what, "images": done * MODEL_BATCH, "wall_s": wall,
                "images_per_s": done * MODEL_BATCH / wall if wall > 0 else 0.0}


def service_plan(backend, threads, info=None, precision="f32"):
    """The service's Plan for BACKEND, THREADS=`threads` (0: its default), PRECISION=`precision` and
    its default CPU_WORKERS: the one place that asks the service's backends how it would run."""
    from classifier import backends
    from classifier.settings import available_cpus
    return backends.plan(backend=backend, device_ids=(0,), cpu_workers=0, threads=threads, max_batch=MODEL_BATCH,
                         cpus=available_cpus(), info=info, precision=precision)


def service_backend(loaded, planned):
    """One of the service's workers' backends for `loaded` as the service builds it from `planned`
    (service_plan; run_alone is what a lone request runs)."""
    from classifier import backends
    return backends.create(loaded, backend=planned.backend, device_id=0, threads=planned.threads,
                           alone_threads=planned.alone_threads, max_batch=MODEL_BATCH, precision=planned.precision)


class InProcess:
    """Per image, in this process: the service's decode + preprocessing (PREPROCESSING=auto) and its
    backend (built as the service builds it) at batch 1: the service's work without HTTP or queues."""

    def __init__(self, bundle_dir, photos, backend, threads=0, warmup=5, precision=F32):
        from mbv3 import bundle, fast_preprocess
        loaded = bundle.load(bundle_dir)
        self.prep, self.photos = loaded.preprocessing, photos
        self.transform, described = fast_preprocess.select("auto")
        self.engine = service_backend(loaded, service_plan(backend, threads, loaded.info, precision))
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
            self.engine.run_alone(x)
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


def lone_rounds(engines, inproc, port, reqs, rounds, per_round, service_pid, precision=F32):
    """One client, interleaved with its references: each round measures the engine alone, the same
    work in process and then the service (whose engine sits idle meanwhile, as the references' do
    while it runs), so all three see the same machine, and each round gives its own ratios. On a
    shared machine whose speed drifts by 2x within minutes, a reference measured at another moment
    than the service moves a ratio more than anything the service does.
    The engines alone: ONNX Runtime in float32 and OpenVINO in `precision`, at batch 1.
    Returns the pooled 1-client level, the pooled references and the rounds' p50s and ratios."""
    levels, engine_samples, in_rows, in_wall, out = [], {}, [], 0.0, []
    keys = {engine_key("onnxruntime", F32, 1): "onnxruntime", engine_key("openvino", precision, 1): "openvino"}
    for _ in range(rounds):
        alone = {keys[k]: v for k, v in engines.measure(list(keys)).items()}
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
    p.add_argument("--bundle", default="build/bench/bundle", help="made by bench_bundle.py if missing")
    p.add_argument("--concurrency", type=_positive, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=_positive, default=800, help="at most this many requests per level")
    p.add_argument("--rounds", type=_positive, default=8,
                   help="1 client: rounds of engine alone / in process / service, the level's requests split among them")
    p.add_argument("--seconds", type=float, default=20.0, help="at most this long per level of more than one client")
    p.add_argument("--threads", type=int, default=0, help="the service's THREADS (0: its default)")
    p.add_argument("--backend", default="auto", help="the service's BACKEND (auto: what it picks on this host)")
    p.add_argument("--precisions", nargs="+", choices=[F32, "bf16", "int8"], metavar="PRECISION",
                   help="the service's PRECISIONs to measure (f32 always; default: f32 and every variant the bundle "
                   "records for the backend's engine that this CPU runs natively)")
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
    p.add_argument("--side-by-side", type=int, default=SIDE_BY_SIDE_ROUNDS, metavar="ROUNDS",
                   help="rounds of the service in every precision and the best peers, all up at once, measured "
                   "in turn at the largest concurrency: the throughput goals' ratios (0: none; default %(default)s)")
    p.add_argument("--json", default="build/bench/serve.json")
    p.add_argument("--plot", default="build/bench/serve.png")
    return p.parse_args(argv)


def memory_mb(pid):
    """The process's resident memory now and at its peak (VmRSS, VmHWM in /proc/PID/status), in MB;
    None off Linux."""
    try:
        with open("/proc/%d/status" % pid) as f:
            fields = dict(line.split(":", 1) for line in f if line.startswith(("VmRSS", "VmHWM")))
        return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024.0, "peak_mb": int(fields["VmHWM"].split()[0]) / 1024.0}
    except (OSError, KeyError, ValueError, IndexError):
        return None


def model_says(port):
    """What GET /v1/model says about the engine and precision that serve (its fields naming a backend,
    an engine, a precision or a file), or None."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/v1/model" % port, timeout=10) as r:
            doc = json.loads(r.read())
    except (OSError, ValueError):
        return None
    return {k: v for k, v in doc.items() if any(w in k for w in ("backend", "engine", "precision", "file"))}


def serve(bundle_dir, photos, backend, levels, args, extra, log_dir, engines, precision=F32):
    """The service with `backend` and PRECISION=`precision` at each concurrency of `levels`; one client
    in rounds interleaved with the engine alone (`engines`, an EngineAlone) and the same work in
    process; the ceiling (Ceiling) right before the largest level, in this precision, when the backend
    is OpenVINO."""
    inproc = ceiling = None
    if 1 in levels:   # the references are measured only beside one client
        log("in process (%s, %s): loading ..." % (backend, precision))
        inproc = InProcess(bundle_dir, photos, backend, args.threads, precision=precision)
    if backend == "openvino" and len(levels) > 1:
        from classifier.settings import available_cpus
        ceiling = Ceiling(bundle_dir, photos, backend, args.threads, precision, available_cpus())
    env = dict(extra, PRECISION=precision)
    service = Service(bundle_dir, os.path.join(log_dir, "serve-service-%s-%s.log" % (backend, precision)), backend,
                      args.threads, env)
    reqs = peer_harness.requests_for("service", photos)
    out, floor, lone, top_ceiling, says, memory = [], None, None, None, None, None
    try:
        ready = service.wait_ready()
        log("service (%s, PRECISION=%s) ready on port %d after %.1f s" % (backend, precision, service.port, ready))
        says = model_says(service.port)
        floor = http_floor(service.port)
        warm = run_level(service.port, reqs, max(levels), 4 * max(levels), args.seconds)
        if warm["errors"]:
            raise BenchError("warm-up requests failed: %s" % warm["error_samples"])
        for c in levels:
            if c == 1:
                log("service (%s, %s), 1 client: %d rounds of the engine alone, in process, the service ..." % (
                    backend, precision, args.rounds))
                lone = lone_rounds(engines, inproc, service.port, reqs, args.rounds, max(2, args.requests // args.rounds),
                                   service.proc.pid, precision)
                out.append(lone["level"])
                continue
            if ceiling and c == max(levels):
                log("ceiling (%s): %s ..." % (precision, ceiling.what))
                top_ceiling = ceiling.measure(args.requests, min(args.seconds, 10.0))
            log("service (%s, %s), concurrency %d ..." % (backend, precision, c))
            out.append(run_level(service.port, reqs, c, args.requests, args.seconds, service_pid=service.proc.pid))
        memory = memory_mb(service.proc.pid)   # after every level: its workers' models, buffers and peak
    finally:
        if inproc:
            inproc.close()
        stopped = service.stop()
        log("service stopped by SIGTERM: exit status %s after %.1f s%s" % (stopped[0], stopped[1],
                                                                         ", needed SIGKILL" if stopped[2] else ""))
    return {"backend": backend, "precision": precision, "model": says,
            "in_process": lone and lone["in_process"], "engine_alone": lone and lone["engine_alone"],
            "rounds": lone["rounds"] if lone else [], "levels": out, "http_floor": floor, "ceiling": top_ceiling,
            "memory": memory, "exit_status": stopped[0], "stop_seconds": stopped[1], "killed": stopped[2]}


# --- side by side ---------------------------------------------------------------------------

def best_peers(peers, top):
    """{precision: the peer that served the most requests a second at `top` clients}."""
    named = {precision: best_peer(by_name, top)[0] for precision, by_name in peers.items()}
    return {precision: name for precision, name in named.items() if name}


def side_by_side(bundle_dir, photos, backend, precisions, peers, args, extra, log_dir):
    """The throughput goals that compare two servers, measured with both up at once: the service in
    each of `precisions` and, per precision, the peer in `peers` ({precision: name}), all started
    together, then each measured at the largest concurrency in turn, `args.side_by_side` rounds, the
    order turned every round. Measured minutes apart, as the steps before measure them, two servers
    compare two moments of a machine whose speed drifts by up to 2x within minutes; in rounds side
    by side both see the same machine, and each round gives a ratio. The servers not being measured
    are stopped (SIGSTOP), so none takes CPU from the one measured (LitServe's idle inference
    worker polls its queue: 0.12 of a core), and continued and warmed up for their turn. Returns {"concurrency",
    "services": {precision: label}, "peers": {precision: {"name", "label"}}, "rounds": [{label: req/s}]}."""
    top = max(args.concurrency)
    servers = []   # (label, server, requests, protocol)
    out = {"concurrency": top, "services": {}, "peers": {}, "rounds": []}
    try:
        for p in precisions:
            label = "service %s" % p
            server = Service(bundle_dir, os.path.join(log_dir, "serve-side-by-side-service-%s.log" % p), backend,
                             args.threads, dict(extra, PRECISION=p))
            servers.append((label, server, peer_harness.requests_for("service", photos), "service"))
            out["services"][p] = label
        for p, name in peers.items():
            spec = peer_harness.PEERS[name]
            label = "%s %s" % (name, p)
            server = peer_harness.PeerServer(
                name, peer_harness.python_for(name, args.peer_venvs), bundle_dir, backend, ENGINE_THREADS,
                spec["batch_from"] is not None and top >= spec["batch_from"],
                os.path.join(log_dir, "peer-side-by-side-%s-%s.log" % (name.replace(" ", "-").lower(), p)), p)
            servers.append((label, server, peer_harness.requests_for(spec["protocol"], photos), spec["protocol"]))
            out["peers"][p] = {"name": name, "label": label}
        for label, server, reqs, protocol in servers:
            server.wait_ready() if protocol == "service" else server.wait_ready(reqs[0])
            run_level(server.port, reqs, top, 2 * top, 10.0, protocol=protocol)   # warm-up
            _signal(server, signal.SIGSTOP)
        log("side by side at %d clients: %s, %d rounds ..." % (top, ", ".join(s[0] for s in servers), args.side_by_side))
        for r in range(args.side_by_side):
            turn = r % len(servers)
            order = servers[turn:] + servers[:turn]
            row = {}
            for label, server, reqs, protocol in (order[::-1] if r % 2 else order):
                _signal(server, signal.SIGCONT)
                run_level(server.port, reqs, top, top, 10.0, protocol=protocol)   # its threads and caches awake
                level = run_level(server.port, reqs, top, max(100, args.requests // 2), min(args.seconds, 8.0),
                                  protocol=protocol)
                _signal(server, signal.SIGSTOP)
                if level["errors"]:
                    raise BenchError("side by side, %s: %d requests failed, e.g. %s" % (
                        label, level["errors"], level["error_samples"]))
                row[label] = level["throughput_rps"]
            out["rounds"].append(row)
            log("  round %d: %s" % (r + 1, ", ".join("%s %.1f" % kv for kv in row.items())))
    finally:
        for _, server, _, _ in servers:
            _signal(server, signal.SIGCONT)
            server.stop()
    return out


def _signal(server, signum):
    """Send `signum` to a server: a peer's whole process group (LitServe's workers too), the service
    (one process); nothing if it has exited."""
    try:
        if isinstance(server, peer_harness.PeerServer):
            os.killpg(server.proc.pid, signum)
        else:
            os.kill(server.proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def best_variant(runs, precisions):
    """The precision other than f32 whose service served the most req/s at its largest level, or None."""
    best = None
    for run in runs:
        if run["precision"] in precisions and run["precision"] != F32 and run["levels"]:
            rps = max(run["levels"], key=lambda lvl: lvl["concurrency"])["throughput_rps"]
            if best is None or rps > best[0]:
                best = (rps, run["precision"])
    return best and best[1]


def main(argv=None):
    args = parse_args(argv)
    for out in (args.json, args.plot):
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    log_dir = os.path.dirname(os.path.abspath(args.json))
    began = time.time()
    load_before = os.getloadavg()
    bundle_dir, not_made = ensure_bundle(args.bundle)
    from mbv3 import bundle
    from classifier import backends
    loaded = bundle.load(bundle_dir)
    meta = loaded.metadata
    photos = sample_photos()
    log("bundle %s (%s, input %s); photos: %s" % (bundle_dir, meta["name"], meta["input"]["shape"],
                                                 ", ".join("%s %d KB" % (n, len(b) // 1024) for n, b in photos)))
    if os.path.isfile(os.path.join(bundle_dir, bench_bundle.STAMP)):
        log("the bench bundle's weights are random: the variants' accuracy is chance and was recorded with --force; "
            "what this measures is speed")
    primary = backends.cpu_choice()[0] if args.backend == "auto" else args.backend
    capabilities, cpu_name = cpu_capabilities()
    precisions, why_not = choose_precisions(loaded.info, primary, capabilities, args.precisions)
    why_not.update({p: "mbv3 quantize: %s" % why for p, why in not_made.items() if p not in precisions})
    for p, why in sorted(why_not.items()):
        log("precision %s: not measured: %s" % (p, why))
    log("precisions: %s (%s on %s)" % (", ".join(precisions), primary, cpu_name or "this CPU"))
    extra = dict(args.env)
    if args.max_batch:
        extra["MAX_BATCH"] = str(args.max_batch)
    if args.max_delay_ms is not None:
        extra["MAX_DELAY_MS"] = str(args.max_delay_ms)
    top = max(args.concurrency)
    edges = sorted({1, top})
    log("preprocessing alone ...")
    prep_alone = preprocessing_alone(bundle_dir, photos)
    engines = EngineAlone(bundle_dir, photos, precisions)
    runs, failed = [], {}
    for p in precisions:
        try:
            runs.append(serve(bundle_dir, photos, primary, args.concurrency, args, extra, log_dir, engines, p))
        except BenchError as e:
            if p == F32:
                raise
            failed[p] = str(e)   # a variant the service would not run: an error, but f32 and the others still count
            log("serve_bench: error: PRECISION=%s: %s" % (p, e))
    if args.compare_backends:
        for other in (b for b in backends.CPU_PREFERENCE if b != primary):
            runs.append(serve(bundle_dir, photos, other, edges, args, extra, log_dir, engines))
    measured = [run["precision"] for run in runs if run["backend"] == primary]
    log("the model alone: OpenVINO in %s at batch 1 and %d, %d rounds ..." % (", ".join(measured), MODEL_BATCH,
                                                                            args.rounds))
    model_only = model_only_rounds(engines, measured, args.rounds)
    best = best_variant([run for run in runs if run["backend"] == primary], measured)
    peers = {}
    for p in [F32] + ([best] if best else []):
        peers[p] = {}
        for name in args.peers:
            python = peer_harness.python_for(name, args.peer_venvs)
            peers[p][name] = peer_harness.run_peer(name, python, bundle_dir, photos, edges, primary, ENGINE_THREADS,
                                                   run_level, log_dir, max_requests=args.requests, seconds=args.seconds,
                                                   precision=p)
    together = None
    if args.side_by_side > 0 and top > 1:
        together = side_by_side(bundle_dir, photos, primary, measured, best_peers(peers, top), args, extra, log_dir)
    first = runs[0]
    engine = first["engine_alone"] or {k: dict(percentiles(v), threads=ENGINE_THREADS)
                                       for k, v in engines.measure([engine_key("onnxruntime", F32, 1),
                                                                    engine_key("openvino", F32, 1)], runs=200).items()}
    settings = "BACKEND=%s %s" % (primary, " ".join("%s=%s" % kv for kv in sorted(extra.items())) or "defaults")
    result = {"bundle": bundle_dir, "model": meta["name"], "input_shape": meta["input"]["shape"], "cpus": os.cpu_count(),
              "cpu": cpu_name, "capabilities": capabilities, "load_average_before": load_before,
              "load_average": os.getloadavg(), "seconds": time.time() - began,
              "random_weights": os.path.isfile(os.path.join(bundle_dir, bench_bundle.STAMP)),
              "photos": [{"name": n, "bytes": len(b)} for n, b in photos],
              "backend": primary, "settings": settings, "precisions": measured, "best_variant": best,
              "not_measured": dict(why_not, **failed), "engine_alone": engine, "model_only": model_only,
              "preprocessing_alone": prep_alone, "services": runs,
              "in_process": first["in_process"], "levels": first["levels"], "http_floor": first["http_floor"],
              "peers": peers, "side_by_side": together}
    result["ratios"] = ratios(result)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    plot(result, args.plot)
    print(table(result))
    with open(os.path.splitext(args.json)[0] + ".md", "w") as f:
        f.write(markdown([result]))
    measured_levels = [run["in_process"] for run in runs if run["in_process"]] + [
        lvl for run in runs for lvl in run["levels"]]
    busy = [m["cpu"]["other_cores"] for m in measured_levels if m.get("cpu")]
    if busy and max(busy) > 0.25:
        log("note: other processes used up to %.1f of the %d CPU cores during the measurements: these figures are "
            "noisy; rerun on a quiet machine" % (max(busy), os.cpu_count() or 0))
    log("wrote %s, %s and %s in %.0f s (load average %.2f before, %.2f after)" % (
        args.json, args.plot, os.path.splitext(args.json)[0] + ".md", result["seconds"], load_before[0],
        result["load_average"][0]))
    all_peer_levels = [lvl for by_name in peers.values() for levels in by_name.values() for lvl in levels]
    failures = sum(lvl["errors"] for run in runs for lvl in run["levels"]) + sum(lvl["errors"] for lvl in all_peer_levels)
    unclean = [run for run in runs if not stopped_cleanly(run["exit_status"], run["killed"])]
    if failures:
        log("serve_bench: error: %d requests failed, e.g. %s" % (failures, [
            lvl["error_samples"] for run in runs for lvl in run["levels"] if lvl["errors"]] + [
            lvl["error_samples"] for lvl in all_peer_levels if lvl["errors"]]))
    for run in unclean:
        log("serve_bench: error: the service (%s, %s) did not stop cleanly on SIGTERM (exit status %s%s)"
            % (run["backend"], run["precision"], run["exit_status"], ", killed after the timeout" if run["killed"] else ""))
    for p, why in failed.items():
        log("serve_bench: error: PRECISION=%s was not measured: %s" % (p, why.splitlines()[0]))
    return 1 if failures or unclean or failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BenchError, peer_harness.PeerError) as e:
        print("serve_bench: error: %s" % e, file=sys.stderr)
        sys.exit(1)
