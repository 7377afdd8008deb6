#!/usr/bin/env bash
# `just dev-db`: PostgreSQL with database hodei_jobs on localhost:5432.
# The seed's container (compose.yaml) where Docker can get postgres:15-alpine;
# otherwise a cluster from the installed binaries under .hodei/postgres.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
DOCKER=$(command -v /usr/bin/docker || command -v docker || true)
have_image() {
  [ -n "$DOCKER" ] && "$DOCKER" info >/dev/null 2>&1 || return 1
  "$DOCKER" image inspect postgres:15-alpine >/dev/null 2>&1 && return 0
  timeout 30 "$DOCKER" pull postgres:15-alpine >/dev/null 2>&1
}
compose() {
  if "$DOCKER" compose version >/dev/null 2>&1; then "$DOCKER" compose "$@";
  elif command -v docker-compose >/dev/null; then docker-compose "$@";
  else return 127; fi
}
if have_image && compose up -d --wait postgres 2>/dev/null; then
  echo "PostgreSQL is up in container hodei-jobs-postgres: postgres://postgres:postgres@localhost:5432/hodei_jobs"
else
  echo "No postgres:15-alpine image or compose here: starting a local cluster from the installed binaries"
  .venv/bin/python -m hodei.devdb up --dir .hodei/postgres --port 5432 --database hodei_jobs
fi
