"""`make bench-serve`'s report: the goals' ratios, what each latency goal leaves beyond the floor of
the same work in process plus a bare GET, where a lone request's milliseconds go, the table and the
plot, all computed from the result dict that serve_bench.py measures and writes as JSON."""
from __future__ import annotations

import numpy as np

GOALS = {   # (ratio, at most / at least, goal)
    "service_c1_over_engine": ("max", 1.35),      # service p50 at 1 client / ONNX Runtime alone at batch 1
    "service_c1_over_in_process": ("max", 1.15),  # service p50 at 1 client / the same work in this process
    "throughput_top_over_c1": ("min", 1.5),       # service req/s at the most clients / at 1
}


def ratios(result):
    """The goals' ratios, and this service / each peer: p50 at 1 client, req/s at the most clients."""
    levels = {lvl["concurrency"]: lvl for lvl in result["levels"]}
    one, top = levels.get(1), levels[max(levels)]
    rounds = result["services"][0]["rounds"]
    out = {
        "throughput_top_over_c1": top["throughput_rps"] / one["throughput_rps"] if one and one["throughput_rps"] else None,
        "top_concurrency": top["concurrency"],
    }
    # medians of the rounds' ratios (lone_rounds): each round's service and references side by side
    for key, per_round in (("service_c1_over_engine", "service_over_engine"),
                           ("service_c1_over_in_process", "service_over_in_process")):
        median, low, high = spread([r[per_round] for r in rounds]) if rounds else (None, None, None)
        out[key], out[key + "_range"] = median, ([low, high] if rounds else None)
    for key, (kind, goal) in GOALS.items():
        value = out[key]
        out[key + "_met"] = value is not None and (value <= goal if kind == "max" else value >= goal)
    out["floors"] = floors(rounds, result.get("http_floor"))
    peers = {}
    for name, peer_levels in result.get("peers", {}).items():
        by = {lvl["concurrency"]: lvl for lvl in peer_levels}
        row = {}
        if one and 1 in by and by[1]["latency"]["p50_ms"]:
            row["latency_c1"] = one["latency"]["p50_ms"] / by[1]["latency"]["p50_ms"]
        if top["concurrency"] in by and by[top["concurrency"]]["throughput_rps"]:
            row["throughput_top"] = top["throughput_rps"] / by[top["concurrency"]]["throughput_rps"]
        peers[name] = row
    out["peers"] = peers
    out["profile_c1"] = profile(one) if one else None
    return out


def floors(rounds, http_floor):
    """What the two latency goals leave for the server. The same work in process plus the cheapest
    HTTP round trip (GET /healthz, no body, a few bytes of JSON) is the least any HTTP server could
    take here with this decode, preprocessing and engine: per round, that floor's ratio to each
    goal's reference, and the milliseconds the goal leaves beyond it for reading the body, the JSON
    answer and the service's own work, next to what this service takes for them. Medians of the
    rounds; None without rounds or an HTTP floor."""
    http = (http_floor or {}).get("p50_ms")
    if not rounds or http is None:
        return None
    least = [r["in_process_p50_ms"] + http for r in rounds]
    out = {"http_ms": http, "service_beyond_ms": spread([r["service_p50_ms"] - f for r, f in zip(rounds, least)])[0]}
    for key, reference in (("service_c1_over_engine", lambda r: r["engine_alone_p50_ms"]["onnxruntime"]),
                           ("service_c1_over_in_process", lambda r: r["in_process_p50_ms"])):
        goal = GOALS[key][1]
        out[key] = {"least_ratio": spread([f / reference(r) for r, f in zip(rounds, least)])[0],
                    "leaves_ms": spread([goal * reference(r) - f for r, f in zip(rounds, least)])[0]}
    return out


def profile(level):
    """Where a lone request's milliseconds go, from the service's own timings (medians: the parts
    need not add up to the p50 exactly)."""
    part = level["server_p50_ms"]
    if part.get("pipeline") is None or part.get("preprocess") is None or part.get("inference") is None:
        return None
    total = level["latency"]["p50_ms"]
    return {"decode_preprocess": part["preprocess"], "inference": part["inference"],
            "pipeline_rest": part["pipeline"] - part["preprocess"] - part["inference"],
            "http_and_framework": total - part["pipeline"], "request_p50": total}


