"""`make bench-devices`: service throughput on 1, 2 and 4 Ascend devices, simulated.

No Ascend card is needed or used: the service runs `BACKEND=acl` on the pyACL simulator
(services/classifier/tests/acl_sim), which runs the bundle's ONNX model where a card runs the .om
and makes every model run take at least a simulated device time (ACL_SIM_DEVICE_MS, default here
200 ms a batch). That time is chosen so the devices, not this machine's cores (which decode the
JPEGs and run HTTP), are what limits throughput: the ratios then show how the service's engine
spreads batches over devices (one worker thread per device, each batch to an idle device), not how
fast a 310 is. Each level starts the service with DEVICE_IDS=0..N-1 and sends real JPEG photos from
32 concurrent keep-alive clients; the ideal is N x MAX_BATCH images per device time.
Exit status 1 on errors (failed requests, a service that will not start or stop cleanly).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SIM_DIR = os.path.join(os.path.dirname(HERE), "tests", "acl_sim")
sys.path.insert(0, HERE)

import peer_harness  # noqa: E402
import serve_bench  # noqa: E402  (the load generator and the service runner, shared with make bench-serve)
from serve_bench import BenchError, log  # noqa: E402


def ensure_bundle(path):
    """A small random-weights bundle (V3_SMALL 0.35, 96 px: the simulated device time, not the host's
    ONNX Runtime, should be the cost of a run) with a simulated .om of batch profiles 1, 2, 4, 8."""
    if not os.path.isfile(os.path.join(path, "model.json")):
        ckpt = path.rstrip("/") + "-ckpt"
        shutil.rmtree(ckpt, ignore_errors=True)
        mbv3 = [sys.executable, "-m", "mbv3.cli"]
        for cmd in (mbv3 + ["init", "--model-dir", ckpt, "--variant", "small", "--multiplier", "0.35",
                            "--num-classes", "11"],
                    mbv3 + ["export", "--checkpoint", ckpt, "--output", path, "--image-size", "96"]):
            log("+ " + " ".join(cmd))
            if subprocess.run(cmd).returncode != 0:
                raise BenchError("making the benchmark bundle failed: %s" % " ".join(cmd))
    sys.path.insert(0, SIM_DIR)
    try:
        import acl
        acl.sim_write_om(path, batch_profiles=[1, 2, 4, 8])
    finally:
        sys.path.remove(SIM_DIR)
        sys.modules.pop("acl", None)
    return path


def small_photos(side=160):
    """make bench-serve's real photos, scaled to at most `side` pixels: decoding them costs the host
    little, so the devices stay what limits throughput."""
    import io

    from PIL import Image
    out = []
    for name, data in serve_bench.sample_photos():
        with Image.open(io.BytesIO(data)) as img:
            img.thumbnail((side, side))
            buf = io.BytesIO()
            img.convert("RGB").save(buf, "JPEG", quality=90)
        out.append((name, buf.getvalue()))
    return out


def device_counts(port):
    """{device: (images, batches)} so far, from the service's per-device metrics."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        text = r.read().decode()
    series = {name: {m.group(1): int(float(m.group(2))) for m in re.finditer(
        r'classifier_device_%s_total\{device="([^"]+)"\} (\S+)' % name, text)} for name in ("images", "batches")}
    return {d: (series["images"][d], series["batches"][d]) for d in series["images"]}


