#!/usr/bin/env bash
# `just dev-db`: PostgreSQL for development, on the port and with the database that
# DATABASE_URL names (HODEI_DEV_DB_PORT overrides the port; default 5432, hodei_jobs).
# The seed's container (compose.yaml) where Docker can get postgres:15-alpine;
# otherwise a cluster from the installed binaries under $HODEI_DEV_DIR/postgres.
# `tools/dev-db.sh stop` stops whichever runs.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
DEV_DIR="${HODEI_DEV_DIR:-.hodei}"
read -r PORT DATABASE < <(.venv/bin/python -m hodei.devdb target)
export HODEI_DEV_DB_PORT="$PORT"
DOCKER=$(command -v /usr/bin/docker || command -v docker || true)
engine() { [ -n "$DOCKER" ] && "$DOCKER" info >/dev/null 2>&1; }
have_image() {
  engine || return 1
  "$DOCKER" image inspect postgres:15-alpine >/dev/null 2>&1 && return 0
  timeout 30 "$DOCKER" pull postgres:15-alpine >/dev/null 2>&1
}
compose() {
  if "$DOCKER" compose version >/dev/null 2>&1; then "$DOCKER" compose "$@";
  elif command -v docker-compose >/dev/null; then docker-compose "$@";
  else return 127; fi
}
if [ "${1:-up}" = stop ]; then
  if engine && "$DOCKER" container inspect hodei-jobs-postgres >/dev/null 2>&1; then
    "$DOCKER" rm -f hodei-jobs-postgres >/dev/null && echo "removed container hodei-jobs-postgres"
  fi
  .venv/bin/python -m hodei.devdb down --dir "$DEV_DIR/postgres"
  exit 0
fi
if [ "$DATABASE" = hodei_jobs ] && have_image && compose up -d --wait postgres 2>/dev/null; then
  echo "PostgreSQL is up in container hodei-jobs-postgres: postgres://postgres:postgres@localhost:$PORT/hodei_jobs"
else
  echo "No postgres:15-alpine image or compose here: starting a local cluster from the installed binaries"
  .venv/bin/python -m hodei.devdb up --dir "$DEV_DIR/postgres" --port "$PORT" --database "$DATABASE"
fi
