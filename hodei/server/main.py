"""``hodei-server``: serve the API (default), or ``migrate``, ``replay``, ``relay``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

# The server starts worker processes while gRPC threads run: gRPC's fork handlers must not
# run in those children (they only exec). See workers/hodei_worker/agent.py.
os.environ["GRPC_ENABLE_FORK_SUPPORT"] = "false"

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from hodei import config as configuration
from hodei import logfields
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
from hodei.cli.access import add_token_commands
from hodei.console.api import Api
from hodei.errors import HodeiError, InvalidInput
from hodei.server.edge import STREAMS
from hodei.server.preflight import (
    Misconfigured,
    check_connections,
    check_log_dir,
    check_peers,
    check_worker_address,
    listen_host,
    open_files,
)
from hodei.store import history, replay
from hodei.store.db import open_pool
from hodei.store.migrations import NewerDatabase, check_not_newer, migrate
from hodei.store.readmodels import ReadModels

if TYPE_CHECKING:
    from hodei.server.runtime import Runtime
    from hodei.store.api_tokens import ApiTokens

log = logging.getLogger("hodei.server")

# Larger than any message a worker sends (its log batches are bounded below this).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Threads for plain (unary) calls, and for the database work of streams.
API_THREADS = 16
IO_THREADS = 16
# The collector's thresholds once started: a young-generation pass every 10,000 net
# allocations (the default 700 ran one every few statements under load).
GC_THRESHOLDS = (10_000, 10, 10)
# The exit of a server whose settings, or database's version, must change before it can start:
# sysexits' EX_CONFIG, which deploy/hodei-server.service does not restart (a PostgreSQL not
# there yet exits 1, and is tried again).
EXIT_MISCONFIGURED = 78

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


def _schema(cfg: configuration.Config) -> None:
    """At start: the migrations applied (HODEI_AUTO_MIGRATE), or at least none applied that
    this version does not ship (a newer version migrated the database)."""
    if cfg.auto_migrate:
        migrate(cfg.database_url)
    else:
        check_not_newer(cfg.database_url)


def _replay(cfg: configuration.Config, apply: bool, job: str | None) -> int:
    check_not_newer(cfg.database_url)  # an older rebuild would write the read models by older rules
    pool = open_pool(cfg.database_url, max_size=2, name="hodei-replay")
    what = "the read models"
    try:
        if job is not None:
            job_id = ReadModels(pool).job(job).id
            what = f"job {job_id}'s rows"
            if apply:
                count = history.apply_job(pool, job_id)
                print(f"rebuilt {what} from its {count} events")
                return 0
            count, differences = history.verify_job(pool, job_id)
        elif apply:
            rebuilt = replay.apply(pool)
            print(
                f"rebuilt the read models from {rebuilt.events} events while writers ran "
                f"({rebuilt.rounds} catch-up rounds); the last {rebuilt.under_lock} and the swap held the event-log "
                f"lock for {rebuilt.locked_seconds * 1000:.1f} ms: no write waited longer"
            )
            if rebuilt.left:
                print(f"note: {rebuilt.left}", file=sys.stderr)
            return 0
        else:
            count, differences = replay.verify(pool)
    finally:
        pool.close()
    if not differences:
        print(f"replayed {count} events: {what} match domain_events")
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


def _listen(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> None:
    """Binds the port, without SO_REUSEPORT: a port in use is an error, not a second
    server that the kernel silently splits clients with."""
    try:
        bound = (
            server.add_insecure_port(address) if credentials is None else server.add_secure_port(address, credentials)
        )
    except RuntimeError:
        bound = 0
    if bound == 0:
        host, _, port = address.rpartition(":")
        reason = "the address is not on this host"
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            try:
                probe.bind((host.strip("[]"), int(port)))
            except OSError as exc:
                reason = exc.strerror or str(exc)
                if exc.errno == errno.EADDRINUSE:
                    reason += f" (port {port}; is another hodei-server running?)"
                elif isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
                    reason += " (HODEI_GRPC_BIND: an address of this host, or 0.0.0.0 for all of them)"
        raise Misconfigured(f"cannot listen on {address}: {reason}")


async def _add_services(
    server: grpc.aio.Server, runtime: Runtime, tokens: ApiTokens
) -> tuple[health.aio.HealthServicer, dict[str, object]]:
    """The API services, health and reflection; returns the health servicer and the
    servicers by full service name (the web console calls them in process)."""
    from hodei._proto import (
        access_pb2,
        access_pb2_grpc,
        artifacts_pb2,
        artifacts_pb2_grpc,
        audit_pb2,
        audit_pb2_grpc,
        cron_pb2,
        cron_pb2_grpc,
        limits_pb2,
        limits_pb2_grpc,
        outbox_pb2,
        outbox_pb2_grpc,
        pools_pb2,
        pools_pb2_grpc,
        report_pb2,
        report_pb2_grpc,
        sagas_pb2,
        sagas_pb2_grpc,
        webhooks_pb2,
        webhooks_pb2_grpc,
    )
    from hodei.audit import Audit
    from hodei.execs import ExecResults
    from hodei.liveness import Pace
    from hodei.server.access_api import AccessService
    from hodei.server.admin_api import MetricsService, ProviderManagementService, SchedulerService
    from hodei.server.artifacts_api import ArtifactService
    from hodei.server.audit_api import AuditService
    from hodei.server.cron_api import CronService
    from hodei.server.jobs_api import JobExecutionService
    from hodei.server.limits_api import LimitService
    from hodei.server.logs_api import LogStreamService
    from hodei.server.outbox_api import OutboxService
    from hodei.server.pools_api import PoolService
    from hodei.server.report_api import ReportService
    from hodei.server.sagas_api import SagaService
    from hodei.server.webhooks_api import WebhookService
    from hodei.server.worker_channel import WorkerAgentService

    cfg = runtime.config
    workers = WorkerAgentService(
        runtime.store,
        runtime.signer,
        runtime.signals,
        runtime.logs,
        runtime.liveness,
        runtime.secrets,
        Pace(cfg.timing.heartbeat_interval, cfg.timing.heartbeat_timeout, cfg.timing.max_heartbeats_per_second),
        runtime.faults,
        runtime.registry,
        runtime.metrics,
        runtime.engine,
        runtime.artifacts,
        cfg.worker_server_address,
    )
    added: list[tuple[Any, Any, Any]] = [
        (
            jobs_pb2,
            "JobExecutionService",
            JobExecutionService(
                runtime.store,
                runtime.reads,
                runtime.signals,
                runtime.secrets,
                runtime.pools,
                runtime.limits,
                runtime.config.timing.kill_grace,
                runtime.faults,
                runtime.clock,
                runtime.webhooks,
                runtime.inputs,
                ExecResults(runtime.artifacts),
                runtime.config.job_bounds,
                runtime.config.kubernetes,
            ),
        ),
        (worker_pb2, "WorkerAgentService", workers),
        (scheduler_pb2, "SchedulerService", SchedulerService(runtime.reads, runtime.admission)),
        (
            providers_pb2,
            "ProviderManagementService",
            ProviderManagementService(runtime.store, runtime.reads, runtime.registry, runtime.admission),
        ),
        (
            metrics_pb2,
            "MetricsService",
            MetricsService(runtime.reads, runtime.relay.counters, lambda: len(workers.sessions)),
        ),
        (logs_pb2, "LogStreamService", LogStreamService(runtime.reads, runtime.logs, runtime.signals)),
        (access_pb2, "AccessService", AccessService(tokens)),
        (sagas_pb2, "SagaService", SagaService(runtime.reads)),
        (outbox_pb2, "OutboxService", OutboxService(runtime.store.pool)),
        (
            cron_pb2,
            "CronService",
            CronService(runtime.cron_jobs, runtime.pools, runtime.limits, runtime.config.kubernetes, runtime.reads),
        ),
        (pools_pb2, "PoolService", PoolService(runtime.pools)),
        (limits_pb2, "LimitService", LimitService(runtime.limits)),
        (webhooks_pb2, "WebhookService", WebhookService(runtime.webhooks)),
        (audit_pb2, "AuditService", AuditService(Audit(runtime.pool))),
        (report_pb2, "ReportService", ReportService(runtime.pool)),
        (
            artifacts_pb2,
            "ArtifactService",
            ArtifactService(runtime.store, runtime.reads, runtime.artifacts, runtime.inputs),
        ),
    ]
    grpc_modules = {
        jobs_pb2: jobs_pb2_grpc,
        worker_pb2: worker_pb2_grpc,
        scheduler_pb2: scheduler_pb2_grpc,
        providers_pb2: providers_pb2_grpc,
        metrics_pb2: metrics_pb2_grpc,
        logs_pb2: logs_pb2_grpc,
        access_pb2: access_pb2_grpc,
        sagas_pb2: sagas_pb2_grpc,
        outbox_pb2: outbox_pb2_grpc,
        cron_pb2: cron_pb2_grpc,
        pools_pb2: pools_pb2_grpc,
        limits_pb2: limits_pb2_grpc,
        webhooks_pb2: webhooks_pb2_grpc,
        audit_pb2: audit_pb2_grpc,
        report_pb2: report_pb2_grpc,
        artifacts_pb2: artifacts_pb2_grpc,
    }
    servicers: dict[str, object] = {}
    for module, name, servicer in added:
        getattr(grpc_modules[module], f"add_{name}Servicer_to_server")(servicer, server)
        servicers[module.DESCRIPTOR.services_by_name[name].full_name] = servicer
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ["", *servicers]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection([*servicers, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    return health_servicer, servicers


def _serve(cfg: configuration.Config, *, banner: bool) -> int:
    """``banner``: the seed's greeting on stdout first (not in a JSON log, whose every line a
    collector parses)."""
    from hodei.server.runtime import Runtime
    from hodei.store.api_tokens import ApiTokens

    if banner:
        print(BANNER, flush=True)
    log.info("hodei-server %s", version("hodei-jobs"))
    _schema(cfg)
    check_connections(cfg)
    runtime = Runtime(cfg)
    open_files()  # once the local provider has read the limit its jobs keep
    try:
        tokens = ApiTokens(runtime.pool, runtime.signer)
        authentication = cfg.auth_required or tokens.required()
        host = listen_host(cfg, authentication)
        address = f"{host}:{cfg.port}"
        log.info(
            "Starting server on %s (authentication %s, TLS %s)",
            address,
            "on" if authentication else "off",
            ("mutual" if cfg.tls.mutual else "on") if cfg.tls.enabled else "off",
        )
        log.info("Connected to database")
        if cfg.auto_migrate:
            log.info("Database migrations completed")
        providers = [provider_type.value for provider_type in runtime.registry.providers]
        check_peers(runtime.instances, providers)
        check_worker_address(cfg, providers, host, runtime.registry.kubernetes_api())
        check_log_dir(cfg)
    except BaseException:
        runtime.stop()
        raise
    for provider_type in runtime.registry.providers:
        health_report = runtime.registry.check(provider_type)
        mark = "✓" if health_report.healthy else "!"
        log.info("  %s %s provider initialized (%s)", mark, provider_type.value.capitalize(), health_report.message)
    for provider_type, reason in runtime.registry.not_initialised.items():
        log.info("  - %s provider not initialized: %s", provider_type.value.capitalize(), reason)
    log.info("Workers dial %s (HODEI_SERVER_HOST)", cfg.worker_server_address)

    try:
        asyncio.run(_serve_api(runtime, tokens, address))
    finally:
        runtime.stop()
    return 0


async def _serve_api(runtime: Runtime, tokens: ApiTokens, address: str) -> None:
    """The API on an event loop: a stream (a connected worker, a log follower, a job
    watcher) is a task, not a thread; plain calls run on API_THREADS, and the streams'
    database work on IO_THREADS."""
    from hodei_worker.runner import reuse_freed_memory

    from hodei.server.access import Gatekeeper, keep_tokens
    from hodei.server.webhook_sender import send_webhooks

    reuse_freed_memory()  # artifacts cross this process in pieces of a few MiB
    cfg = runtime.config
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(IO_THREADS, thread_name_prefix="hodei-io"))
    gatekeeper = Gatekeeper(tokens, cfg.auth_required)
    STREAMS.most_callers, STREAMS.most_per_token = cfg.max_streams, cfg.max_streams_per_token
    server = grpc.aio.server(
        migration_thread_pool=ThreadPoolExecutor(API_THREADS, thread_name_prefix="hodei-api"),
        interceptors=[gatekeeper],
        options=[
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    health_servicer, servicers = await _add_services(server, runtime, tokens)
    _listen(server, address, runtime.certificates.grpc_credentials())
    console = await _start_console(runtime, Api(gatekeeper, servicers), address.rpartition(":")[0])
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runtime.start(address)
    await server.start()
    token_watch = asyncio.create_task(keep_tokens(tokens))
    webhook_sender = asyncio.create_task(send_webhooks(runtime.webhooks))
    _settle_collector()
    log.info("  ✓ Saga orchestrator, outbox relay and sweeper started")
    log.info("Serving hodei.jobs on %s", address)
    await stop.wait()
    log.info("Shutting down")
    await health_servicer.enter_graceful_shutdown()
    token_watch.cancel()
    webhook_sender.cancel()
    # A following stream (a worker's, a log follower's, the console's log pages) never ends
    # by itself: ended first. The grace is for calls under way.
    await STREAMS.close()
    if console is not None:
        await console.cleanup()
    await server.stop(grace=5)
    with contextlib.suppress(HodeiError):  # the last seconds' use of tokens, as keep_tokens would
        await asyncio.to_thread(tokens.record_use)


async def _start_console(runtime: Runtime, api: Api, host: str) -> web.AppRunner | None:
    """The web console and /metrics on HODEI_HTTP_PORT (0: none), on the gRPC port's
    address and with its TLS rules."""
    from hodei.console.app import Console
    from hodei.server.tls import ConsoleWatch

    cfg = runtime.config
    if cfg.http_port == 0:
        return None
    tls = cfg.tls
    secure = tls.cert is not None and tls.key is not None
    console = Console(
        api, runtime.metrics, runtime.pool, runtime.clock, secure=secure, metrics_public=cfg.metrics_public
    )
    application = console.application()
    watch = ConsoleWatch(runtime.certificates) if secure else None
    if watch is not None:

        async def watching(_: web.Application) -> AsyncIterator[None]:
            task = asyncio.create_task(watch.run())
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        application.cleanup_ctx.append(watching)
    runner = web.AppRunner(application, access_log=None, handle_signals=False)
    await runner.setup()
    context = watch.context if watch is not None else None
    site = web.TCPSite(runner, host.strip("[]"), cfg.http_port, ssl_context=context, reuse_port=False)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise Misconfigured(
            f"cannot listen on {host}:{cfg.http_port} for the web console: {exc.strerror or exc} "
            "(HODEI_HTTP_PORT; 0 turns the console off)"
        ) from None
    log.info("Web console and /metrics on %s://%s:%d", "https" if secure else "http", host, cfg.http_port)
    return runner


def _settle_collector() -> None:
    """What startup built (modules, protobuf descriptors, providers, pools) lives as long
    as the process: frozen out of the cyclic collector's scans, which then look only at
    what jobs allocate. Measured in a 200-job sim burst: the collector's share of the
    server's CPU 5.3% -> 1.9%, a full collection's pause 89 -> 32 ms (docs/benchmarks.md)."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _relay(cfg: configuration.Config) -> int:
    from hodei.server.runtime import Runtime

    check_not_newer(cfg.database_url)  # the serving servers migrate
    check_connections(cfg)
    runtime = Runtime(cfg)
    open_files()  # once the local provider has read the limit its jobs keep
    try:
        providers = [provider_type.value for provider_type in runtime.registry.providers]
        check_peers(runtime.instances, providers)
        check_log_dir(cfg)
    except BaseException:
        runtime.stop()
        raise
    stop = _wait_for_signal()
    runtime.start("-")
    _settle_collector()
    log.info("relay %s running", cfg.server_id)
    stop.wait()
    runtime.stop()
    return 0


