"""HCCL rank tables for multi-card Ascend 910 training, and each card's place in one.

CANN's collective library (HCCL) learns who talks to whom from the JSON file named by
RANK_TABLE_FILE. Format version "1.0" is what ModelZoo's `hccl_tools.py` writes (mindspore-ai/models
`utils/hccl_tools/hccl_tools.py`) and what HCCL-Controller fills into the `rings-config-<job>`
ConfigMap on Kubernetes (Ascend/ascend-hccl-controller `pkg/ring-controller/ranktable/v2/types.go`):

    {"version": "1.0", "server_count": "1", "status": "completed",
     "server_list": [{"server_id": "<host IP>", "host_nic_ip": "reserve",
                      "device": [{"device_id": "0", "device_ip": "<NIC IP>", "rank_id": "0"}, ...]}]}

Every value is a string. A card's NIC address comes from `hccn_tool -i <card> -ip -g`, whose first
line reads `ipaddr:<address>`; hccl_tools.py falls back to the `address_<card>=<address>` lines of
/etc/hccn.conf, and so does `generate` here.

Commands (`python -m mbv3.ranktable ...`):
- `generate`: this server's table from hccn_tool (or hccn.conf), as docker/npu-launch.sh runs it
  for an eight-card container;
- `merge`: several servers' tables into one, ranks numbered in the order given;
- `env`: waits until a table's status is "completed" (HCCL-Controller writes "initializing" first),
  then prints the shell assignments docker/npu-launch.sh reads: RANK_SIZE, and this server's
  LOCAL_RANK_IDS and LOCAL_DEVICE_IDS (the card numbers inside the container: the n cards a pod is
  given are 0..n-1 to CANN there, in the order of their host numbers);
- `cpus`: the CPU range of one of n processes (`taskset -c`), as ModelZoo's 8-card scripts bind each
  rank to its share of the cores.

Only the standard library: it runs under the training image's Python 3.7 before TensorFlow is loaded.
"""
import argparse
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time

from .errors import MbV3Error

VERSION = "1.0"
HCCN_CONF = "/etc/hccn.conf"
# where the driver package puts hccn_tool (the driver directory is mounted into the container)
HCCN_TOOL_PATHS = ("hccn_tool", "/usr/local/Ascend/driver/tools/hccn_tool")
_IPADDR = re.compile(r"^\s*ipaddr\s*:\s*(?P<ip>\S+)\s*$", re.M)
_CONF_ADDRESS = re.compile(r"^\s*address_(?P<device>\d+)\s*=\s*(?P<ip>\S+)\s*$", re.M)


def parse_hccn_ip(text):
    """The address in `hccn_tool -i N -ip -g` output (`ipaddr:192.168.100.101` then `netmask:...`)."""
    match = _IPADDR.search(text)
    if match is None:
        raise MbV3Error("no 'ipaddr:' line in hccn_tool's output: %r" % text.strip()[:200])
    return match.group("ip")


def parse_hccn_conf(text):
    """{card: address} from /etc/hccn.conf's `address_N=IP` lines."""
    return {int(m.group("device")): m.group("ip") for m in _CONF_ADDRESS.finditer(text)}


def parse_devices(spec):
    """Card numbers from "0-7", "0,1,2,3" or "4-7": ascending, no repeats."""
    devices = []
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            low, high = (int(x) for x in part.split("-", 1))
            if high < low:
                raise MbV3Error("device range %r runs backwards" % part)
            devices.extend(range(low, high + 1))
        else:
            devices.append(int(part))
    if not devices or len(set(devices)) != len(devices) or min(devices) < 0:
        raise MbV3Error("devices %r: give distinct card numbers such as 0-7 or 0,1,2,3" % spec)
    return sorted(devices)


def device_ips(devices, run=None, hccn_conf=HCCN_CONF):
    """{card: NIC address} for each card: hccn_tool first, /etc/hccn.conf for the cards it cannot answer.

    `run(args) -> stdout text` runs hccn_tool; tests pass recorded output."""
    run = run or _run_hccn_tool
    found, failures = {}, {}
    for device in devices:
        try:
            found[device] = parse_hccn_ip(run(["-i", str(device), "-ip", "-g"]))
        except (MbV3Error, OSError, subprocess.SubprocessError) as e:
            failures[device] = str(e)
    missing = [d for d in devices if d not in found]
    if missing and hccn_conf and os.path.isfile(hccn_conf):
        with open(hccn_conf) as f:
            conf = parse_hccn_conf(f.read())
        for device in missing:
            if device in conf:
                found[device] = conf[device]
    missing = [d for d in devices if d not in found]
    if missing:
        raise MbV3Error("no NIC address for card(s) %s: hccn_tool said %s, and %s has none (set them with "
                        "`hccn_tool -i N -ip -s address A netmask M` on the host)"
                        % (", ".join(map(str, missing)), failures.get(missing[0], "nothing"), hccn_conf))
    return found


