#!/bin/bash
# Several Ascend 910 cards in one container, as CANN's TensorFlow multi-card training runs: one
# `mbv3 train` process per card, each with its RANK_ID and ASCEND_DEVICE_ID, all reading the HCCL
# rank table RANK_TABLE_FILE (a path inside the container). Any other command (mbv3 om, eval, ...),
# or RANK_SIZE unset or 1 without a table to wait for, just runs.
#
# Where the ranks come from:
# - compose (one server): RANK_SIZE processes on cards FIRST_DEVICE.. as ranks 0..RANK_SIZE-1. A
#   RANK_TABLE_FILE that does not exist yet is written first from the cards' NIC addresses
#   (`python -m mbv3.ranktable generate`, which asks hccn_tool; SERVER_ID names this host).
# - Kubernetes (deploy/npu-training): RANK_TABLE_WAIT set: wait up to that many seconds for
#   HCCL-Controller to complete the table, then take RANK_SIZE and this server's ranks and cards from
#   it (`python -m mbv3.ranktable env`, this server being SERVER_ID, the node's IP).
# NPU_CPU_BIND=1 pins process i of n to the i-th n-th of the CPUs it may use (taskset), as ModelZoo's
# 8-card scripts do. SIGTERM/SIGINT go to every process (each saves a checkpoint and exits); when one
# process fails, the others are stopped the same way, so the container ends instead of hanging in a
# collective. The exit status is the first non-zero one.
set -eu
PYTHON="${MBV3_PYTHON:-python3}"
if [ "${2:-}" != "train" ]; then
    exec "$@"
fi
if [ -n "${RANK_TABLE_WAIT:-}" ]; then
    ranks="$("$PYTHON" -m mbv3.ranktable env "${RANK_TABLE_FILE:-}" --server-id "${SERVER_ID:-}" --wait "$RANK_TABLE_WAIT")"
    eval "$ranks"
fi
n="${RANK_SIZE:-1}"
if [ -z "${LOCAL_RANK_IDS:-}" ]; then
    if [ "$n" -le 1 ]; then
        exec "$@"
    fi
    if [ -z "${RANK_TABLE_FILE:-}" ]; then
        echo "npu-launch: RANK_SIZE=$n needs RANK_TABLE_FILE, the HCCL rank table, as a path inside the container" >&2
        exit 2
    fi
    first="${FIRST_DEVICE:-${ASCEND_DEVICE_ID:-0}}"
    if [ ! -f "$RANK_TABLE_FILE" ]; then
        echo "npu-launch: no $RANK_TABLE_FILE: writing it for cards $first-$((first + n - 1))" >&2
        "$PYTHON" -m mbv3.ranktable generate --devices "$first-$((first + n - 1))" \
            --server-id "${SERVER_ID:-}" --output "$RANK_TABLE_FILE"
    fi
    LOCAL_RANK_IDS="$(seq 0 $((n - 1)) | tr '\n' ' ')"
    LOCAL_DEVICE_IDS="$(seq "$first" $((first + n - 1)) | tr '\n' ' ')"
fi
read -r -a ranks <<< "$LOCAL_RANK_IDS"
read -r -a devices <<< "$LOCAL_DEVICE_IDS"
count=${#ranks[@]}
if [ "$count" -ne "${#devices[@]}" ]; then
    echo "npu-launch: ${#devices[@]} card(s) for $count rank(s)" >&2
    exit 2
fi
if [ "$count" -eq 1 ]; then
    export RANK_SIZE="$n" RANK_ID="${ranks[0]}" ASCEND_DEVICE_ID="${devices[0]}"
    exec "$@"
fi
pids=""
interrupted=0
stopping=0
# set before the first start: as PID 1 of a container, bash ignores a SIGTERM it has no trap for
# shellcheck disable=SC2086
trap 'interrupted=1; stopping=1; kill -TERM $pids 2>/dev/null || true' TERM INT
for i in "${!ranks[@]}"; do
    if [ "$stopping" = 1 ]; then
        break
    fi
    bind=()
    if [ "${NPU_CPU_BIND:-0}" = 1 ]; then
        bind=(taskset -c "$("$PYTHON" -m mbv3.ranktable cpus "$count" "$i")")
    fi
    echo "npu-launch: rank ${ranks[$i]} of $n on card ${devices[$i]}${bind[*]:+ (${bind[*]})}" >&2
    RANK_SIZE="$n" RANK_ID="${ranks[$i]}" ASCEND_DEVICE_ID="${devices[$i]}" "${bind[@]}" "$@" &
    pids="$pids $!"
done
interrupted=0
status=0
while :; do
    rc=0
    wait -n || rc=$?
    if [ "$interrupted" = 1 ]; then   # the wait was cut short by our own signal, not a process's exit
        interrupted=0
        continue
    fi
    if [ "$rc" -eq 127 ]; then        # no process left
        break
    fi
    if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
        status=$rc
        if [ "$stopping" = 0 ]; then
            echo "npu-launch: a rank exited with status $rc: stopping the others" >&2
            stopping=1
            # shellcheck disable=SC2086
            kill -TERM $pids 2>/dev/null || true
        fi
    fi
done
exit "$status"