def _token(cfg: configuration.Config, args: argparse.Namespace) -> int:
    """`token create|list|revoke`, straight against the database (to make the first one)."""
    from hodei.cli.parsing import parse_duration
    from hodei.cli.terminal import Terminal, reader_gone
    from hodei.roles import Role
    from hodei.store.api_tokens import ApiTokens

    _schema(cfg)
    pool = open_pool(cfg.database_url, max_size=1, name="hodei-token")
    try:
        tokens = ApiTokens(pool)
        if args.action == "create":
            row, secret = tokens.create(args.name, Role.parse(args.role), parse_duration(args.expires), "hodei-server")
            print(secret, flush=True)
            expiry = f", expires {row.expires_at:%Y-%m-%d %H:%M %Z}" if row.expires_at else ""
            print(f"created token {row.name} ({row.role}{expiry}); it is shown only once", file=sys.stderr)
        elif args.action == "revoke":
            row = tokens.revoke(args.name, "hodei-server")
            print(f"revoked token {row.name} at {row.revoked_at:%Y-%m-%d %H:%M:%S %Z}", file=sys.stderr)
        else:
            rows = [
                [
                    row.name,
                    row.role,
                    f"{row.created_at:%Y-%m-%d %H:%M}",
                    f"{row.expires_at:%Y-%m-%d %H:%M}" if row.expires_at else "never",
                    f"{row.last_used_at:%Y-%m-%d %H:%M}" if row.last_used_at else "never",
                    f"{row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "-",
                    row.created_by,
                    row.revoked_by or "-",
                ]
                for row in tokens.list()
            ]
            # The CLI's table: whole cells on a terminal, tab-separated rows when piped (a
            # table of its own cut every name and time to fit 80 columns, piped too).
            try:
                columns = ["NAME", "ROLE", "CREATED", "EXPIRES", "LAST USED", "REVOKED", "CREATED BY", "REVOKED BY"]
                Terminal("text").table(columns, rows)
            except BrokenPipeError:
                return reader_gone()
    finally:
        pool.close()
    return 0


