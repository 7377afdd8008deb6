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

# The suite runs in three processes, one test file at a time each; `-n 0` runs it in one.
# Run the test suite (real PostgreSQL, real Docker, real gRPC): just test [-n 0] [pytest args]
test *ARGS: bootstrap
    {{venv}}/pytest -n 3 --dist loadfile {{ARGS}}

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

# Regenerate deploy/grafana-dashboard.json from tools/gen_dashboard.py
dashboard:
    {{venv}}/python tools/gen_dashboard.py

# Start PostgreSQL on the port and database of DATABASE_URL (container if possible, else a local cluster)
dev-db: bootstrap
    bash tools/dev-db.sh

# Stop the development PostgreSQL that `just dev-db` started
stop-db:
    bash tools/dev-db.sh stop

# Stop everything `just dev` (and `just dev-k8s`) started: server, emulator, database
down: stop-server
    {{venv}}/python tools/k8s.py down
    bash tools/dev-db.sh stop

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

# Install the server into .venv (Python: nothing to compile) and check its entry point
build-server: bootstrap
    {{venv}}/hodei-server --help >/dev/null && echo "hodei-server: {{venv}}/hodei-server"

# Install the CLI into .venv and check its entry point
build-cli: bootstrap
    {{venv}}/hodei-jobs-cli --help >/dev/null && echo "hodei-jobs-cli: {{venv}}/hodei-jobs-cli"

# Everything: server, CLI and the worker image
build: build-server build-cli build-worker

# Remove caches, build output, the Kubernetes emulator, the worker images and the agent's volumes (the database stays)
clean:
    -{{venv}}/python tools/k8s.py down
    rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
    find . -name __pycache__ -type d -prune -not -path "./.venv/*" -exec rm -rf {} +
    -docker rmi -f hodei-jobs-worker:latest $(docker images -q 'hodei-worker-base') 2>/dev/null
    -docker volume rm $(docker volume ls -q --filter label=hodei.agent-bundle) 2>/dev/null

# The seed's whole procedure (Docker, then Kubernetes: a real cluster or the emulator), with its results table
e2e: dev-k8s
    {{venv}}/python -m e2e.procedure --kubernetes

# --- Jobs -------------------------------------------------------------------

cli := venv / "hodei-jobs-cli"

# Run a simple job on Docker and show its output (starts what it needs first)
job-hello-world: dev
    {{cli}} job run --name "hello-world-$(date +%s)" --provider docker --script examples/01-hello-world.sh --timeout 30 --follow

# Seed 5.1: echo on Docker
job-docker-hello:
    #!/usr/bin/env bash
    set -euo pipefail
    JOB_ID=$({{cli}} job run --name "test-echo-$(date +%s)" --provider docker --command "echo 'Hello from Hodei Docker Worker!'" --timeout 30)
    echo "Job ID: $JOB_ID"
    {{cli}} job watch --id "$JOB_ID" >/dev/null || true
    {{cli}} job get --id "$JOB_ID"

# Seed 5.2: multi-command on Docker
job-docker-data:
    #!/usr/bin/env bash
    set -euo pipefail
    JOB_ID=$({{cli}} job run --name "test-multicmd-$(date +%s)" --provider docker --command "bash -c 'echo Step1 && sleep 1 && echo Step2 && sleep 1 && echo Step3'" --timeout 60)
    echo "Job ID: $JOB_ID"
    {{cli}} job watch --id "$JOB_ID" >/dev/null || true
    {{cli}} job get --id "$JOB_ID"

# Seed 5.3: long-running (> 10 s) on Docker
job-docker-cpu:
    #!/usr/bin/env bash
    set -euo pipefail
    JOB_ID=$({{cli}} job run --name "test-long-$(date +%s)" --provider docker --command "for i in 1 2 3 4 5; do echo Iteration \$i; sleep 2; done" --timeout 120)
    echo "Job ID: $JOB_ID"
    {{cli}} job logs --id "$JOB_ID" --follow
    {{cli}} job get --id "$JOB_ID"

# Seed 5.4: environment variables on Docker
job-docker-env:
    #!/usr/bin/env bash
    set -euo pipefail
    JOB_ID=$({{cli}} job run --name "test-env-$(date +%s)" --provider docker --command "bash -c 'echo MY_VAR=\$MY_VAR && echo NUM_VAR=\$NUM_VAR'" --env "MY_VAR=hello_world,NUM_VAR=42" --timeout 30)
    echo "Job ID: $JOB_ID"
    {{cli}} job logs --id "$JOB_ID" --follow
    {{cli}} job get --id "$JOB_ID"

