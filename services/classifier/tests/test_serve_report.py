"""serve_report.floors(): what the latency goals leave for any HTTP server once the same work in
process and a bare GET round trip are paid, from per-round figures (no server started here)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import serve_report  # noqa: E402


def rounds(*figures):
    """Rounds of (service p50, in process p50, ONNX Runtime alone p50), as lone_rounds records them."""
    return [{"service_p50_ms": s, "in_process_p50_ms": i, "engine_alone_p50_ms": {"onnxruntime": e, "openvino": e * 0.8}}
            for s, i, e in figures]


def test_floors_per_round_medians():
    fl = serve_report.floors(rounds((7.0, 6.0, 5.0), (7.4, 6.2, 5.0), (9.0, 6.1, 5.2)), {"p50_ms": 0.3, "path": "/healthz"})
    # floor per round: 6.3, 6.5, 6.4 ms
    assert fl["http_ms"] == 0.3
    assert fl["service_beyond_ms"] == pytest.approx(0.9)                     # 0.7, 0.9, 2.6
    engine = fl["service_c1_over_engine"]
    assert engine["least_ratio"] == pytest.approx(1.26)                      # 1.26, 1.30, 1.2308
    assert engine["leaves_ms"] == pytest.approx(0.45)                        # 0.45, 0.25, 0.62
    inproc = fl["service_c1_over_in_process"]
    assert inproc["least_ratio"] == pytest.approx(6.4 / 6.1)                 # 1.05, 1.0484, 1.0492
    assert inproc["leaves_ms"] == pytest.approx(1.15 * 6.1 - 6.4)            # 0.6, 0.63, 0.615


def test_a_goal_under_the_floor_says_no_server_can_meet_it():
    fl = serve_report.floors(rounds((7.0, 6.0, 4.0)), {"p50_ms": 0.3, "path": "/healthz"})
    assert fl["service_c1_over_engine"]["leaves_ms"] == pytest.approx(1.35 * 4.0 - 6.3)   # -0.9
    text = "\n".join(serve_report.floor_lines(fl, "/healthz"))
    assert "= 1.57: the goal is 0.90 ms below it: no HTTP server can meet it here" in text
    assert "= 1.05: the goal leaves 0.60 ms beyond it" in text
    assert "takes 0.70 ms beyond the floor" in text


def test_no_floor_without_rounds_or_an_http_figure():
    assert serve_report.floors([], {"p50_ms": 0.3}) is None
    assert serve_report.floors(rounds((7.0, 6.0, 5.0)), None) is None


# --- precisions, goals, the ceiling and the README region (synthetic results: no server started) ----

def level(c, p50, rps):
    return {"concurrency": c, "requests": 100, "errors": 0, "wall_s": 100 / rps, "throughput_rps": rps,
            "latency": {"n": 100, "p50_ms": p50, "p90_ms": p50 * 1.2, "p99_ms": p50 * 1.5, "mean_ms": p50},
            "server_p50_ms": {"preprocess": 2.0, "queue": 0.1, "inference": p50 / 2, "pipeline": p50 - 1.0},
            "per_photo_p50_ms": {}, "cpu": None}


def service_run(precision, c1, top, ceiling, in_process_ratios, backend="openvino"):
    """A service run as serve_bench.serve() records it: 1 client at `c1` req/s, 32 at `top`."""
    p50 = 1000.0 / c1
    return {"backend": backend, "precision": precision, "levels": [level(1, p50, c1), level(32, p50 * 20, top)],
            "rounds": [{"service_p50_ms": p50, "in_process_p50_ms": p50 / r, "service_over_engine": 1.5,
                        "service_over_in_process": r, "engine_alone_p50_ms": {"onnxruntime": p50 / 1.5}}
                       for r in in_process_ratios],
            "in_process": None, "http_floor": {"p50_ms": 0.3, "path": "/healthz"},
            "ceiling": {"images_per_s": ceiling} if ceiling else None}


def peer(c1, top):
    return [level(1, 1000.0 / c1, c1), level(32, 300.0, top)]


def result(f32_top=100.0, bf16_top=150.0, int8_top=170.0, load=(0.5, 0.7), model=(200.0, 560.0, 420.0)):
    runs = [service_run("f32", 80.0, f32_top, 160.0, [1.10, 1.20, 1.12]),
            service_run("bf16", 90.0, bf16_top, 260.0, [1.10]),
            service_run("int8", 95.0, int8_top, 300.0, [1.30]),
            service_run("f32", 70.0, 90.0, None, [1.2], backend="onnxruntime")]
    res = {"model": "mbv3", "backend": "openvino", "settings": "BACKEND=openvino defaults", "cpus": 2, "cpu": "AMD EPYC",
           "load_average_before": [load[0], 0, 0], "load_average": [load[1], 0, 0], "services": runs,
           "levels": runs[0]["levels"], "http_floor": runs[0]["http_floor"], "best_variant": "int8",
           "engine_alone": {"onnxruntime": {"p50_ms": 6.0}, "openvino": {"p50_ms": 4.5}},
           "model_only": {"rounds": 3, "precisions": {
               p: {"images_per_s": v, "batch1": {"p50_ms": 4.0}, "over_f32": v / model[0], "over_f32_range": [1.0, 3.0]}
               for p, v in zip(("f32", "bf16", "int8"), model)}},
           "peers": {"f32": {"KServe": peer(70.0, 80.0), "bare ASGI": peer(85.0, 60.0)},
                     "int8": {"KServe": peer(70.0, 100.0)}},
           "not_measured": {}, "random_weights": True}
    res["ratios"] = serve_report.ratios(res)
    return res


def test_ratios_per_precision_and_across():
    r = result()["ratios"]
    per, across = r["precisions"], r["across"]
    assert list(per) == ["f32", "bf16", "int8"]                     # the chosen backend's runs only
    assert per["f32"]["throughput_top_over_c1"] == pytest.approx(100 / 80)
    assert per["f32"]["service_c1_over_in_process"] == pytest.approx(1.12)   # median of the rounds
    assert per["f32"]["best_peer"] == "KServe" and per["f32"]["service_top_over_best_peer"] == pytest.approx(1.25)
    assert per["f32"]["service_over_ceiling"] == pytest.approx(100 / 160)
    assert per["f32"]["best_peer_over_ceiling"] == pytest.approx(80 / 160)
    assert per["f32"]["ceiling_allows"]["service_top_over_best_peer"] == pytest.approx(2.0)
    assert per["bf16"]["best_peer"] is None and per["bf16"]["service_top_over_best_peer"] is None
    assert across["model_b8_int8_over_f32"] == pytest.approx(2.1) and across["model_b8_int8_over_f32_met"]
    assert across["service_top_int8_over_f32"] == pytest.approx(1.7) and across["service_top_int8_over_f32_met"]
    assert across["service_top_best_over_f32"] == pytest.approx(1.7) and across["service_top_best_over_f32_met"] is False
    assert across["ceiling_allows_over_f32"]["int8"] == pytest.approx(3.0)
    assert r["throughput_top_over_c1"] == per["f32"]["throughput_top_over_c1"]   # the f32 figures stay at the top


def test_goal_lines_say_met_missed_and_what_the_ceiling_rules_out():
    res = result(f32_top=100.0, int8_top=120.0)
    res["services"][2]["ceiling"] = {"images_per_s": 140.0}     # int8's ceiling: at most 1.4x f32's 100 req/s
    res["ratios"] = serve_report.ratios(res)
    text = serve_report.table(res)
    assert "GOAL (a) model alone, batch 8 images/s, int8 / f32 = 2.10 (rounds 1.00-3.00) (goal >= 2.00): met" in text
    assert ("GOAL (b) service req/s at 32 clients, int8 / f32 = 1.20 (goal >= 1.60): MISSED; the ceiling allows at "
            "most 1.40: the machine rules it out") in text
    assert "GOAL (c) service at 32 clients / best peer (KServe), f32 = 1.25 (goal >= 1.50): MISSED; the ceiling " \
           "allows at most 2.00\n" in text + "\n"
    assert "GOAL (e) service p50 at 1 client / in process, int8 = 1.30 (rounds 1.30-1.30) (goal <= 1.15): MISSED" in text
    assert "(f) f32 at 32 clients: service / ceiling = 0.62, best peer / ceiling = 0.50" in text
    assert "random" in text


def test_markdown_of_several_runs_gives_medians_spread_and_loads():
    runs = [result(f32_top=t, load=load) for t, load in ((100.0, (0.1, 0.9)), (120.0, (1.0, 1.5)), (110.0, (0.2, 0.4)))]
    block = serve_report.markdown(runs)
    assert block.startswith("| what | figure | command |\n|---|---|---|\n")
    assert "f32 110 (100-120); bf16 150 (150-150) (**1.36x** (1.25-1.50x) f32)" in block   # median (lowest-highest)
    assert "best variant (int8) / f32 **1.55x** (1.42-1.70x), goal >= 2.00: missed" in block
    assert "Medians (lowest-highest) of 3 runs" in block
    assert "load average (1 min) before-after each run: 0.10-0.90, 1.00-1.50, 0.20-0.40" in block
    one = serve_report.markdown(runs[:1])
    assert "f32 100; bf16 150" in one and "One run of `make bench-serve`" in one


def test_readme_region_rewritten_between_the_markers_only(tmp_path):
    import json
    readme = tmp_path / "README.md"
    readme.write_text("# x\n| a | b | c |\n<!-- bench-serve:begin -->\nold rows\n<!-- bench-serve:end -->\ntail\n")
    paths = []
    for i, t in enumerate((100.0, 140.0)):
        path = tmp_path / ("serve-%d.json" % i)
        path.write_text(json.dumps(result(f32_top=t)))
        paths.append(str(path))
    assert serve_report.main(["--readme", str(readme)] + paths) == 0
    text = readme.read_text()
    assert text.startswith("# x\n| a | b | c |\n<!-- bench-serve:begin -->\n| what | figure | command |\n")
    assert text.endswith("of `make bench-serve` on AMD EPYC (2 cores), load average (1 min) before-after each run: "
                         "0.50-0.70, 0.50-0.70. The bench bundle's weights are random: it measures speed, not "
                         "accuracy. Regenerated from the runs' JSON files by `make bench-readme`.\n"
                         "<!-- bench-serve:end -->\ntail\n")
    assert "old rows" not in text and "f32 120 (100-140)" in text


def test_a_readme_without_markers_or_a_foreign_json_is_refused(tmp_path, capsys):
    import json
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    good = tmp_path / "serve.json"
    good.write_text(json.dumps(result()))
    assert serve_report.main(["--readme", str(readme), str(good)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("serve_report: error: the README needs exactly one <!-- bench-serve:begin --> ... "
                          "<!-- bench-serve:end --> pair") and err.count("\n") == 1
    assert readme.read_text() == "no markers\n"
    with pytest.raises(serve_report.ReportError, match="found 2 and 1"):
        serve_report.rewrite_region("<!-- bench-serve:begin --><!-- bench-serve:begin --><!-- bench-serve:end -->", "x")
    foreign = tmp_path / "other.json"
    foreign.write_text('{"levels": []}')
    assert serve_report.main([str(foreign)]) == 1
    assert "is not a serve_bench.py result" in capsys.readouterr().err


class _Info:
    """ModelInfo.variant() as serve_bench.choose_precisions calls it."""

    def __init__(self, *recorded):
        self.recorded = recorded

    def variant(self, precision, engine):
        return object() if (precision, engine) in self.recorded else None


def test_choose_precisions_from_the_records_and_the_cpu():
    import serve_bench
    from mbv3 import precision as mp
    native = list(mp.NATIVE.values())
    run, why = serve_bench.choose_precisions(_Info(("bf16", "openvino")), "openvino", native)
    assert run == ["f32", "bf16"] and "no int8 variant validated on openvino" in why["int8"]
    run, why = serve_bench.choose_precisions(_Info(("bf16", "openvino")), "openvino", ["FP32", "INT8"])
    assert run == ["f32"] and why["bf16"].startswith("the CPU has no native bf16")
    run, why = serve_bench.choose_precisions(_Info(("bf16", "openvino")), "onnxruntime", native)
    assert run == ["f32"] and "validated on onnxruntime" in why["bf16"]
    run, _ = serve_bench.choose_precisions(_Info(("bf16", "openvino")), "openvino", native, ["f32"])
    assert run == ["f32"]


def test_side_by_side_rounds_replace_the_ratios_measured_apart():
    """serve_bench's side-by-side rounds (every server up at once, measured in turn) give the (b) and
    (c) ratios as medians of the rounds' ratios; the levels measured minutes apart stay as `_apart`."""
    res = result()   # apart: int8 170 / f32 100 req/s; f32 100 / KServe 80
    res["side_by_side"] = {"concurrency": 32, "services": {"f32": "service f32", "int8": "service int8"},
                           "peers": {"f32": {"name": "bare ASGI", "label": "bare ASGI f32"}},
                           "rounds": [{"service f32": 100.0, "service int8": 160.0, "bare ASGI f32": 60.0},
                                      {"service f32": 120.0, "service int8": 180.0, "bare ASGI f32": 80.0},
                                      {"service f32": 90.0, "service int8": 171.0, "bare ASGI f32": 50.0}]}
    res["ratios"] = serve_report.ratios(res)
    per, across = res["ratios"]["precisions"], res["ratios"]["across"]
    assert across["service_top_over_f32"]["int8"] == pytest.approx(1.6)          # rounds 1.6, 1.5, 1.9
    assert across["service_top_over_f32_range"]["int8"] == pytest.approx([1.5, 1.9])
    assert across["service_top_over_f32_apart"]["int8"] == pytest.approx(1.7)
    assert across["service_top_int8_over_f32"] == pytest.approx(1.6) and across["service_top_int8_over_f32_met"]
    assert across["service_top_over_f32"]["bf16"] == pytest.approx(1.5)          # not side by side: as apart
    f32 = per["f32"]
    assert (f32["best_peer"], f32["best_peer_apart"]) == ("bare ASGI", "KServe")
    assert f32["service_top_over_best_peer"] == pytest.approx(100 / 60)          # rounds 1.67, 1.5, 1.8
    assert f32["service_top_over_best_peer_apart"] == pytest.approx(1.25) and f32["service_top_over_best_peer_met"]
    assert per["int8"]["service_top_over_best_peer"] == pytest.approx(1.7)       # no peer side by side in int8
    text = serve_report.table(res)
    assert "GOAL (c) service at 32 clients / best peer (bare ASGI), f32 = 1.67 (rounds 1.50-1.80) (goal >= 1.50): met" \
        in text
    assert "GOAL (b) service req/s at 32 clients, int8 / f32 = 1.60 (rounds 1.50-1.90) (goal >= 1.60): met" in text
    assert "medians of 3 side-by-side rounds" in text and "int8 / f32 1.70; f32 / KServe 1.25" in text
    block = serve_report.markdown([res])
    assert "req/s at 32 clients, side by side |" in block and "medians of each run's side-by-side rounds" in block
    assert "int8 170 (**1.60x** f32" in block
