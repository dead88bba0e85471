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