# Seed 5.5: arguments on Docker
job-docker-args:
    #!/usr/bin/env bash
    set -euo pipefail
    JOB_ID=$({{cli}} job run --name "test-args-$(date +%s)" --provider docker --command "bash" --args "-c 'echo Processing file test.txt && echo Done'" --timeout 30)
    echo "Job ID: $JOB_ID"
    {{cli}} job logs --id "$JOB_ID" --follow
    {{cli}} job get --id "$JOB_ID"

# Seed 5.1-5.5 on Docker
job-docker-all: job-docker-hello job-docker-data job-docker-cpu job-docker-env job-docker-args

# The example scripts in examples/ (06 fails on purpose with exit code 42)
job-examples-all:
    #!/usr/bin/env bash
    set -uo pipefail
    status=0
    for script in examples/*.sh; do
        name=$(basename "$script" .sh)
        {{cli}} job run --name "$name-$(date +%s)" --provider "${PROVIDER:-docker}" --script "$script" --timeout 120 --wait >/dev/null
        code=$?
        expected=0; [[ "$name" == *error-handling ]] && expected=42
        if [ "$code" = "$expected" ]; then echo "ok   $name (exit $code)"; else echo "FAIL $name (exit $code, expected $expected)"; status=1; fi
    done
    exit $status

# Seed 8.2: 20 jobs at once on Docker; all must succeed
job-concurrent-test:
    #!/usr/bin/env bash
    set -euo pipefail
    ids=()
    for i in $(seq 1 20); do ids+=("$({{cli}} job run --name "concurrent-$i-$(date +%s)" --provider docker --command "echo concurrent $i; sleep 1" --timeout 60)"); done
    failed=0
    for id in "${ids[@]}"; do {{cli}} job watch --id "$id" >/dev/null || failed=$((failed + 1)); done
    echo "20 jobs, $failed not SUCCEEDED"
    just psql "SELECT state, COUNT(*) as count FROM jobs WHERE created_at > NOW() - INTERVAL '1 hour' GROUP BY state"
    [ "$failed" = 0 ]

# Seed 8.1: 5 batch jobs on each available provider, then the state counts
job-provider-comparison:
    #!/usr/bin/env bash
    set -euo pipefail
    for provider in docker local kubernetes; do
        if ! {{cli}} -o json provider get "$provider" 2>/dev/null | grep -q '"initialised": true'; then echo "$provider: not enabled on this server, skipped"; continue; fi
        for i in 1 2 3 4 5; do
            JOB_ID=$({{cli}} job run --name "batch-test-$i-$(date +%s)" --provider "$provider" --command "echo 'Batch test $i'" --timeout 30)
            echo "$provider job $i: $JOB_ID"
        done
    done
    sleep 5
    just psql "SELECT provider_type, state, COUNT(*) as count FROM jobs WHERE created_at > NOW() - INTERVAL '1 hour' GROUP BY provider_type, state ORDER BY 1, 2"

# A simple test job, waited for
job-test:
    {{cli}} job run --name "test-$(date +%s)" --provider "${PROVIDER:-docker}" --command "echo hello" --timeout 30 --wait

# List jobs, newest first
job-list:
    {{cli}} job list --limit 50

# Show one job
job-details ID:
    {{cli}} job get --id {{ID}}
    {{cli}} job events --id {{ID}}

# Cancel a job
job-cancel ID:
    {{cli}} job cancel --id {{ID}}

# --- Kubernetes ---------------------------------------------------------------

# Kubernetes for the dev server: the configured cluster if it answers, else an emulator (says which)
dev-k8s: dev
    {{venv}}/python tools/k8s.py up
    bash tools/server.sh stop
    bash tools/server.sh start
    {{cli}} provider health kubernetes

# Seed 7.2: the server with the Kubernetes provider enabled, checked with one job
test-k8s-provider: dev-k8s
    {{cli}} job run --name "k8s-provider-check-$(date +%s)" --provider kubernetes --command "echo kubernetes provider works" --timeout 60 --follow

# Seed 7.3: echo on Kubernetes
job-k8s-hello:
    #!/usr/bin/env bash
    set -euo pipefail
    JOB_ID=$({{cli}} job run --name "test-k8s-$(date +%s)" --provider kubernetes --command "echo 'Hello from Kubernetes Worker!'" --timeout 60)
    echo "Job ID: $JOB_ID"
    {{cli}} job watch --id "$JOB_ID" >/dev/null || true
    {{cli}} job get --id "$JOB_ID"

# Seed 7.4: worker pods (-l hodei-worker) and the newest pod's output
job-k8s-pods:
    {{venv}}/python tools/k8s.py pods

# The seed's Kubernetes jobs: echo and multi-command
job-k8s-all: job-k8s-hello
    #!/usr/bin/env bash
    set -euo pipefail
    JOB_ID=$({{cli}} job run --name "test-k8s-multicmd-$(date +%s)" --provider kubernetes --command "bash -c 'echo Step1 && sleep 1 && echo Step2 && sleep 1 && echo Step3'" --timeout 60)
    echo "Job ID: $JOB_ID"
    {{cli}} job logs --id "$JOB_ID" --follow
    {{cli}} job get --id "$JOB_ID"

# Unit and integration tests (no end-to-end)
test-integration: (test "tests")

# The seed procedure on Docker and local processes against the dev server, with its table
test-multi-provider: dev
    {{venv}}/python -m e2e.procedure --local

# The same plus Kubernetes (a real cluster when configured, the emulator otherwise)
test-multi-provider-k8s: dev-k8s
    {{venv}}/python -m e2e.procedure --local --kubernetes

# --- Monitoring and debugging -----------------------------------------------

# Server, providers, queue, workers and containers at a glance
status:
    #!/usr/bin/env bash
    bash tools/server.sh status || true
    {{cli}} provider list || true
    {{cli}} queue || true
    {{cli}} worker list --limit 10 || true
    docker ps --filter "name=hodei-worker" --format "table {{{{.Names}}\t{{{{.Status}}\t{{{{.Image}}" 2>/dev/null || true

# The server log and the newest job logs
logs:
    #!/usr/bin/env bash
    tail -n 50 server.log 2>/dev/null || echo "no server.log (start the server with just dev-server)"
    for f in $(ls -t ${HODEI_LOG_DIR:-/tmp/hodei-logs}/*.log 2>/dev/null | head -3); do echo "== $f"; tail -n 10 "$f"; done

# Jobs not finished yet, with their age
debug-jobs:
    just psql "SELECT id, name, state, selected_provider_id, now() - created_at AS age, error_message FROM jobs WHERE state IN ('PENDING', 'ASSIGNED', 'RUNNING') ORDER BY created_at"

# Workers and the seconds since their last heartbeat
debug-workers:
    just psql "SELECT w.id, w.job_id, w.state, w.provider_type, w.provider_resource_id, round(extract(epoch FROM now() - l.last_seen_at)) AS heartbeat_age_s, l.connected FROM workers w LEFT JOIN hodei.worker_liveness l ON l.worker_id = w.id ORDER BY w.created_at DESC LIMIT 20"

# The jobs table, refreshed every 2 seconds (Ctrl-C to stop)
watch-jobs:
    #!/usr/bin/env bash
    while true; do clear; date; just psql "SELECT id, name, state, provider_type, exit_code, created_at FROM jobs ORDER BY created_at DESC LIMIT 20"; sleep 2; done

# Seed 4.1: the provider rows
verify-providers:
    just psql "SELECT id, provider_type, status, health, health_message FROM provider_configs ORDER BY provider_type"

# Probe every provider now and show the result
check-provider-health:
    #!/usr/bin/env bash
    for provider in docker kubernetes local; do {{cli}} provider health "$provider" 2>&1 | tail -n +1; done

# Benchmark the event store: saves and replay next to raw PostgreSQL inserts
bench-store: bootstrap
    {{venv}}/python -m bench.store

# Benchmark the outbox relay: lag and throughput next to a bare LISTEN/NOTIFY round trip
bench-relay: bootstrap
    {{venv}}/python -m bench.relay

# Benchmark an echo job on the local provider next to the cost of starting a worker
bench-local: bootstrap
    {{venv}}/python -m bench.local

# Benchmark an echo job on Docker next to a bare docker run of the worker image
bench-docker: bootstrap build-worker
    {{venv}}/python -m bench.docker

# Benchmark QueueJob with 500 log followers open, and memory around reading a million-line log
bench-follow: bootstrap
    {{venv}}/python -m bench.follow

# Jobs per second of the control plane, beside Procrastinate on the same database
bench-throughput: bootstrap
    {{venv}}/python -m bench.throughput

# Web console pages with 10,000 jobs, beside the SQL they run (HODEI_BENCH_CONSOLE_JOBS)
bench-console: bootstrap
    {{venv}}/python -m bench.console

# A job's file kept (--artifact) and fetched by the job after it, next to copying and hashing it
bench-artifacts: bootstrap
    {{venv}}/python -m bench.artifacts

# Every benchmark, one after the other
bench: bench-store bench-relay bench-local bench-docker bench-follow bench-throughput bench-console bench-artifacts