def _secrets(cfg: configuration.Config, args: argparse.Namespace) -> int:
    from hodei.store.job_secrets import JobSecrets

    pool = open_pool(cfg.database_url, max_size=1, name="hodei-secrets")
    try:
        job_id = ReadModels(pool).job(args.job).id  # NotFound for an id no job has
        purged = JobSecrets(pool).purge(job_id)
    finally:
        pool.close()
    print(f"job {job_id}: " + ("secrets purged; their values cannot be recovered" if purged else "no secrets left"))
    return 0


def _refused(form: str, message: str) -> None:
    """Why the command stops: a line of the log's own format, for the collector that reads a
    JSON log; a person's `hodei-server: …` line otherwise."""
    if form == "json":
        log.critical("%s", message)
    else:
        print(f"hodei-server: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="hodei-server",
        description="The Hodei Jobs server. Configuration comes from the environment: "
        + ", ".join(configuration.VARIABLES),
    )
    parser.add_argument("--version", action="version", version=f"hodei-server {version('hodei-jobs')}")
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
    replay_parser.add_argument(
        "--job", metavar="ID", help="only this job's rows (job, workers, sagas, steps, audit, log file)"
    )
    commands.add_parser("relay", help="run only the outbox relay, saga engine and sweeper (to scale out)")
    add_token_commands(commands, "API tokens, straight in the database (to make the first one)")
    secrets_parser = commands.add_parser("secrets", help="job secrets")
    secrets_actions = secrets_parser.add_subparsers(dest="action", required=True)
    purge = secrets_actions.add_parser("purge", help="shred a job's secrets now (they cannot be recovered)")
    purge.add_argument("--job", required=True, help="the job id")
    args = parser.parse_args(argv)
    try:
        form, level = configuration.log_settings()
    except InvalidInput as exc:
        _refused("text", exc.message)  # no format to write it in yet
        sys.exit(EXIT_MISCONFIGURED)
    logfields.configure(form, level)
    try:
        try:
            cfg = configuration.load()
        except InvalidInput as exc:
            raise Misconfigured(exc.message) from None
        if args.command == "migrate":
            _migrate(cfg)
            code = 0
        elif args.command == "replay":
            code = _replay(cfg, apply=args.apply, job=args.job)
        elif args.command == "relay":
            code = _relay(cfg)
        elif args.command == "token":
            code = _token(cfg, args)
        elif args.command == "secrets":
            code = _secrets(cfg, args)
        else:
            code = _serve(cfg, banner=form == "text")
    except (Misconfigured, NewerDatabase) as exc:
        _refused(form, str(exc))
        code = EXIT_MISCONFIGURED
    except HodeiError as exc:
        _refused(form, str(exc))
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