def spread(values):
    """(median, min, max) of per-round values."""
    return float(np.median(values)), float(min(values)), float(max(values))


def _row(label, m, server_parts=None):
    lat = m["latency"]
    cpu = m.get("cpu")
    cores = "-" if not cpu else "%.2f / %.1f / %.1f" % (cpu["client_cores"], cpu["service_cores"], cpu["other_cores"])
    fmt = lambda v: "-" if v is None else "%.2f" % v
    parts = " / ".join(fmt(server_parts.get(k)) for k in ("preprocess", "queue", "inference")) if server_parts else ""
    errors = "   (%d errors)" % m["errors"] if m.get("errors") else ""
    return "%-34s %8.2f %8.2f %8.2f %8d %9.1f   %-16s   %s%s" % (
        label, lat["p50_ms"], lat["p90_ms"], lat["p99_ms"], lat["n"], m["throughput_rps"], cores, parts, errors)


def table(result):
    r = result["ratios"]
    engines = result["engine_alone"]
    rows = ["engine alone, batch 1, %s threads, p50 over the 1-client rounds: %s" % (
        next(iter(engines.values())).get("threads", "?"), ", ".join("%s %.2f ms" % (k, v["p50_ms"]) for k, v in engines.items()))]
    pa = result.get("preprocessing_alone")
    if pa:
        rows.append("preprocessing alone, p50 per photo: %s; largest difference %.2f of an 8-bit level" % (
            "; ".join("%s fast %.2f ms, reference %.2f ms (%.1fx)" % (name, pa["fast"][name], pa["reference"][name],
                                                                     pa["reference"][name] / pa["fast"][name])
                      for name in pa["fast"]), pa["max_difference_levels"]))
    rows.append("")
    rows.append("%-34s %8s %8s %8s %8s %9s   %-16s   %s" % ("", "p50 ms", "p90 ms", "p99 ms", "requests", "req/s",
                                                         "CPU cores: this", "server p50 ms: preprocess / queue / inference"))
    rows.append("%-34s %8s %8s %8s %8s %9s   %-16s" % ("", "", "", "", "", "", "/ service / other"))
    for run in result["services"]:
        ref = run["in_process"]
        if ref:
            rows.append(_row("in process (%s)" % run["backend"], ref, {"preprocess": ref["parts_p50_ms"]["decode_preprocess"],
                                                                     "inference": ref["parts_p50_ms"]["inference"]}))
        for lvl in run["levels"]:
            rows.append(_row("service (%s), %d clients" % (run["backend"], lvl["concurrency"]), lvl, lvl["server_p50_ms"]))
    for name, levels in result.get("peers", {}).items():
        for lvl in levels:
            rows.append(_row("%s%s, %d clients" % (name, " (batching)" if lvl.get("batching") else "", lvl["concurrency"]),
                             lvl))
    if result.get("http_floor"):
        rows.append("HTTP alone (GET %s on one connection): p50 %.2f ms" % (result["http_floor"]["path"],
                                                                           result["http_floor"]["p50_ms"]))
    top = r["top_concurrency"]
    verdict = lambda key: "not measured" if r[key] is None else "met" if r[key + "_met"] else "MISSED"
    goal = lambda key: ("<=" if GOALS[key][0] == "max" else ">=") + " %.2f" % GOALS[key][1]
    num = lambda v: "-" if v is None else "%.2f" % v
    span = lambda key: "" if not r.get(key + "_range") else ", rounds %.2f-%.2f" % tuple(r[key + "_range"])
    rows += ["", "ratios (%s; 1 client: median of %d rounds, each measured beside its references):" % (
                 result["backend"], len(result["services"][0]["rounds"])),
             "  service p50 at 1 client / ONNX Runtime alone at batch 1   = %s%s (goal %s): %s" % (
                 num(r["service_c1_over_engine"]), span("service_c1_over_engine"), goal("service_c1_over_engine"),
                 verdict("service_c1_over_engine")),
             "  service p50 at 1 client / the same work in process        = %s%s (goal %s): %s" % (
                 num(r["service_c1_over_in_process"]), span("service_c1_over_in_process"),
                 goal("service_c1_over_in_process"), verdict("service_c1_over_in_process")),
             "  service req/s at %d clients / at 1 client                  = %s (goal %s): %s" % (
                 top, num(r["throughput_top_over_c1"]), goal("throughput_top_over_c1"), verdict("throughput_top_over_c1"))]
    if r.get("floors"):
        rows += [""] + floor_lines(r["floors"], result["http_floor"]["path"])
    prof = r.get("profile_c1")
    if prof:
        rows += ["", "where a lone request's %.2f ms go (server timings, p50 each):" % prof["request_p50"],
                 "  decode + preprocess                                           %6.2f ms" % prof["decode_preprocess"],
                 "  inference                                                     %6.2f ms" % prof["inference"],
                 "  rest of the pipeline (probe, budget, any hand-offs, top-k)    %6.2f ms" % prof["pipeline_rest"],
                 "  HTTP, routing, body and JSON, both ends of the connection     %6.2f ms" % prof["http_and_framework"]]
    if r["peers"]:
        rows += ["", "this service / each peer:   p50 at 1 client (lower is faster)   req/s at %d clients (higher is more)" % top]
        rows += ["  %-24s %12s %36s" % (name, num(v.get("latency_c1")), num(v.get("throughput_top")))
                 for name, v in r["peers"].items()]
    if len(result["services"]) > 1:
        rows += ["", "backends (BACKEND=auto's CPU choice):   p50 at 1 client   req/s at %d clients" % top]
        for run in result["services"]:
            by = {lvl["concurrency"]: lvl for lvl in run["levels"]}
            rows.append("  %-38s %8s ms %14s" % (run["backend"], num(by[1]["latency"]["p50_ms"]) if 1 in by else "-",
                                                 num(by[top]["throughput_rps"]) if top in by else "-"))
    return "\n".join(rows)


