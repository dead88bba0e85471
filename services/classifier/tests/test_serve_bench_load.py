"""serve_bench.run_level: a client that dies of a bug is an error of the benchmark, not a level with
fewer requests (make bench-devices once measured nothing that way and said nothing)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import serve_bench  # noqa: E402
from peer_harness import free_port  # noqa: E402


def test_a_client_that_crashes_fails_the_level():
    malformed = [("photo.jpg", b"\xff\xd8")]   # (name, bytes), not requests_for's (name, path, body, headers)
    with pytest.raises(serve_bench.BenchError, match=r"2 of 2 clients failed: ValueError"):
        serve_bench.run_level(free_port(), malformed, 2, max_requests=4, seconds=5.0)


def test_the_best_peer_per_precision_is_the_one_that_served_most_at_the_top_level():
    level = lambda c, rps: {"concurrency": c, "throughput_rps": rps}
    peers = {"f32": {"KServe": [level(1, 90.0), level(32, 80.0)], "bare ASGI": [level(1, 50.0), level(32, 95.0)]},
             "int8": {"LitServe": [level(1, 70.0)]}}   # no level at 32: no best peer in int8
    assert serve_bench.best_peers(peers, 32) == {"f32": "bare ASGI"}
