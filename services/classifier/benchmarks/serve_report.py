"""`make bench-serve`'s report: the goals' ratios, per precision and across them, what each latency
goal leaves beyond the floor of the same work in process plus a bare GET, what the machine's ceiling
leaves each throughput goal, where a lone request's milliseconds go, the table and the plot, all
computed from the result dict that serve_bench.py measures and writes as JSON; and the README's
measured-numbers rows for it, as medians and spreads of several such JSON files:

    python services/classifier/benchmarks/serve_report.py --readme README.md build/bench/serve*.json
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

F32 = "f32"
GOALS = {   # (at most / at least, goal)
    "service_c1_over_engine": ("max", 1.35),      # service p50 at 1 client / ONNX Runtime alone at batch 1 (retired)
    "service_c1_over_in_process": ("max", 1.15),  # service p50 at 1 client / the same work in this process
    "throughput_top_over_c1": ("min", 1.5),       # service req/s at the most clients / at 1
    "service_top_over_best_peer": ("min", 1.5),   # service req/s at the most clients / the best peer's, same precision
    "model_b8_int8_over_f32": ("min", 2.0),       # OpenVINO alone, batch 8 images/s: int8 / f32
    "service_top_int8_over_f32": ("min", 1.6),    # service req/s at the most clients: int8 / f32
    "service_top_best_over_f32": ("min", 2.0),    # the same: the best variant / f32
}
README_BEGIN, README_END = "<!-- bench-serve:begin -->", "<!-- bench-serve:end -->"


class ReportError(ValueError):
    pass


def met(key, value):
    """Whether `value` meets GOALS[key]; None when not measured."""
    if value is None:
        return None
    kind, goal = GOALS[key]
    return value <= goal if kind == "max" else value >= goal


def _by_concurrency(levels):
    return {lvl["concurrency"]: lvl for lvl in levels}


def best_peer(peers, concurrency):
    """(name, req/s) of the peer ({name: levels}) that served the most at `concurrency`, else (None, None)."""
    best = (None, None)
    for name, levels in (peers or {}).items():
        rps = _by_concurrency(levels).get(concurrency, {}).get("throughput_rps")
        if rps and (best[1] is None or rps > best[1]):
            best = (name, rps)
    return best


def _div(a, b):
    return a / b if a is not None and b else None


def run_ratios(run, peers):
    """One service run's ratios (one backend, one precision); `peers` {name: levels} in the same precision."""
    levels = _by_concurrency(run["levels"])
    one, top = levels.get(1), levels[max(levels)]
    rounds = run["rounds"]
    out = {"precision": run.get("precision", F32), "top_concurrency": top["concurrency"],
           "c1_p50_ms": one and one["latency"]["p50_ms"], "c1_rps": one and one["throughput_rps"],
           "top_rps": top["throughput_rps"],
           "throughput_top_over_c1": _div(top["throughput_rps"], one and one["throughput_rps"])}
    # medians of the rounds' ratios (lone_rounds): each round's service and references side by side
    for key, per_round in (("service_c1_over_engine", "service_over_engine"),
                           ("service_c1_over_in_process", "service_over_in_process")):
        median, low, high = spread([r[per_round] for r in rounds]) if rounds else (None, None, None)
        out[key], out[key + "_range"] = median, ([low, high] if rounds else None)
    peer_rows = {}
    for name, peer_levels in (peers or {}).items():
        by = _by_concurrency(peer_levels)
        row = {}
        if one and 1 in by and by[1]["latency"]["p50_ms"]:
            row["latency_c1"] = one["latency"]["p50_ms"] / by[1]["latency"]["p50_ms"]
        if top["concurrency"] in by and by[top["concurrency"]]["throughput_rps"]:
            rps = by[top["concurrency"]]["throughput_rps"]
            row["throughput_top"], row["rps_top"] = top["throughput_rps"] / rps, rps
        peer_rows[name] = row
    out["peers"] = peer_rows
    out["best_peer"], out["best_peer_rps"] = best_peer(peers, top["concurrency"])
    out["service_top_over_best_peer"] = _div(top["throughput_rps"], out["best_peer_rps"])
    ceiling = (run.get("ceiling") or {}).get("images_per_s")
    out["ceiling_rps"] = ceiling
    out["service_over_ceiling"] = _div(top["throughput_rps"], ceiling)
    out["best_peer_over_ceiling"] = _div(out["best_peer_rps"], ceiling)
    # the most each throughput goal could read on this machine: the ceiling in the numerator
    out["ceiling_allows"] = {"throughput_top_over_c1": _div(ceiling, out["c1_rps"]),
                             "service_top_over_best_peer": _div(ceiling, out["best_peer_rps"])}
    for key in ("service_c1_over_engine", "service_c1_over_in_process", "throughput_top_over_c1",
                "service_top_over_best_peer"):
        out[key + "_met"] = met(key, out[key])
    memory = run.get("memory") or {}
    out["rss_mb"], out["peak_mb"] = memory.get("rss_mb"), memory.get("peak_mb")
    out["floors"] = floors(rounds, run.get("http_floor"))
    out["profile_c1"] = profile(one) if one else None
    return out


