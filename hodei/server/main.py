"""``hodei-server``: serve the API (default), or ``migrate``, ``replay``, ``relay``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hodei import config as configuration
from hodei._proto import (
    jobs_pb2,
    jobs_pb2_grpc,
    logs_pb2,
    logs_pb2_grpc,
    metrics_pb2,
    metrics_pb2_grpc,
    providers_pb2,
    providers_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)
from hodei.errors import HodeiError
from hodei.store import replay
from hodei.store.db import open_pool
from hodei.store.migrations import migrate

log = logging.getLogger("hodei.server")

SERVICE_NAMES = [
    jobs_pb2.DESCRIPTOR.services_by_name["JobExecutionService"].full_name,
    worker_pb2.DESCRIPTOR.services_by_name["WorkerAgentService"].full_name,
    scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name,
    providers_pb2.DESCRIPTOR.services_by_name["ProviderManagementService"].full_name,
    metrics_pb2.DESCRIPTOR.services_by_name["MetricsService"].full_name,
    logs_pb2.DESCRIPTOR.services_by_name["LogStreamService"].full_name,
]

BANNER = """\
╔═══════════════════════════════════════════════════════════════╗
║           Hodei Jobs Platform - gRPC Server                   ║
╚═══════════════════════════════════════════════════════════════╝"""


def _migrate(cfg: configuration.Config) -> None:
    from hodei.providers.registry import register_providers
    from hodei.server.runtime import SEED_PROVIDERS
    from hodei.store.app import HodeiStore

    applied = migrate(cfg.database_url)
    pool = open_pool(cfg.database_url, max_size=2, name="hodei-migrate")
    try:
        created = register_providers(HodeiStore(pool), SEED_PROVIDERS)
    finally:
        pool.close()
    names = ", ".join(m.path.name for m in applied) or "none pending"
    print(f"Database migrations completed ({names}); providers registered: {', '.join(created) or 'already'}")


def _replay(cfg: configuration.Config, apply: bool) -> int:
    pool = open_pool(cfg.database_url, max_size=2, name="hodei-replay")
    try:
        if apply:
            count = replay.apply(pool)
            print(f"rebuilt the read models from {count} events")
            return 0
        count, differences = replay.verify(pool)
    finally:
        pool.close()
    if not differences:
        print(f"replayed {count} events: the read models match domain_events")
        return 0
    for difference in differences:
        print(f"{difference.table}: differs")
        for row in difference.only_live:
            print(f"  only in the live table: {row}")
        for row in difference.only_replayed:
            print(f"  only in the replay:     {row}")
    print(f"replayed {count} events: {len(differences)} table(s) differ")
    return 1


def _wait_for_signal() -> threading.Event:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def _serve(cfg: configuration.Config) -> int:
    from hodei.server.admin_api import MetricsService, ProviderManagementService, SchedulerService
    from hodei.server.jobs_api import JobExecutionService
    from hodei.server.logs_api import LogStreamService
    from hodei.server.runtime import Runtime
    from hodei.server.worker_channel import WorkerAgentService

    print(BANNER, flush=True)
    log.info("Starting server on %s:%d", cfg.bind_host, cfg.port)
    if cfg.auto_migrate:
        migrate(cfg.database_url)
    runtime = Runtime(cfg)
    log.info("Connected to database")
    if cfg.auto_migrate:
        log.info("Database migrations completed")
    for provider_type in runtime.registry.providers:
        health_report = runtime.registry.check(provider_type)
        mark = "✓" if health_report.healthy else "!"
        log.info("  %s %s provider initialized (%s)", mark, provider_type.value.capitalize(), health_report.message)
    for provider_type, reason in runtime.registry.not_initialised.items():
        log.info("  - %s provider not initialized: %s", provider_type.value.capitalize(), reason)
    log.info("Workers dial %s (HODEI_SERVER_HOST)", cfg.worker_server_address)

    server = grpc.server(
        ThreadPoolExecutor(max_workers=256, thread_name_prefix="hodei-grpc"),
        options=[("grpc.keepalive_time_ms", 30_000), ("grpc.keepalive_timeout_ms", 10_000)],
    )
    workers = WorkerAgentService(
        runtime.store,
        runtime.signer,
        runtime.signals,
        runtime.logs,
        runtime.liveness,
        cfg.timing.heartbeat_interval,
    )
    jobs_pb2_grpc.add_JobExecutionServiceServicer_to_server(
        JobExecutionService(runtime.store, runtime.reads, runtime.signals), server
    )
    worker_pb2_grpc.add_WorkerAgentServiceServicer_to_server(workers, server)
    scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(SchedulerService(runtime.reads), server)
    providers_pb2_grpc.add_ProviderManagementServiceServicer_to_server(
        ProviderManagementService(runtime.store, runtime.reads, runtime.registry), server
    )
    metrics_pb2_grpc.add_MetricsServiceServicer_to_server(
        MetricsService(runtime.reads, runtime.relay.counters, lambda: len(workers.connected)), server
    )
    logs_pb2_grpc.add_LogStreamServiceServicer_to_server(
        LogStreamService(runtime.reads, runtime.logs, runtime.signals), server
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *SERVICE_NAMES]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection([*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    address = f"{cfg.bind_host}:{cfg.port}"
    if server.add_insecure_port(address) == 0:
        runtime.stop()
        raise HodeiError(f"cannot listen on {address}: the port is taken")
    stop = _wait_for_signal()
    runtime.start()
    server.start()
    log.info("  ✓ Saga orchestrator, outbox relay and sweeper started")
    log.info("Serving hodei.jobs on %s", address)
    stop.wait()
    log.info("Shutting down")
    health_servicer.enter_graceful_shutdown()
    server.stop(grace=5).wait()
    runtime.stop()
    return 0


def _relay(cfg: configuration.Config) -> int:
    from hodei.server.runtime import Runtime

    runtime = Runtime(cfg)
    stop = _wait_for_signal()
    runtime.start()
    log.info("relay %s running", cfg.server_id)
    stop.wait()
    runtime.stop()
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="hodei-server",
        description="The Hodei Jobs server. Configuration comes from the environment: "
        + ", ".join(configuration.VARIABLES),
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve the gRPC API (the default)")
    commands.add_parser("migrate", help="apply database migrations and register the providers")
    replay_parser = commands.add_parser("replay", help="rebuild the read models from domain_events")
    mode = replay_parser.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--verify",
        action="store_true",
        help="compare a rebuild with the live tables; exit 1 on any difference",
    )
    mode.add_argument("--apply", action="store_true", help="rebuild the live tables in place")
    commands.add_parser("relay", help="run only the outbox relay, saga engine and sweeper (to scale out)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = configuration.load()
        if args.command == "migrate":
            _migrate(cfg)
            code = 0
        elif args.command == "replay":
            code = _replay(cfg, apply=args.apply)
        elif args.command == "relay":
            code = _relay(cfg)
        else:
            code = _serve(cfg)
    except HodeiError as exc:
        print(f"hodei-server: {exc}", file=sys.stderr)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
