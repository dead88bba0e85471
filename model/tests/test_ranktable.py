"""mbv3.ranktable: HCCL rank tables from recorded hccn_tool output, and each card's rank from a table
HCCL-Controller wrote. The recordings follow the tool's published form (`ipaddr:` then `netmask:`);
no Ascend host has been asked."""
import json
import subprocess
import sys

import pytest

from mbv3 import ranktable
from mbv3.errors import MbV3Error

# `hccn_tool -i N -ip -g` on an Atlas 800 (9000) with the usual 192.168.10x.10y scheme
HCCN_OUTPUT = {d: "ipaddr:192.168.10%d.10%d\nnetmask:255.255.255.0\n" % (d % 4, d // 4) for d in range(8)}
HCCN_CONF = "".join("address_%d=192.168.10%d.10%d\nnetmask_%d=255.255.255.0\n" % (d, d % 4, d // 4, d)
                    for d in range(8))


def recorded(args):
    assert args[0] == "-i" and args[2:] == ["-ip", "-g"]
    return HCCN_OUTPUT[int(args[1])]


def test_the_address_is_read_from_hccn_tool_output():
    assert ranktable.parse_hccn_ip(HCCN_OUTPUT[5]) == "192.168.101.101"
    with pytest.raises(MbV3Error, match="ipaddr"):
        ranktable.parse_hccn_ip("Get ip failed. ret = -8005\n")


def test_an_eight_card_table_has_the_format_hccl_tools_writes():
    table = ranktable.build("10.0.0.7", ranktable.device_ips(range(8), run=recorded, hccn_conf=None))
    assert table["version"] == "1.0" and table["status"] == "completed" and table["server_count"] == "1"
    (server,) = table["server_list"]
    assert server["server_id"] == "10.0.0.7" and server["host_nic_ip"] == "reserve"
    assert server["device"][0] == {"device_id": "0", "device_ip": "192.168.100.100", "rank_id": "0"}
    assert [d["rank_id"] for d in server["device"]] == [str(i) for i in range(8)]
    assert all(isinstance(v, str) for d in server["device"] for v in d.values())
    assert ranktable.validate(json.loads(json.dumps(table))) == table


def test_cards_hccn_tool_cannot_answer_come_from_hccn_conf(tmp_path):
    conf = tmp_path / "hccn.conf"
    conf.write_text(HCCN_CONF)

    def broken(args):
        if args[1] == "3":
            raise MbV3Error("hccn_tool -i 3 -ip -g exited with 1")
        return recorded(args)
    ips = ranktable.device_ips(range(4), run=broken, hccn_conf=str(conf))
    assert ips[3] == "192.168.103.100" and ips[0] == "192.168.100.100"
    with pytest.raises(MbV3Error, match="card.s. 3"):
        ranktable.device_ips(range(4), run=broken, hccn_conf=str(tmp_path / "absent"))


def test_device_lists():
    assert ranktable.parse_devices("0-7") == list(range(8))
    assert ranktable.parse_devices("4-7") == [4, 5, 6, 7]
    assert ranktable.parse_devices("3,1") == [1, 3]
    for bad in ("", "3-1", "1,1"):
        with pytest.raises(MbV3Error):
            ranktable.parse_devices(bad)


def two_servers():
    a = ranktable.build("10.0.0.7", {d: "192.168.100.%d" % d for d in range(8)})
    b = ranktable.build("10.0.0.8", {d: "192.168.101.%d" % d for d in range(8)})
    return ranktable.merge([a, b])


def test_merged_tables_number_ranks_across_servers():
    table = two_servers()
    assert table["server_count"] == "2"
    assert [d["rank_id"] for d in table["server_list"][1]["device"]] == [str(i) for i in range(8, 16)]
    with pytest.raises(MbV3Error, match="twice"):
        ranktable.merge([table, table])


def test_each_server_starts_its_own_ranks_on_the_cards_it_was_given():
    # HCCL-Controller's table for a job of two 4-card pods: the second pod got host cards 4-7
    table = {"version": "1.0", "status": "completed", "server_count": "2", "server_list": [
        {"server_id": "10.0.0.7", "device": [{"device_id": str(d), "device_ip": "x", "rank_id": str(d)}
                                             for d in range(4)]},
        {"server_id": "10.0.0.8", "device": [{"device_id": str(d), "device_ip": "y", "rank_id": str(d)}
                                             for d in range(4, 8)]}]}
    assert ranktable.local_ranks(table, "10.0.0.8") == (8, [(4, 0), (5, 1), (6, 2), (7, 3)])
    assert ranktable.local_ranks(table, "10.0.0.7")[1][0] == (0, 0)
    with pytest.raises(MbV3Error, match="say which"):
        ranktable.local_ranks(table)
    with pytest.raises(MbV3Error, match="no server '10.0.0.9'"):
        ranktable.local_ranks(table, "10.0.0.9")


def test_tables_hccl_cannot_use_are_refused():
    table = two_servers()
    for change, message in (({"status": "initializing"}, "not 'completed'"), ({"version": "0.9"}, "version"),
                            ({"server_count": "3"}, "server_count")):
        with pytest.raises(MbV3Error, match=message):
            ranktable.validate(dict(table, **change))
    table["server_list"][1]["device"][0]["rank_id"] = "3"
    with pytest.raises(MbV3Error, match="once each"):
        ranktable.validate(table)


def test_env_waits_for_hccl_controller_to_complete_the_table(tmp_path):
    path = tmp_path / "hccl.json"
    path.write_text('{"status":"initializing"}')
    now = [0.0]

    def sleep(seconds):   # the controller completes the table during the second wait
        now[0] += seconds
        if now[0] >= 4:
            path.write_text(json.dumps(two_servers()))
    table = ranktable.wait_for_table(str(path), 60, poll=2, clock=lambda: now[0], sleep=sleep)
    assert table["status"] == "completed" and now[0] == 4
    path.write_text('{"status":"initializing"}')
    waited = []
    with pytest.raises(MbV3Error, match="still at status 'initializing' after 10s"):
        ranktable.wait_for_table(str(path), 10, poll=5, clock=lambda: 5.0 * len(waited), sleep=waited.append)
    assert waited == [5, 5]


def test_env_prints_what_npu_launch_evaluates(tmp_path):
    path = tmp_path / "hccl.json"
    path.write_text(json.dumps(two_servers()))
    result = subprocess.run([sys.executable, "-m", "mbv3.ranktable", "env", str(path), "--server-id", "10.0.0.8"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert result.returncode == 0, result.stderr
    shell = subprocess.run(["sh", "-c", result.stdout + 'echo "$RANK_SIZE|$LOCAL_RANK_IDS|$LOCAL_DEVICE_IDS"'],
                           stdout=subprocess.PIPE, universal_newlines=True).stdout
    assert shell.strip() == "16|8 9 10 11 12 13 14 15|0 1 2 3 4 5 6 7"
    missing = subprocess.run([sys.executable, "-m", "mbv3.ranktable", "env", str(tmp_path / "none.json")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert missing.returncode == 1 and "HCCL-Controller" in missing.stderr and missing.stdout == ""


def test_generate_writes_the_table_from_hccn_conf_when_there_is_no_hccn_tool(tmp_path, monkeypatch):
    conf = tmp_path / "hccn.conf"
    conf.write_text(HCCN_CONF)
    monkeypatch.setattr(ranktable, "HCCN_TOOL_PATHS", (str(tmp_path / "no-such-tool"),))
    out = tmp_path / "rank_table.json"
    assert ranktable.main(["generate", "--devices", "0-3", "--server-id", "10.0.0.7", "--hccn-conf", str(conf),
                           "-o", str(out)]) == 0
    table = json.loads(out.read_text())
    assert [d["device_ip"] for d in table["server_list"][0]["device"]] == [
        "192.168.100.100", "192.168.101.100", "192.168.102.100", "192.168.103.100"]
    assert ranktable.main(["generate", "--devices", "0-3", "--hccn-conf", str(tmp_path / "absent")]) == 1


def test_cpu_binding_splits_the_allowed_cpus_into_equal_runs():
    assert [ranktable.cpu_ranges(8, i, range(192)) for i in (0, 7)] == ["0-23", "168-191"]
    assert ranktable.cpu_ranges(2, 1, [0, 1, 2, 3, 8, 9, 10, 11]) == "8-11"
    assert ranktable.cpu_ranges(2, 0, [0, 2, 3, 5]) == "0,2"
    with pytest.raises(MbV3Error):
        ranktable.cpu_ranges(8, 0, range(4))
