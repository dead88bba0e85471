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
