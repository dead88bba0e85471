#!/usr/bin/env bash
# A private Docker engine for the container tests (no systemd, no registry): its data root lives in a
# cache folder so images and build layers survive between runs on the same machine.
#   docker/engine.sh start   start dockerd unless it already answers; prints the DOCKER_HOST to export
#   docker/engine.sh stop    stop it by its PID
#   docker/engine.sh host    print the DOCKER_HOST value
# Needs dockerd (Debian: apt-get install docker.io) and root.
set -euo pipefail
CACHE="${MBV3_DOCKER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mbv3/docker}"
RUN_DIR="${MBV3_DOCKER_RUN:-/run/mbv3-docker}"
SOCK="$RUN_DIR/docker.sock"
PIDFILE="$RUN_DIR/dockerd.pid"
HOST="unix://$SOCK"
CLIENT="${DOCKER_CLIENT:-/usr/bin/docker}"

answers() { DOCKER_HOST="$HOST" "$CLIENT" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

case "${1:-}" in
  start)
    if answers; then echo "$HOST"; exit 0; fi
    command -v dockerd >/dev/null || { echo "engine.sh: dockerd not found (apt-get install docker.io)" >&2; exit 1; }
    mkdir -p "$CACHE/data" "$RUN_DIR/exec"
    setsid dockerd --data-root "$CACHE/data" --exec-root "$RUN_DIR/exec" --pidfile "$PIDFILE" \
      -H "$HOST" >"$RUN_DIR/dockerd.log" 2>&1 < /dev/null &
    for _ in $(seq 1 60); do
      if answers; then echo "$HOST"; exit 0; fi
      sleep 0.5
    done
    echo "engine.sh: dockerd did not answer within 30 s; its log:" >&2
    tail -20 "$RUN_DIR/dockerd.log" >&2
    exit 1 ;;
  stop)
    if [ -f "$PIDFILE" ]; then
      pid="$(cat "$PIDFILE")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || exit 0; sleep 0.5; done
      echo "engine.sh: dockerd $pid still running" >&2; exit 1
    fi ;;
  host) echo "$HOST" ;;
  *) echo "usage: $0 start|stop|host" >&2; exit 2 ;;
esac
