#!/bin/sh
# Several Ascend 910 cards in one container, as CANN's TensorFlow multi-card training runs: one
# `mbv3 train` process per card, process i with RANK_ID=i on ASCEND_DEVICE_ID=FIRST_DEVICE+i, all
# reading the HCCL rank table RANK_TABLE_FILE (a path inside the container, e.g. /runs/rank_table.json).
# With RANK_SIZE unset or 1, or for any other command (mbv3 om, eval, ...), it just runs the command.
# SIGTERM/SIGINT go to every process (each saves a checkpoint and exits); the exit status is the
# first non-zero one.
set -eu
n="${RANK_SIZE:-1}"
if [ "$n" -le 1 ] || [ "${2:-}" != "train" ]; then
    exec "$@"
fi
if [ ! -f "${RANK_TABLE_FILE:-}" ]; then
    echo "npu-launch: RANK_SIZE=$n needs RANK_TABLE_FILE, the HCCL rank table, as a file inside the container (got '${RANK_TABLE_FILE:-}')" >&2
    exit 2
fi
first="${FIRST_DEVICE:-${ASCEND_DEVICE_ID:-0}}"
pids=""
i=0
while [ "$i" -lt "$n" ]; do
    ASCEND_DEVICE_ID=$((first + i)) RANK_ID=$i "$@" &
    pids="$pids $!"
    i=$((i + 1))
done
# shellcheck disable=SC2086
trap 'kill -TERM $pids 2>/dev/null || true' TERM INT
status=0
for pid in $pids; do
    while :; do
        rc=0
        wait "$pid" || rc=$?
        kill -0 "$pid" 2>/dev/null || break   # still running: the wait was cut short by a signal
    done
    if [ "$status" -eq 0 ] && [ "$rc" -ne 0 ]; then status=$rc; fi
done
exit "$status"