def ratios(result):
    """The goals' ratios: per precision of the chosen backend (`precisions`), across precisions
    (`across`), and, at the top level as before, the float32 run's."""
    primary = [run for run in result["services"] if run["backend"] == result["backend"]]
    peers = result.get("peers") or {}
    per = {run.get("precision", F32): run_ratios(run, peers.get(run.get("precision", F32))) for run in primary}
    f32 = per.get(F32) or run_ratios(result["services"][0], peers.get(F32))
    model = (result.get("model_only") or {}).get("precisions", {})
    across = {"model_b8_over_f32": {p: row.get("over_f32") for p, row in model.items() if p != F32},
              "model_b8_over_f32_range": {p: row.get("over_f32_range") for p, row in model.items() if p != F32},
              "service_top_over_f32": {p: _div(r["top_rps"], f32["top_rps"]) for p, r in per.items() if p != F32},
              "service_top_over_f32_range": {},
              # the most a precision's service could serve over float32's: its ceiling in the numerator
              "ceiling_allows_over_f32": {p: _div(r["ceiling_rps"], f32["top_rps"]) for p, r in per.items() if p != F32}}
    side_by_side(result.get("side_by_side"), per, across)
    best = result.get("best_variant")
    across["best_variant"] = best
    across["model_b8_int8_over_f32"] = across["model_b8_over_f32"].get("int8")
    across["service_top_int8_over_f32"] = across["service_top_over_f32"].get("int8")
    across["service_top_best_over_f32"] = across["service_top_over_f32"].get(best) if best else None
    for key in ("model_b8_int8_over_f32", "service_top_int8_over_f32", "service_top_best_over_f32"):
        across[key + "_met"] = met(key, across[key])
    out = dict(f32)
    out["precisions"], out["across"] = per, across
    return out


