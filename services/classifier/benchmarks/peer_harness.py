"""The peers of `make bench-serve`: the same preprocessing and engine (peers/common.py) behind other
Python servers, each started as a subprocess on a loopback port, in its own virtual environment
under build/peers/ when its pins clash with the service's (made here from requirements/peers/*.txt
when missing or when that file changed), and spoken to in its own protocol.

- bare ASGI (peers/asgi_app.py): no framework, the work inline on the event loop; the repository's
  own .venv (uvicorn is the service's).
- LitServe (peers/litserve_app.py): a LitAPI, unbatched at one client, with LitServe's batching
  (max_batch_size 8, 5 ms, as the service's MAX_BATCH and MAX_DELAY_MS) at more.
- KServe (peers/kserve_app.py): a kserve.Model on kserve.ModelServer, v1 REST protocol.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
PEERS = {
    "bare ASGI": {"app": "asgi_app.py", "requirements": None, "protocol": "raw", "batch_from": None},
    "LitServe": {"app": "litserve_app.py", "requirements": "requirements/peers/litserve.txt", "protocol": "litserve",
                 "batch_from": 2},
    "KServe": {"app": "kserve_app.py", "requirements": "requirements/peers/kserve.txt", "protocol": "kserve",
               "batch_from": None},
}


class PeerError(RuntimeError):
    pass


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def ensure_venv(requirements, root, python=sys.executable):
    """The python of a virtual environment with `requirements` installed, made under `root` when
    missing or when the requirements file changed since it was made."""
    path = os.path.join(ROOT, requirements)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    venv = os.path.join(root, os.path.splitext(os.path.basename(requirements))[0])
    stamp = os.path.join(venv, ".requirements-sha256")
    exe = os.path.join(venv, "bin", "python")
    if os.path.exists(stamp) and open(stamp).read().strip() == digest and os.path.exists(exe):
        return exe
    log("making %s from %s ..." % (venv, requirements))
    for cmd in ([python, "-m", "venv", "--clear", venv], [exe, "-m", "pip", "install", "--quiet", "-r", path]):
        if subprocess.run(cmd).returncode != 0:
            raise PeerError("setting up %s failed: %s" % (venv, " ".join(cmd)))
    with open(stamp, "w") as f:
        f.write(digest + "\n")
    return exe


# --- protocols: what a client sends each server, and what a good answer looks like ------------------

def requests_for(protocol, photos):
    """[(photo name, path, body, headers)] for `protocol`: each photo encoded once, before the clock runs."""
    out = []
    for name, data in photos:
        if protocol in ("raw", "service"):
            path = "/classify?top_k=5" if protocol == "service" else "/classify"
            out.append((name, path, data, {"Content-Type": "image/jpeg"}))
            continue
        b64 = base64.b64encode(data).decode("ascii")
        if protocol == "litserve":
            path, doc = "/predict", {"image": b64}
        elif protocol == "kserve":
            path, doc = "/v1/models/mbv3:predict", {"instances": [{"image_bytes": {"b64": b64}}]}
        else:
            raise ValueError("unknown protocol %r" % protocol)
        out.append((name, path, json.dumps(doc).encode("ascii"), {"Content-Type": "application/json"}))
    return out


def check_answer(protocol, status, body):
    """(None, server timings or {}) for a well-formed 200 answer with five predictions, else (what is
    wrong, None)."""
    text = body[:200].decode("utf-8", "replace")
    if status != 200:
        return "HTTP %s: %s" % (status, text), None
    try:
        doc = json.loads(body)
        if protocol == "service":
            result = doc["results"][0]
            predictions, timings = result["predictions"], dict(result["timings_ms"])
            timings["pipeline"] = doc["timings_ms"]["total"]   # the request's pipeline, inside the route
        elif protocol == "kserve":
            predictions, timings = doc["predictions"][0], {}
        else:
            predictions, timings = doc["predictions"], {}
        if len(predictions) != 5 or not predictions[0]["label"]:
            raise ValueError("%d predictions" % len(predictions))
        return None, timings
    except (ValueError, KeyError, IndexError, TypeError) as e:
        return "malformed answer (%r): %s" % (e, text), None


# --- a peer server ---------------------------------------------------------------------------------

def tail(log_file, path, lines=15):
    """The last `lines` lines a server wrote to `log_file` (open for writing at `path`)."""
    log_file.flush()
    with open(path, "rb") as f:
        return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PeerServer:
    """One peer in a subprocess (its own session, so its worker processes stop with it)."""

    def __init__(self, name, python, bundle_dir, backend, threads, batch, log_path, precision="f32"):
        spec = PEERS[name]
        self.name, self.protocol, self.log_path = name, spec["protocol"], log_path
        self.port = free_port()
        cmd = [python, os.path.join(HERE, "peers", spec["app"]), "--bundle", os.path.abspath(bundle_dir),
               "--port", str(self.port), "--backend", backend, "--threads", str(threads), "--precision", precision] + (
            ["--batch"] if batch else [])
        env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "model"))
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, probe, timeout=120.0):
        """Until `probe` (one request of this peer's protocol) is answered 200."""
        import http.client
        _, path, body, headers = probe
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PeerError("%s exited with status %s before it answered:\n%s" % (self.name, self.proc.returncode,
                                                                                     self.log_tail()))
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                answer = resp.read()
                conn.close()
                if resp.status == 200 and check_answer(self.protocol, resp.status, answer)[0] is None:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise PeerError("%s did not answer within %.0f s:\n%s" % (self.name, timeout, self.log_tail()))

    def stop(self, timeout=20.0):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        try:   # worker processes LitServe started in the peer's session
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()

    def log_tail(self, lines=15):
        return tail(self._log, self.log_path, lines)


def python_for(name, venv_root):
    requirements = PEERS[name]["requirements"]
    return ensure_venv(requirements, venv_root) if requirements else sys.executable


def run_peer(name, python, bundle_dir, photos, levels, backend, threads, run_level, log_dir, precision="f32",
             **level_args):
    """[level result] of peer `name` at each concurrency of `levels`, its engine in `precision` (the
    precision's model file and compile configuration, as the service's): started fresh for each batching
    setting (LitServe's batching is on from `batch_from` clients), warmed up, then measured by
    `run_level(port, requests, concurrency, protocol=...)`."""
    spec = PEERS[name]
    reqs = requests_for(spec["protocol"], photos)
    results = []
    groups = {}
    for c in levels:
        batch = spec["batch_from"] is not None and c >= spec["batch_from"]
        groups.setdefault(batch, []).append(c)
    for batch, conc in sorted(groups.items()):
        log_path = os.path.join(log_dir, "peer-%s-%s%s.log" % (name.replace(" ", "-").lower(), precision,
                                                             "-batched" if batch else ""))
        server = PeerServer(name, python, bundle_dir, backend, threads, batch, log_path, precision)
        try:
            server.wait_ready(reqs[0])
            run_level(server.port, reqs, max(conc), 2 * max(conc), 10.0, protocol=spec["protocol"])   # warm-up
            for c in conc:
                log("%s%s, %s, concurrency %d ..." % (name, " (batching)" if batch else "", precision, c))
                result = run_level(server.port, reqs, c, protocol=spec["protocol"],
                                   **level_args)
                result["batching"], result["precision"] = batch, precision
                results.append(result)
        finally:
            server.stop()
    return sorted(results, key=lambda r: r["concurrency"])