def run_devices(bundle, devices, args, reqs, log_dir):
    env = {"DEVICE_IDS": ",".join(str(d) for d in range(devices)), "MAX_BATCH": str(args.max_batch),
           "MAX_DELAY_MS": str(args.max_delay_ms),
           "ACL_SIM_DEVICES": str(devices), "ACL_SIM_DEVICE_MS": str(args.device_ms),
           "PYTHONPATH": os.pathsep.join([SIM_DIR] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    service = serve_bench.Service(bundle, os.path.join(log_dir, "devices-%d-service.log" % devices), "acl",
                                  extra_env=env)
    try:
        service.wait_ready()
        warm = serve_bench.run_level(service.port, reqs, args.clients, 2 * args.clients, args.seconds)
        if warm["errors"]:
            raise BenchError("warm-up requests failed: %s" % warm["error_samples"])
        before = device_counts(service.port)
        level = serve_bench.run_level(service.port, reqs, args.clients, args.requests, args.seconds,
                                      service_pid=service.proc.pid)
        after = device_counts(service.port)
    finally:
        stopped = service.stop()
    level.update(devices=devices, exit_status=stopped[0], killed=stopped[2],
                 images_per_device={d: after[d][0] - before.get(d, (0, 0))[0] for d in sorted(after)},
                 mean_batch=(sum(a[0] for a in after.values()) - sum(b[0] for b in before.values()))
                 / max(1, sum(a[1] for a in after.values()) - sum(b[1] for b in before.values())),
                 ideal_rps=devices * args.max_batch * 1000.0 / args.device_ms)
    return level


def table(result):
    rows = ["%-8s %10s %10s %9s %9s %11s   %s" % ("devices", "images/s", "ideal", "p50 ms", "p99 ms", "mean batch",
                                                  "images per device")]
    for lvl in result["levels"]:
        rows.append("%-8d %10.1f %10.1f %9.1f %9.1f %11.1f   %s%s" % (
            lvl["devices"], lvl["throughput_rps"], lvl["ideal_rps"], lvl["latency"]["p50_ms"], lvl["latency"]["p99_ms"],
            lvl["mean_batch"],
            " ".join("%s:%d" % kv for kv in lvl["images_per_device"].items()),
            "   (%d errors)" % lvl["errors"] if lvl["errors"] else ""))
    rows.append("")
    rows.extend("throughput on %s devices / on 1 = %.2f (ideal %d)" % (n[:-len("_over_1")], r, int(n[:-len("_over_1")]))
                for n, r in result["ratios"].items())
    return "\n".join(rows)


def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    levels = result["levels"]
    n = [lvl["devices"] for lvl in levels]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(n, [lvl["throughput_rps"] for lvl in levels], "o-", label="service, %d clients" % result["clients"])
    ax.plot(n, [lvl["ideal_rps"] for lvl in levels], "k--", lw=1, label="ideal: N x MAX_BATCH / device time")
    ax.set(xlabel="simulated Ascend devices (DEVICE_IDS)", ylabel="images / s", xticks=n)
    ax.set_title("%d ms a batch on each device, MAX_BATCH %d, MAX_DELAY_MS %d" % (
        result["device_ms"], result["max_batch"], result["max_delay_ms"]), fontsize=9)
    ax.set_ylim(0, 1.1 * max(lvl["ideal_rps"] for lvl in levels))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", default="build/bench/devices-bundle", help="made (random weights) if missing")
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--device-ms", type=float, default=400.0, help="simulated device time of one batch")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-delay-ms", type=float, help="the service's batching window (default: a quarter of --device-ms)")
    p.add_argument("--requests", type=int, default=1200, help="at most this many requests per level")
    p.add_argument("--seconds", type=float, default=15.0, help="at most this long per level")
    p.add_argument("--json", default="build/bench/devices.json")
    p.add_argument("--plot", default="build/bench/devices.png")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.max_delay_ms is None:
        args.max_delay_ms = args.device_ms / 4
    for out in (args.json, args.plot):
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    bundle = ensure_bundle(os.path.abspath(args.bundle))
    reqs = peer_harness.requests_for("service", small_photos())
    levels = []
    for devices in args.devices:
        log("%d device(s), %d clients ..." % (devices, args.clients))
        levels.append(run_devices(bundle, devices, args, reqs, os.path.dirname(os.path.abspath(args.json))))
    one = [lvl for lvl in levels if lvl["devices"] == 1]
    ratios = {"%d_over_1" % lvl["devices"]: lvl["throughput_rps"] / one[0]["throughput_rps"]
              for lvl in levels if one and lvl["devices"] != 1}
    result = {"command": "python services/classifier/benchmarks/device_scaling.py " + " ".join(argv or sys.argv[1:]),
              "backend": "acl on the pyACL simulator", "device_ms": args.device_ms, "max_batch": args.max_batch,
              "max_delay_ms": args.max_delay_ms,
              "clients": args.clients, "cpus": os.cpu_count(), "levels": levels, "ratios": ratios}
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    plot(result, args.plot)
    print(table(result))
    log("wrote %s and %s" % (args.json, args.plot))
    errors = sum(lvl["errors"] for lvl in levels)
    unclean = [lvl["devices"] for lvl in levels if not serve_bench.stopped_cleanly(lvl["exit_status"], lvl["killed"])]
    if errors:
        log("device_scaling: error: %d requests failed, e.g. %s" % (errors, [lvl["error_samples"] for lvl in levels]))
    if unclean:
        log("device_scaling: error: the service did not stop cleanly on SIGTERM with %s device(s)" % unclean)
    return 1 if errors or unclean else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print("device_scaling: error: %s" % e, file=sys.stderr)
        sys.exit(1)
