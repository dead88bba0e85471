"""`make bench-ab B="KEY=VALUE ..."`: does a setting make the service faster? Two services side by
side on the same bundle, A with its defaults (or `--a` settings) and B with the settings given, both
running the whole time. One keep-alive client alternates between them in rounds (A then B, then B
then A, ...), each round a block of requests on the same photos as `make bench-serve`; each round
gives the ratio of B's p50 to A's. Then the same alternation at many clients, for throughput.

Timing A and B in separate runs of `make bench-serve` compares two moments of a shared machine,
whose speed drifts by 2x within minutes; side by side, both see the same machine, and the median of
the rounds' ratios with its range says whether a change moved anything. Exit status 1 only on
errors (failed requests, a service that does not start or stop)."""
from __future__ import annotations

import argparse
import json
import os
import sys

import peer_harness
from peer_harness import log
from serve_bench import BenchError, Service, _env, _positive, ensure_bundle, run_level, sample_photos, stopped_cleanly
from serve_report import spread


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("b", nargs="+", type=_env, metavar="KEY=VALUE", help="B's settings (A has the service's defaults)")
    p.add_argument("--a", type=_env, action="append", default=[], metavar="KEY=VALUE", help="A's settings, repeatable")
    p.add_argument("--bundle", default="build/bench/bundle", help="made with `mbv3 init` + `export` if missing")
    p.add_argument("--backend", default="auto", help="both services' BACKEND")
    p.add_argument("--rounds", type=_positive, default=20, help="rounds at one client (and a quarter as many at many)")
    p.add_argument("--per-round", type=_positive, default=30, help="requests per side and round at one client")
    p.add_argument("--clients", type=int, default=32, help="the many-client level (0: none)")
    p.add_argument("--json", default="build/bench/ab.json")
    return p.parse_args(argv)


def alternate(services, reqs, rounds, clients, per_round, seconds):
    """[[level of A, level of B] per round], the order flipped every round."""
    out = []
    for r in range(rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        pair = [None, None]
        for side in order:
            pair[side] = run_level(services[side].port, reqs, clients, per_round, seconds,
                                   service_pid=services[side].proc.pid)
        out.append(pair)
    return out


def compare(pairs, pick):
    """A's and B's medians over the rounds of pick(level), and the rounds' B/A ratios: median and range."""
    a, b = ([pick(pair[side]) for pair in pairs] for side in (0, 1))
    median, low, high = spread([y / x for x, y in zip(a, b)])
    return {"a": spread(a)[0], "b": spread(b)[0], "b_over_a": median, "range": [low, high], "rounds": len(pairs)}


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    log_dir = os.path.dirname(os.path.abspath(args.json))
    bundle_dir, _ = ensure_bundle(args.bundle)
    photos = sample_photos()
    reqs = peer_harness.requests_for("service", photos)
    settings = [dict(args.a), dict(args.a, **dict(args.b))]
    services = [Service(bundle_dir, os.path.join(log_dir, "ab-%s.log" % side), args.backend, extra_env=env)
                for side, env in zip("ab", settings)]
    result = {"a": settings[0], "b": settings[1], "backend": args.backend, "load_average": os.getloadavg()}
    failures = 0
    try:
        for service in services:
            service.wait_ready()
        for service in services:   # warm both the same way
            run_level(service.port, reqs, max(1, args.clients), 4 * max(1, args.clients), 30.0)
        log("one client, %d rounds of %d requests on each side ..." % (args.rounds, args.per_round))
        lone = alternate(services, reqs, args.rounds, 1, args.per_round, 60.0)
        result["one_client_p50_ms"] = compare(lone, lambda level: level["latency"]["p50_ms"])
        failures += sum(level["errors"] for pair in lone for level in pair)
        if args.clients > 1:
            rounds = max(2, args.rounds // 4)
            log("%d clients, %d rounds ..." % (args.clients, rounds))
            many = alternate(services, reqs, rounds, args.clients, 8 * args.clients, 30.0)
            result["many_clients"] = args.clients
            result["many_clients_rps"] = compare(many, lambda level: level["throughput_rps"])
            failures += sum(level["errors"] for pair in many for level in pair)
    finally:
        stopped = [service.stop() for service in services]
    result["load_average_after"] = os.getloadavg()
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    show = lambda s: " ".join("%s=%s" % kv for kv in sorted(s.items())) or "defaults"
    print("A: %s\nB: %s" % (show(settings[0]), show(settings[1])))
    for key, what, better in (("one_client_p50_ms", "p50 ms at 1 client", "lower"),
                              ("many_clients_rps", "req/s at %s clients" % args.clients, "higher")):
        if key in result:
            r = result[key]
            print("%-22s A %8.2f   B %8.2f   B/A %.3f, rounds %.3f-%.3f (%d rounds; %s is better)" % (
                what, r["a"], r["b"], r["b_over_a"], r["range"][0], r["range"][1], r["rounds"], better))
    log("wrote %s" % args.json)
    unclean = [s for s in stopped if not stopped_cleanly(s[0], s[2])]
    if failures or unclean:
        log("ab_settings: error: %d requests failed; %d services did not stop cleanly" % (failures, len(unclean)))
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print("ab_settings: error: %s" % e, file=sys.stderr)
        sys.exit(1)
