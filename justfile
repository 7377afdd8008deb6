# Hodei Jobs task runner. `just --list` shows every recipe.
# Settings come from the environment; these are the defaults of a local setup.

set shell := ["bash", "-euo", "pipefail", "-c"]

export DATABASE_URL := env_var_or_default("DATABASE_URL", "postgres://postgres:postgres@localhost:5432/hodei_jobs")
export HODEI_SERVER_HOST := env_var_or_default("HODEI_SERVER_HOST", "127.0.0.1")
venv := justfile_directory() / ".venv/bin"

# List the recipes
default:
    @just --list

# Prepare this machine: Docker engine, PostgreSQL binaries, the virtualenv
bootstrap:
    bash tools/bootstrap.sh

# Run the test suite (real PostgreSQL, real Docker, real gRPC)
test *ARGS: bootstrap
    {{venv}}/pytest {{ARGS}}

# Lint, format check and type check
lint:
    {{venv}}/ruff check .
    {{venv}}/ruff format --check .
    {{venv}}/mypy

# Format the code
fmt:
    {{venv}}/ruff format .
    {{venv}}/ruff check --fix .

# Regenerate hodei/_proto from proto/hodei/jobs
proto:
    {{venv}}/python tools/gen_proto.py

# Start PostgreSQL with database hodei_jobs (container if possible, else a local cluster)
dev-db: bootstrap
    bash tools/dev-db.sh

# Apply database migrations and register the seed providers (idempotent)
db-migrate:
    {{venv}}/hodei-server migrate

# Run one SQL statement against the development database: just psql "SELECT 1"
psql SQL:
    #!/usr/bin/env bash
    set -euo pipefail
    if docker ps --format '{{{{.Names}}' 2>/dev/null | grep -qx hodei-jobs-postgres; then
        docker exec hodei-jobs-postgres psql -U postgres -d hodei_jobs -c "{{SQL}}"
    else
        psql "$DATABASE_URL" -c "{{SQL}}"
    fi

# Build the worker image hodei-jobs-worker:latest (offline when no registry answers)
build-worker: bootstrap
    {{venv}}/python workers/build_image.py

# Start hodei-server in the background (log: server.log)
dev-server:
    bash tools/server.sh start

# Stop the background hodei-server
stop-server:
    bash tools/server.sh stop

# Everything for development: database, migrations, worker image, server
dev: dev-db db-migrate build-worker dev-server

# Run a simple job on Docker and show its output (starts what it needs first)
job-hello-world: dev
    {{venv}}/hodei-jobs-cli job run --name "hello-world-$(date +%s)" --provider docker --command "echo 'Hello World from Hodei Jobs!'" --timeout 30 --follow

# Benchmark the event store: saves and replay next to raw PostgreSQL inserts
bench-store: bootstrap
    {{venv}}/python -m bench.store

# Benchmark the outbox relay: lag and throughput next to a bare LISTEN/NOTIFY round trip
bench-relay: bootstrap
    {{venv}}/python -m bench.relay

# Benchmark an echo job on the local provider next to the cost of starting a worker
bench-local: bootstrap
    {{venv}}/python -m bench.local
