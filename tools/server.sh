#!/usr/bin/env bash
# `just dev-server` / `just stop-server`: hodei-server in the background for development.
# Output goes to server.log (HODEI_SERVER_LOG); the pid to $HODEI_DEV_DIR/server.pid.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
DEV_DIR="${HODEI_DEV_DIR:-.hodei}"
PIDFILE="$DEV_DIR/server.pid"
LOG="${HODEI_SERVER_LOG:-server.log}"
running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
case "${1:-start}" in
  start)
    if running; then echo "hodei-server is already running (pid $(cat "$PIDFILE")); see $LOG"; exit 0; fi
    mkdir -p "$DEV_DIR"
    # `just dev-k8s` leaves the Kubernetes settings here.
    if [ -f .hodei/k8s.env ]; then set -a; . .hodei/k8s.env; set +a; fi
    export HODEI_DOCKER_ENABLED="${HODEI_DOCKER_ENABLED:-1}"
    export HODEI_LOCAL_ENABLED="${HODEI_LOCAL_ENABLED:-1}"
    export HODEI_KUBERNETES_ENABLED="${HODEI_KUBERNETES_ENABLED:-0}"
    touch "$LOG"
    first_line=$(($(wc -l <"$LOG") + 1))
    nohup .venv/bin/hodei-server >>"$LOG" 2>&1 &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 150); do
      # Ready once it says so (a readiness call could need a token).
      if tail -n "+$first_line" "$LOG" | grep -q "Serving hodei.jobs on"; then
        echo "hodei-server is up on port ${HODEI_GRPC_PORT:-50051} (pid $(cat "$PIDFILE")); log: $LOG"
        if [ "${HODEI_HTTP_PORT:-8080}" != 0 ]; then echo "web console: http://127.0.0.1:${HODEI_HTTP_PORT:-8080}"; fi
        exit 0
      fi
      running || { tail -30 "$LOG"; echo "hodei-server exited"; exit 1; }
      sleep 0.2
    done
    tail -30 "$LOG"; echo "hodei-server did not answer within 30s"; exit 1
    ;;
  stop)
    if ! running; then echo "hodei-server is not running"; rm -f "$PIDFILE"; exit 0; fi
    pid="$(cat "$PIDFILE")"
    kill -TERM "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    rm -f "$PIDFILE"
    echo "hodei-server stopped"
    ;;
  status)
    if running; then echo "hodei-server is running (pid $(cat "$PIDFILE"))"; else echo "hodei-server is not running"; exit 1; fi
    ;;
esac