def side_by_side(together, per, across):
    """With serve_bench's side-by-side rounds (every server up at once, measured in turn), the ratios
    of two servers are the medians of the rounds' ratios, in place of the two levels measured
    minutes apart; those stay under `..._apart`. A round's ratio compares one moment of the machine."""
    if not together:
        return
    rounds = together["rounds"]

    def rounds_ratio(a, b):
        values = [row[a] / row[b] for row in rounds if row.get(a) and row.get(b)]
        return spread(values) if values else None
    f32 = together["services"].get(F32)
    for p, label in together["services"].items():
        measured = rounds_ratio(label, f32) if f32 and p != F32 else None
        if measured and p in across["service_top_over_f32"]:
            across.setdefault("service_top_over_f32_apart", {})[p] = across["service_top_over_f32"][p]
            across["service_top_over_f32"][p], across["service_top_over_f32_range"][p] = measured[0], list(measured[1:])
        peer = together["peers"].get(p)
        measured = rounds_ratio(label, peer["label"]) if peer else None
        if measured and p in per:
            row = per[p]
            row["service_top_over_best_peer_apart"], row["best_peer_apart"] = (row["service_top_over_best_peer"],
                                                                               row["best_peer"])
            row["best_peer"], row["service_top_over_best_peer"] = peer["name"], measured[0]
            row["service_top_over_best_peer_range"] = list(measured[1:])
            row["service_top_over_best_peer_met"] = met("service_top_over_best_peer", measured[0])


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
    return "%-40s %8.2f %8.2f %8.2f %8d %9.1f   %-16s   %s%s" % (
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
    rows.append("%-40s %8s %8s %8s %8s %9s   %-16s   %s" % ("", "p50 ms", "p90 ms", "p99 ms", "requests", "req/s",
                                                         "CPU cores: this", "server p50 ms: preprocess / queue / inference"))
    rows.append("%-40s %8s %8s %8s %8s %9s   %-16s" % ("", "", "", "", "", "", "/ service / other"))
    for run in result["services"]:
        ref, tag = run["in_process"], "%s %s" % (run["backend"], run.get("precision", F32))
        if ref:
            rows.append(_row("in process (%s)" % tag, ref, {"preprocess": ref["parts_p50_ms"]["decode_preprocess"],
                                                          "inference": ref["parts_p50_ms"]["inference"]}))
        for lvl in run["levels"]:
            rows.append(_row("service (%s), %d clients" % (tag, lvl["concurrency"]), lvl, lvl["server_p50_ms"]))
    for precision, by_name in (result.get("peers") or {}).items():
        for name, levels in by_name.items():
            for lvl in levels:
                rows.append(_row("%s%s %s, %d clients" % (name, " (batching)" if lvl.get("batching") else "", precision,
                                                          lvl["concurrency"]), lvl))
    if result.get("http_floor"):
        rows.append("HTTP alone (GET %s on one connection): p50 %.2f ms" % (result["http_floor"]["path"],
                                                                           result["http_floor"]["p50_ms"]))
    top = r["top_concurrency"]
    verdict = lambda key: "not measured" if r[key] is None else "met" if r[key + "_met"] else "MISSED"
    goal = lambda key: ("<=" if GOALS[key][0] == "max" else ">=") + " %.2f" % GOALS[key][1]
    num = lambda v: "-" if v is None else "%.2f" % v
    span = lambda key: "" if not r.get(key + "_range") else ", rounds %.2f-%.2f" % tuple(r[key + "_range"])
    rows += ["", "ratios (%s f32; 1 client: median of %d rounds, each measured beside its references):" % (
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
    for precision, pr in r.get("precisions", {}).items():
        if pr["peers"]:
            rows += ["", "this service / each peer, %s:   p50 at 1 client (lower is faster)   req/s at %d clients "
                     "(higher is more)" % (precision, top)]
            rows += ["  %-24s %12s %36s" % (name, num(v.get("latency_c1")), num(v.get("throughput_top")))
                     for name, v in pr["peers"].items()]
    if r.get("precisions"):
        rows += [""] + precision_lines(result)
    if len(result["services"]) > 1:
        rows += ["", "backends (BACKEND=auto's CPU choice):   p50 at 1 client   req/s at %d clients" % top]
        for run in result["services"]:
            if run.get("precision", F32) != F32:
                continue
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


def _goal(key):
    kind, goal = GOALS[key]
    return "%s %.2f" % ("<=" if kind == "max" else ">=", goal)


def goal_line(text, key, value, allows=None, spread_=None):
    """`GOAL text = value (goal): met|MISSED`, and for a missed throughput goal the most the machine's
    ceiling allows it to read (when that is below the goal: ruled out here, not missed by the service)."""
    if value is None:
        return "GOAL %s: not measured" % text
    verdict = "met" if met(key, value) else "MISSED"
    line = "GOAL %s = %.2f%s (goal %s): %s" % (text, value, " (rounds %.2f-%.2f)" % tuple(spread_) if spread_ else "",
                                               _goal(key), verdict)
    if allows is not None:
        line += "; the ceiling allows at most %.2f%s" % (
            allows, ": the machine rules it out" if not met(key, allows) else "")
    return line


def precision_lines(result):
    """The per-precision table (a column per precision) and the GOAL lines of (a) to (f)."""
    r = result["ratios"]
    per, across = r["precisions"], r["across"]
    model = (result.get("model_only") or {}).get("precisions", {})
    cols = list(per)
    num = lambda v, f="%.2f": "-" if v is None else f % v
    rows_def = [
        ("model alone, OpenVINO batch 8, images/s", lambda p: num(model.get(p, {}).get("images_per_s"), "%.1f")),
        ("model alone, batch 8, / f32", lambda p: num(1.0 if p == F32 else across["model_b8_over_f32"].get(p))),
        ("model alone, OpenVINO batch 1, p50 ms", lambda p: num((model.get(p, {}).get("batch1") or {}).get("p50_ms"))),
        ("service p50 at 1 client, ms", lambda p: num(per[p]["c1_p50_ms"])),
        ("service / in process at 1 client", lambda p: num(per[p]["service_c1_over_in_process"])),
        ("service req/s at 1 client", lambda p: num(per[p]["c1_rps"], "%.1f")),
        ("service req/s at %d clients" % r["top_concurrency"], lambda p: num(per[p]["top_rps"], "%.1f")),
        ("service at %d clients / at 1" % r["top_concurrency"], lambda p: num(per[p]["throughput_top_over_c1"])),
        ("service at %d clients / f32's" % r["top_concurrency"],
         lambda p: num(1.0 if p == F32 else across["service_top_over_f32"].get(p))),
        ("best peer at %d clients, req/s" % r["top_concurrency"], lambda p: num(per[p]["best_peer_rps"], "%.1f")),
        ("service / best peer", lambda p: num(per[p]["service_top_over_best_peer"])),
        ("ceiling, images/s (in process, pipelined)", lambda p: num(per[p]["ceiling_rps"], "%.1f")),
        ("service / ceiling", lambda p: num(per[p]["service_over_ceiling"])),
        ("best peer / ceiling", lambda p: num(per[p]["best_peer_over_ceiling"])),
        ("service memory after its levels, MB (peak)", lambda p: "%s (%s)" % (
            num(per[p].get("rss_mb"), "%.0f"), num(per[p].get("peak_mb"), "%.0f"))),
    ]
    out = ["per precision (%s; PRECISION=<column>; the peers run f32 and the best variant, %s):" % (
        result["backend"], across.get("best_variant") or "none"),
        "  %-44s" % "" + "".join("%12s" % c for c in cols)]
    out += ["  %-44s" % label + "".join("%12s" % f(c) for c in cols) for label, f in rows_def]
    if result.get("not_measured"):
        out += ["  not measured: %s" % "; ".join("%s (%s)" % (p, why.splitlines()[0])
                                                for p, why in sorted(result["not_measured"].items()))]
    top = r["top_concurrency"]
    out += ["", "goals:"]
    for p in cols:
        if p != F32:
            out.append(goal_line("(a) model alone, batch 8 images/s, %s / f32" % p, "model_b8_int8_over_f32",
                                 across["model_b8_over_f32"].get(p), spread_=across["model_b8_over_f32_range"].get(p))
                       if p == "int8" else "     (a) model alone, batch 8 images/s, %s / f32 = %s (no goal)" % (
                           p, num(across["model_b8_over_f32"].get(p))))
    ranges = across.get("service_top_over_f32_range", {})
    out.append(goal_line("(b) service req/s at %d clients, int8 / f32" % top, "service_top_int8_over_f32",
                         across["service_top_int8_over_f32"], across["ceiling_allows_over_f32"].get("int8"),
                         ranges.get("int8")))
    best = across.get("best_variant")
    out.append(goal_line("(b) service req/s at %d clients, best variant (%s) / f32" % (top, best or "none"),
                         "service_top_best_over_f32", across["service_top_best_over_f32"],
                         across["ceiling_allows_over_f32"].get(best) if best else None, ranges.get(best)))
    for p in cols:
        pr = per[p]
        if pr["best_peer"]:
            out.append(goal_line("(c) service at %d clients / best peer (%s), %s" % (top, pr["best_peer"], p),
                                 "service_top_over_best_peer", pr["service_top_over_best_peer"],
                                 pr["ceiling_allows"]["service_top_over_best_peer"],
                                 pr.get("service_top_over_best_peer_range")))
    together = result.get("side_by_side")
    if together and together.get("rounds"):
        apart = ["%s / f32 %s" % (p, num(v)) for p, v in across.get("service_top_over_f32_apart", {}).items()] + [
            "%s / %s %s" % (p, per[p]["best_peer_apart"], num(per[p]["service_top_over_best_peer_apart"]))
            for p in cols if per[p].get("best_peer_apart")]
        out.append("     (b), (c): medians of %d side-by-side rounds (every server up at once, each measured in turn); "
                   "measured minutes apart: %s" % (len(together["rounds"]), "; ".join(apart) or "-"))
    for p in cols:
        out.append(goal_line("(d) service at %d clients / 1 client, %s" % (top, p), "throughput_top_over_c1",
                             per[p]["throughput_top_over_c1"], per[p]["ceiling_allows"]["throughput_top_over_c1"]))
    for p in cols:
        out.append(goal_line("(e) service p50 at 1 client / in process, %s" % p, "service_c1_over_in_process",
                             per[p]["service_c1_over_in_process"], spread_=per[p]["service_c1_over_in_process_range"]))
    for p in cols:
        if per[p]["service_over_ceiling"] is not None:
            out.append("     (f) %s at %d clients: service / ceiling = %.2f, best peer / ceiling = %s (%.1f of %.1f images/s)"
                       % (p, top, per[p]["service_over_ceiling"], num(per[p]["best_peer_over_ceiling"]),
                          per[p]["top_rps"], per[p]["ceiling_rps"]))
    if result.get("random_weights"):
        out += ["", "the bench bundle's weights are random: its variants' accuracy is chance (recorded with --force); "
                    "these figures are speed only"]
    return out


def plot(result, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.6))
    conc = sorted({lvl["concurrency"] for run in result["services"] for lvl in run["levels"]})
    colors = {}
    for run in result["services"]:
        levels, tag = run["levels"], "%s %s" % (run["backend"], run.get("precision", F32))
        c = [lvl["concurrency"] for lvl in levels]
        line = ax1.plot(c, [lvl["latency"]["p50_ms"] for lvl in levels], "o-", label="service (%s) p50" % tag)[0]
        ax2.plot(c, [lvl["throughput_rps"] for lvl in levels], "o-", label="service (%s)" % tag, color=line.get_color())
        if run["backend"] == result["backend"]:
            colors[run.get("precision", F32)] = line.get_color()
        if run.get("ceiling"):
            ax2.axhline(run["ceiling"]["images_per_s"], color=line.get_color(), lw=1, ls=":",
                        label="ceiling (%s)" % run.get("precision", F32))
    for precision, by_name in (result.get("peers") or {}).items():
        for name, levels in by_name.items():
            c = [lvl["concurrency"] for lvl in levels]
            ax1.plot(c, [lvl["latency"]["p50_ms"] for lvl in levels], "x--", label="%s %s p50" % (name, precision))
            ax2.plot(c, [lvl["throughput_rps"] for lvl in levels], "x--", label="%s %s" % (name, precision))
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
        ax.legend(fontsize=6)
    ax2.set_ylim(bottom=0)
    # per precision: the model alone at batch 8, the service and the best peer at the most clients, the ceiling
    per = result["ratios"].get("precisions", {})
    model = (result.get("model_only") or {}).get("precisions", {})
    bars = [("model alone b8", lambda p: model.get(p, {}).get("images_per_s")),
            ("service", lambda p: per[p]["top_rps"]), ("best peer", lambda p: per[p]["best_peer_rps"]),
            ("ceiling", lambda p: per[p]["ceiling_rps"])]
    width = 0.8 / max(1, len(per))
    for i, p in enumerate(per):
        ax3.bar([j + i * width for j in range(len(bars))], [f(p) or 0.0 for _, f in bars], width, label=p,
                color=colors.get(p))
    ax3.set_xticks([j + width * (len(per) - 1) / 2 for j in range(len(bars))])
    ax3.set_xticklabels([name for name, _ in bars], fontsize=8)
    ax3.set(ylabel="images / s", title="per precision, %d clients" % max(conc))
    ax3.grid(True, axis="y", alpha=0.3)
    ax3.legend(fontsize=7)
    fig.suptitle("%s: the service over HTTP vs the engine alone, the ceiling and Python peers (%s)" % (
        result["model"], result["settings"]), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- the README's measured-numbers rows, from one or several runs ----------------------------------

def _agg(values, fmt="%.2f", bold=False, unit=""):
    """"MEDIAN (LOW-HIGH)" of the runs' values (None: not measured in that run), `unit` after each
    number; "-" when none was measured."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    median, low, high = spread(values)
    text = ("**%s**" if bold else "%s") % (fmt % median + unit)
    return text + (" (%s-%s)" % (fmt % low, fmt % high + unit) if len(values) > 1 else "")


def _verdict(key, values):
    values = [v for v in values if v is not None]
    if not values:
        return ""
    median = spread(values)[0]
    return "goal %s: %s" % (_goal(key), "met" if met(key, median) else "missed")


def markdown(results):
    """The Markdown block of bench-serve's measured numbers: a table of medians over `results` (serve.json
    dicts) with their spread (lowest-highest) when there are several, and the runs' load averages."""
    if not results:
        raise ReportError("no results to summarise")
    precisions = []
    for res in results:
        precisions += [p for p in res["ratios"].get("precisions", {F32: None}) if p not in precisions]
    per = lambda p, key: [res["ratios"].get("precisions", {}).get(p, {}).get(key) for res in results]
    across = lambda key, p: [res["ratios"].get("across", {}).get(key, {}).get(p) for res in results]
    model = lambda p, key: [((res.get("model_only") or {}).get("precisions", {}).get(p) or {}).get(key)
                            for res in results]
    top = results[0]["ratios"]["top_concurrency"]
    backend = results[0]["backend"]
    cmd = "`make bench-serve`"
    rows = []
    r1 = [res["ratios"] for res in results]
    rows.append(("a 640 x 427 JPEG over HTTP, 1 client, `BACKEND=%s` f32, p50" % backend,
                 "%s: %s ONNX Runtime alone at batch 1 (%s), timed beside it in rounds; %s" % (
                     _agg([r["c1_p50_ms"] for r in r1], unit=" ms"),
                     _agg([r["service_c1_over_engine"] for r in r1], bold=True, unit="x"),
                     _agg([res["engine_alone"]["onnxruntime"]["p50_ms"] for res in results],
                          unit=" ms"),
                     _agg([r["floors"] and r["floors"]["service_c1_over_engine"]["least_ratio"] for r in r1], unit="x") +
                     " is the least any HTTP server takes here (in process + a bare `GET`)")))
    rows.append(("the same vs the same work in one process, per precision",
                 "; ".join("%s %s" % (p, _agg(per(p, "service_c1_over_in_process"), bold=True, unit="x")) for p in precisions) +
                 " (%s)" % _verdict("service_c1_over_in_process", per(F32, "service_c1_over_in_process"))))
    rows.append(("the model alone, OpenVINO batch %d, %s threads, images/s" % (8, "2"),
                 "; ".join("%s %s%s" % (p, _agg(model(p, "images_per_s"), "%.0f"),
                                        "" if p == F32 else " (%s f32%s)" % (
                                            _agg(model(p, "over_f32"), bold=True, unit="x"),
                                            "; " + _verdict("model_b8_int8_over_f32", model(p, "over_f32"))
                                            if p == "int8" else ""))
                           for p in precisions)))
    best = [res["ratios"].get("across", {}).get("best_variant") for res in results]
    best_values = [res["ratios"].get("across", {}).get("service_top_best_over_f32") for res in results]
    rows.append(("service throughput at %d clients, req/s, per precision" % top,
                 "; ".join("%s %s%s" % (p, _agg(per(p, "top_rps"), "%.0f"),
                                        "" if p == F32 else " (%s f32%s)" % (
                                            _agg(across("service_top_over_f32", p), bold=True, unit="x"),
                                            "; " + _verdict("service_top_int8_over_f32", across("service_top_over_f32", p))
                                            if p == "int8" else ""))
                           for p in precisions) +
                 ("; best variant (%s) / f32 %s, %s" % ("/".join(sorted({b for b in best if b})),
                                                         _agg(best_values, bold=True, unit="x"),
                                                         _verdict("service_top_best_over_f32", best_values))
                  if any(best) else "")))
    rows.append(("service throughput, %d clients vs 1" % top,
                 "; ".join("%s %s" % (p, _agg(per(p, "throughput_top_over_c1"), bold=True, unit="x")) for p in precisions) +
                 " (%s; the ceiling allows f32 %s)" % (
                     _verdict("throughput_top_over_c1", per(F32, "throughput_top_over_c1")),
                     _agg([r["precisions"].get(F32, {}).get("ceiling_allows", {}).get("throughput_top_over_c1")
                           for r in r1], unit="x"))))
    peer_cells = []
    for p in precisions:
        values = per(p, "service_top_over_best_peer")
        if any(v is not None for v in values):
            names = sorted({n for n in per(p, "best_peer") if n})
            peer_cells.append("%s %s the best peer (%s)" % (p, _agg(values, bold=True, unit="x"), ", ".join(names)))
    side = all((res.get("side_by_side") or {}).get("rounds") for res in results)
    rows.append(("this service vs the best Python peer (same engine, preprocessing and precision), req/s at %d clients%s"
                 % (top, ", side by side" if side else ""),
                 ("; ".join(peer_cells) + " (%s)" % _verdict("service_top_over_best_peer",
                                                                   per(F32, "service_top_over_best_peer")))
                 if peer_cells else "not measured"))
    rows.append(("the ceiling: the service's decoding threads feeding its OpenVINO workers at batch 8, in process, no HTTP",
                 "; ".join("%s %s images/s: service %s of it, best peer %s" % (
                     p, _agg(per(p, "ceiling_rps"), "%.0f"), _agg(per(p, "service_over_ceiling")),
                     _agg(per(p, "best_peer_over_ceiling"))) for p in precisions)))
    if any(v is not None for p in precisions for v in per(p, "rss_mb")):
        rows.append(("the service's resident memory after its levels (every worker), MB, per precision",
                     "; ".join("%s %s (peak %s)" % (p, _agg(per(p, "rss_mb"), "%.0f"), _agg(per(p, "peak_mb"), "%.0f"))
                               for p in precisions)))
    pa = [res.get("preprocessing_alone") for res in results if res.get("preprocessing_alone")]
    if pa:
        names = list(pa[0]["fast"])
        rows.append(("preprocessing alone: libjpeg-turbo + OpenCV vs Pillow + NumPy",
                     "; ".join("`%s` %s vs %s (%s)" % (
                         n, _agg([a["fast"][n] for a in pa], unit=" ms"), _agg([a["reference"][n] for a in pa], unit=" ms"),
                         _agg([a["reference"][n] / a["fast"][n] for a in pa], "%.1f", bold=True, unit="x")) for n in names) +
                     ", at most %s of an 8-bit level apart" % _agg([a["max_difference_levels"] for a in pa])))
    others = {}
    for res in results:
        for run in res["services"]:
            if run.get("precision", F32) == F32:
                by = _by_concurrency(run["levels"])
                o = others.setdefault(run["backend"], ([], []))
                o[0].append(by[1]["latency"]["p50_ms"] if 1 in by else None)
                o[1].append(by[max(by)]["throughput_rps"])
    if len(others) > 1:
        rows.append(("CPU backends in the service, f32: p50 at 1 client, req/s at %d" % top,
                     "; ".join("%s %s, %s req/s" % (b, _agg(v[0], unit=" ms"), _agg(v[1], "%.0f")) for b, v in others.items())))
    loads = ", ".join("%.2f-%.2f" % ((res.get("load_average_before") or res["load_average"])[0], res["load_average"][0])
                      for res in results)
    cpus = sorted({res.get("cpu") or "?" for res in results})
    lines = ["| what | figure | command |", "|---|---|---|"]
    lines += ["| %s | %s | %s |" % (what, figure, cmd) for what, figure in rows]
    runs = "Medians (lowest-highest) of %d runs" % len(results) if len(results) > 1 else "One run"
    if side:
        lines += ["", "Ratios of two servers' req/s (a precision over f32, the service over the best peer) are medians "
                  "of each run's side-by-side rounds: every server up at once, each measured in turn."]
    lines += ["", "%s of `make bench-serve` on %s (%d cores), load average (1 min) before-after each run: "
              "%s. The bench bundle's weights are random: it measures speed, not accuracy. Regenerated from the runs' "
              "JSON files by `make bench-readme`." % (runs, ", ".join(cpus), results[0].get("cpus") or 0, loads)]
    return "\n".join(lines) + "\n"


def rewrite_region(text, block, begin=README_BEGIN, end=README_END):
    """`text` with what lies between the markers replaced by `block`; ReportError without exactly one
    pair of markers in order."""
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ReportError("the README needs exactly one %s ... %s pair, in that order, around the bench-serve rows "
                          "(found %d and %d)" % (begin, end, text.count(begin), text.count(end)))
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    return head + begin + "\n" + block.rstrip("\n") + "\n" + end + tail


def load_results(paths):
    """The serve.json dicts at `paths`; ReportError for a file that is missing or not a bench-serve result."""
    out = []
    for path in paths:
        try:
            with open(path) as f:
                res = json.load(f)
        except (OSError, ValueError) as e:
            raise ReportError("%s: %s" % (path, e))
        if not isinstance(res, dict) or "ratios" not in res or "services" not in res:
            raise ReportError("%s is not a serve_bench.py result (no ratios and services)" % path)
        if "precisions" not in res["ratios"]:
            res["ratios"] = ratios(res)   # an older result: its ratios computed here
        out.append(res)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description="bench-serve's Markdown numbers from serve.json files")
    p.add_argument("results", nargs="+", help="serve.json files of `make bench-serve` runs")
    p.add_argument("--readme", help="rewrite the region between %s and %s of this file" % (README_BEGIN, README_END))
    args = p.parse_args(argv)
    try:
        block = markdown(load_results(args.results))
        if args.readme:
            with open(args.readme) as f:
                text = f.read()
            new = rewrite_region(text, block)
            with open(args.readme, "w") as f:
                f.write(new)
            print("rewrote the bench-serve rows of %s from %d run(s)" % (args.readme, len(args.results)), file=sys.stderr)
        else:
            sys.stdout.write(block)
    except (ReportError, OSError) as e:
        print("serve_report: error: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
