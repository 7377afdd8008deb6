#!/usr/bin/env bash
# Makes this machine ready to build, run and test Hodei Jobs; safe to run again.
#   - a Docker engine (Debian's docker.io, started with host networking only),
#   - PostgreSQL server binaries, Debian's python3.11 and `file` (offline worker image),
#   - the project virtualenv (.venv) with the dev extras.
# As root it installs what is missing; otherwise it says what is missing.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${HODEI_STATE_DIR:-/tmp/hodei-state}"
mkdir -p "$STATE"
say() { printf '[bootstrap] %s\n' "$*"; }
is_root() { [ "$(id -u)" = 0 ]; }
APT_UPDATED=0
apt_install() {
  if ! is_root; then say "missing: $* (install it, or run as root)"; return 1; fi
  if [ "$APT_UPDATED" = 0 ]; then apt-get update -qq; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# PostgreSQL server binaries, and what the offline worker image is assembled from.
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || apt_install postgresql
[ -x /usr/bin/python3.11 ] || apt_install python3.11
command -v file >/dev/null || apt_install file
# Headless Chromium for the console's browser tests (Playwright drives it; no browser download).
command -v chromium >/dev/null || apt_install chromium
# systemd-analyze checks deploy/hodei-server.service.
command -v systemd-analyze >/dev/null || apt_install systemd
# libfaketime: a PostgreSQL whose clock is not the server's (e2e/test_faults).
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || apt_install libfaketime
# Prometheus and promtool: the alerts' unit tests (tests/test_alerts) and a real scrape of a
# server evaluating every alert and dashboard query (e2e/test_prometheus). No service starts.
command -v promtool >/dev/null || apt_install prometheus
# iptables: a network cut between a server and PostgreSQL (e2e/test_faults).
command -v iptables >/dev/null || [ -x /usr/sbin/iptables ] || apt_install iptables

# Docker engine: the Debian client talks to it; never the default 172.17 bridge.
DOCKER=/usr/bin/docker
if ! "$DOCKER" info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || apt_install docker.io
  if is_root && [ -z "${DOCKER_HOST:-}" ]; then
    PIDFILE="$STATE/dockerd.pid"
    if [ -f "$PIDFILE" ]; then
      pid="$(cat "$PIDFILE")"
      if ! kill -0 "$pid" 2>/dev/null || grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; then rm -f "$PIDFILE"; fi
    fi
    [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null && rm -f /var/run/docker.pid
    say "starting dockerd (host network only)"
    nohup dockerd -H unix:///var/run/docker.sock --pidfile "$PIDFILE" --bridge=none --iptables=false \
      >>"$STATE/dockerd.log" 2>&1 &
    for _ in $(seq 1 300); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 0.2; done
    "$DOCKER" info >/dev/null 2>&1 || { tail -20 "$STATE/dockerd.log"; say "dockerd did not start"; exit 1; }
    echo started >"$STATE/dockerd.started-by-bootstrap"
  else
    say "no Docker engine answers; Docker tests will be skipped"
  fi
fi

# The virtualenv.
PYTHON="${HODEI_PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  say "creating .venv with $PYTHON"
  "$PYTHON" -m venv "$ROOT/.venv"
fi
STAMP="$ROOT/.venv/.installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  say "installing hodei-jobs and its dev tools into .venv"
  "$ROOT/.venv/bin/pip" install --quiet --disable-pip-version-check -e "$ROOT[dev]" 2> >(grep -v "^WARNING: Location" >&2)
  touch "$STAMP"
fi
say "ready"