def floor_lines(fl, path):
    """The report's lines for floors()."""
    def leaves(key):
        ms = fl[key]["leaves_ms"]
        return ("leaves %.2f ms beyond it" % ms if ms >= 0 else
                "is %.2f ms below it: no HTTP server can meet it here" % -ms)
    return ["what the goals leave for the server (the floor: the same work in process + GET %s's %.2f ms):" % (
                path, fl["http_ms"]),
            "  least possible service / ONNX Runtime alone  = %.2f: the goal %s" % (
                fl["service_c1_over_engine"]["least_ratio"], leaves("service_c1_over_engine")),
            "  least possible service / in process          = %.2f: the goal %s" % (
                fl["service_c1_over_in_process"]["least_ratio"], leaves("service_c1_over_in_process")),
            "  this service takes %.2f ms beyond the floor (reading the body, the JSON answer, its own work)" % (
                fl["service_beyond_ms"])]


def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    conc = sorted({lvl["concurrency"] for run in result["services"] for lvl in run["levels"]})
    for run in result["services"]:
        levels = run["levels"]
        c = [lvl["concurrency"] for lvl in levels]
        ax1.plot(c, [lvl["latency"]["p50_ms"] for lvl in levels], "o-", label="service (%s) p50" % run["backend"])
        ax2.plot(c, [lvl["throughput_rps"] for lvl in levels], "o-", label="service (%s)" % run["backend"])
    for name, levels in result.get("peers", {}).items():
        c = [lvl["concurrency"] for lvl in levels]
        ax1.plot(c, [lvl["latency"]["p50_ms"] for lvl in levels], "x--", label="%s p50" % name)
        ax2.plot(c, [lvl["throughput_rps"] for lvl in levels], "x--", label=name)
    engine = result["engine_alone"]["onnxruntime"]["p50_ms"]
    ax1.axhline(engine, color="k", lw=1, label="ONNX Runtime alone, batch 1")
    ax2.axhline(1000.0 / engine, color="k", lw=1, label="ONNX Runtime alone, one image at a time")
    ax1.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="latency per request (ms)", title="latency")
    ax2.set(xscale="log", xlabel="concurrent clients", ylabel="images / s", title="throughput")
    for ax in (ax1, ax2):
        ax.set_xticks(conc)
        ax.set_xticklabels([str(c) for c in conc])
        ax.minorticks_off()
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    ax2.set_ylim(bottom=0)
    fig.suptitle("%s: the service over HTTP vs the engine alone and Python peers (%s)" % (
        result["model"], result["settings"]), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