def _run_hccn_tool(args):
    for tool in HCCN_TOOL_PATHS:
        try:
            result = subprocess.run([tool] + list(args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    universal_newlines=True, timeout=30)
        except FileNotFoundError:
            continue
        if result.returncode != 0:
            raise MbV3Error("%s %s exited with %d: %s" % (tool, " ".join(args), result.returncode,
                                                          result.stdout.strip()[:200]))
        return result.stdout
    raise MbV3Error("hccn_tool not found (looked for %s); mount the driver directory" % ", ".join(HCCN_TOOL_PATHS))


def host_ip():
    """This host's address as hccl_tools.py finds it (the name's address); pass --server-id when that
    is a container's or a loopback address."""
    return socket.gethostbyname(socket.gethostname())


def build(server_id, ips, first_rank=0):
    """One server's table: `ips` {card: address}, ranks first_rank.. in card order."""
    devices = [{"device_id": str(device), "device_ip": ips[device], "rank_id": str(first_rank + i)}
               for i, device in enumerate(sorted(ips))]
    return {"version": VERSION, "server_count": "1", "status": "completed",
            "server_list": [{"server_id": str(server_id), "device": devices, "host_nic_ip": "reserve"}]}


def merge(tables):
    """One table of several servers, in the order given, ranks renumbered 0.. across them."""
    servers, rank = [], 0
    for table in tables:
        for server in validate(table)["server_list"]:
            devices = []
            for device in _by_rank(server):
                devices.append(dict(device, rank_id=str(rank)))
                rank += 1
            servers.append(dict(server, device=devices))
    ids = [s["server_id"] for s in servers]
    if len(set(ids)) != len(ids):
        raise MbV3Error("server_id %s appears twice" % next(i for i in ids if ids.count(i) > 1))
    return {"version": VERSION, "server_count": str(len(servers)), "status": "completed", "server_list": servers}


def _by_rank(server):
    return sorted(server["device"], key=lambda d: int(d["rank_id"]))


def validate(table):
    """The table if HCCL can use it: completed, version 1.0, ranks 0..n-1 once each."""
    if table.get("status") != "completed":
        raise MbV3Error("rank table status is %r, not 'completed'" % table.get("status"))
    if table.get("version") != VERSION:
        raise MbV3Error("rank table version %r: only %s (server_list) is read here" % (table.get("version"), VERSION))
    servers = table.get("server_list") or []
    if not servers or int(table.get("server_count", -1)) != len(servers):
        raise MbV3Error("rank table lists %d server(s) but says server_count %r"
                        % (len(servers), table.get("server_count")))
    ranks = sorted(int(d["rank_id"]) for s in servers for d in s.get("device") or [])
    if ranks != list(range(len(ranks))) or not ranks:
        raise MbV3Error("rank table's rank_ids are %s, not 0..%d once each" % (ranks, len(ranks) - 1))
    return table


def local_ranks(table, server_id=None):
    """(rank_size, [(rank_id, card inside the container)]) for this server's cards, in rank order.

    The server is the entry whose server_id is `server_id` (HCCL-Controller writes the node's IP, the
    pod's status.hostIP); with one server and no id, that one. The cards a container is given are
    numbered 0..n-1 inside it in the order of their host numbers, so a card's number here is its
    position among its server's device_ids."""
    validate(table)
    servers = table["server_list"]
    if server_id:
        mine = [s for s in servers if s.get("server_id") == server_id]
        if not mine:
            raise MbV3Error("no server %r in the rank table (it lists %s)"
                            % (server_id, ", ".join(s.get("server_id", "?") for s in servers)))
        server = mine[0]
    elif len(servers) == 1:
        server = servers[0]
    else:
        raise MbV3Error("the rank table lists %d servers: say which is this one (--server-id)" % len(servers))
    local = sorted(int(d["device_id"]) for d in server["device"])
    rank_size = sum(len(s["device"]) for s in servers)
    return rank_size, [(int(d["rank_id"]), local.index(int(d["device_id"]))) for d in _by_rank(server)]


def wait_for_table(path, timeout, poll=2.0, clock=time.monotonic, sleep=time.sleep):
    """The table at `path` once its status is "completed" (HCCL-Controller replaces the ConfigMap's
    {"status": "initializing"} when every pod of the job has its cards)."""
    deadline = clock() + timeout
    status = "missing"
    while True:
        try:
            with open(path) as f:
                table = json.load(f)
            if table.get("status") == "completed":
                return table
            status = "at status %r" % table.get("status")
        except (OSError, ValueError) as e:
            status = "unreadable (%s)" % e
        if clock() >= deadline:
            raise MbV3Error("rank table %s is still %s after %ds: is HCCL-Controller running, and does the job's "
                            "rings-config ConfigMap carry the ring-controller.atlas label?" % (path, status, timeout))
        sleep(poll)


def cpu_ranges(count, index, cpus=None):
    """The `taskset -c` list of process `index` of `count`: the allowed CPUs split into equal runs."""
    cpus = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    if not 0 <= index < count:
        raise MbV3Error("process %d of %d" % (index, count))
    share = len(cpus) // count
    if share == 0:
        raise MbV3Error("%d CPU(s) for %d processes" % (len(cpus), count))
    mine = cpus[index * share:(index + 1) * share]
    runs = []
    start = previous = mine[0]
    for cpu in mine[1:] + [None]:
        if cpu is not None and cpu == previous + 1:
            previous = cpu
            continue
        runs.append(str(start) if start == previous else "%d-%d" % (start, previous))
        start = previous = cpu
    return ",".join(runs)


def shell_env(rank_size, ranks):
    """The assignments docker/npu-launch.sh evaluates."""
    values = {"RANK_SIZE": str(rank_size),
              "LOCAL_RANK_IDS": " ".join(str(r) for r, _ in ranks),
              "LOCAL_DEVICE_IDS": " ".join(str(d) for _, d in ranks)}
    return "".join("%s=%s\nexport %s\n" % (k, shlex.quote(v), k) for k, v in values.items())


def _write(table, output):
    text = json.dumps(table, indent=4) + "\n"
    if output in (None, "-"):
        sys.stdout.write(text)
        return
    directory = os.path.dirname(os.path.abspath(output))
    tmp = os.path.join(directory, ".%s.tmp" % os.path.basename(output))
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, output)
    print("rank table for %s card(s) written to %s" % (sum(len(s["device"]) for s in table["server_list"]), output),
          file=sys.stderr)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mbv3.ranktable", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    gen = sub.add_parser("generate", help="this server's table from hccn_tool or /etc/hccn.conf")
    gen.add_argument("--devices", default="0-7", help="host card numbers: 0-7, 0-3, 0,1 (default 0-7)")
    gen.add_argument("--server-id", default="", help="this host's IP (default: its name's address)")
    gen.add_argument("--hccn-conf", default=HCCN_CONF)
    gen.add_argument("--output", "-o", default="-")
    mer = sub.add_parser("merge", help="several servers' tables into one, ranks in the order given")
    mer.add_argument("tables", nargs="+")
    mer.add_argument("--output", "-o", default="-")
    env = sub.add_parser("env", help="RANK_SIZE, LOCAL_RANK_IDS, LOCAL_DEVICE_IDS for this server, as shell")
    env.add_argument("table")
    env.add_argument("--server-id", default="")
    env.add_argument("--wait", type=float, default=0, help="seconds to wait for status 'completed'")
    cpus = sub.add_parser("cpus", help="the CPU list of process INDEX of COUNT, for taskset -c")
    cpus.add_argument("count", type=int)
    cpus.add_argument("index", type=int)
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            ips = device_ips(parse_devices(args.devices), hccn_conf=args.hccn_conf)
            _write(build(args.server_id or host_ip(), ips), args.output)
        elif args.command == "merge":
            tables = []
            for path in args.tables:
                with open(path) as f:
                    tables.append(json.load(f))
            _write(merge(tables), args.output)
        elif args.command == "env":
            table = wait_for_table(args.table, args.wait)
            sys.stdout.write(shell_env(*local_ranks(table, args.server_id or None)))
        elif args.command == "cpus":
            print(cpu_ranges(args.count, args.index))
        else:
            parser.print_help()
            return 2
    except (MbV3Error, OSError, ValueError, KeyError) as e:
        print("mbv3.ranktable: %s" % (e if not isinstance(e, KeyError) else "rank table lacks %s" % e),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
