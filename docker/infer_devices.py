"""`make infer DEVICES=0,1,2,3`: the compose override that puts several Ascend chips into the
`infer` service, made from the one variable. It mounts /dev/davinciN for each host chip N listed
(replacing compose.yaml's single `/dev/davinci$DEVICE`) and sets the service's DEVICE_IDS to the
numbers pyACL gives those chips inside the container: 0 to N-1, in the order listed.

    python docker/infer_devices.py 0,1,2,3 > build/compose.infer-devices.yaml
    COMPOSE_FILE=compose.yaml:build/compose.infer-devices.yaml docker compose up infer

Standard library only: the Makefile runs it with the host's python3.
"""
import sys

# what every Ascend container needs besides its chips (compose.yaml's `infer` has the same)
SHARED_DEVICES = ("/dev/davinci_manager", "/dev/devmm_svm", "/dev/hisi_hdc")


def parse(text):
    """"0,1,2,3" -> [0, 1, 2, 3]; ValueError saying what is wrong."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or not all(item.isdigit() for item in items):
        raise ValueError("DEVICES=%r: give the host's chips as a comma-separated list of numbers, e.g. 0,1,2,3" % text)
    chips = [int(item) for item in items]
    if len(set(chips)) != len(chips):
        raise ValueError("DEVICES=%r: a chip is listed twice" % text)
    return chips


def override(chips):
    lines = ["# made by docker/infer_devices.py for DEVICES=%s (make infer): do not edit" % ",".join(map(str, chips)),
             "services:", "  infer:", "    devices: !override"]
    lines += ["      - /dev/davinci%d" % chip for chip in chips]
    lines += ["      - %s" % path for path in SHARED_DEVICES]
    lines += ["    environment:",
              '      DEVICE_IDS: "%s"' % ",".join(str(i) for i in range(len(chips)))]
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: infer_devices.py DEVICES (the host's chips, e.g. 0,1,2,3)", file=sys.stderr)
        return 2
    try:
        chips = parse(argv[0])
    except ValueError as e:
        print("infer_devices: error: %s" % e, file=sys.stderr)
        return 1
    sys.stdout.write(override(chips))
    return 0


if __name__ == "__main__":
    sys.exit(main())
