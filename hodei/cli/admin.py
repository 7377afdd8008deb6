"""``hodei-jobs-cli provider|pool|limit|queue|worker|metrics|outbox``: the operator's view."""

from __future__ import annotations

import argparse
import math
from typing import Any

from hodei._proto import limits_pb2, metrics_pb2, outbox_pb2, pools_pb2, providers_pb2, scheduler_pb2
from hodei.cli.client import Client
from hodei.cli.parsing import add_limit, bound_message, limit_bound, parse_size, whole
from hodei.cli.terminal import Terminal, when
from hodei.domain.phases import size_text
from hodei.domain.provider import MAX_MEMORY_BYTES
from hodei.errors import InvalidInput
from hodei.wire import message_dict

# A limit `limit set` was not given: it stays as it was.
_UNSAID: Any = object()


def _providers(term: Terminal, providers: list[providers_pb2.Provider]) -> int:
    if term.json:
        term.data([message_dict(p) for p in providers])
        return 0
    term.table(
        ["ID", "TYPE", "STATUS", "HEALTH", "WORKERS", "CPU", "MEMORY", "HERE", "MESSAGE"],
        [
            [
                p.id,
                p.provider_type,
                p.status,
                p.health,
                f"{p.workers_in_use}/{p.max_workers}",
                f"{p.cpu_cores_in_use:g}/{p.max_cpu_cores:g}" if p.max_cpu_cores else "-",
                f"{size_text(p.memory_bytes_in_use)}/{size_text(p.max_memory_bytes)}" if p.max_memory_bytes else "-",
                "yes" if p.initialised else "no",
                _why(p),
            ]
            for p in providers
        ],
    )
    return 0


def _why(provider: providers_pb2.Provider) -> str:
    """What stands between the provider and a job, or its health message."""
    reasons = []
    if not provider.initialised:
        reasons.append(f"not enabled on this server (HODEI_{provider.provider_type.upper()}_ENABLED)")
    if provider.status == "DISABLED":
        reasons.append(f"disabled (`provider enable {provider.provider_type}`)")
    if provider.health == "UNHEALTHY" or not reasons:
        reasons.append(provider.health_message or "-")
    return "; ".join(reasons)


def pool(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    if args.action == "list":
        response = client.call(client.pools.ListPools, pools_pb2.ListPoolsRequest())
        return _pools(term, list(response.pools), listed=True)
    if args.action == "set":
        request: Any = pools_pb2.SetPoolRequest(name=args.name, size=args.size)
    else:
        request = pools_pb2.PoolRequest(name=args.name)
    method = {"set": client.pools.SetPool, "get": client.pools.GetPool, "delete": client.pools.DeletePool}[args.action]
    return _pools(term, [client.call(method, request)], listed=False)


def _pools(term: Terminal, pools: list[pools_pb2.Pool], *, listed: bool) -> int:
    if term.json:
        term.data([message_dict(p) for p in pools] if listed else message_dict(pools[0]))
        return 0
    term.table(
        ["POOL", "SIZE", "RUNNING", "QUEUED"], [[p.name, str(p.size), str(p.running), str(p.queued)] for p in pools]
    )
    return 0


def limit(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    if args.action == "list":
        response = client.call(client.limits.ListSubmitterLimits, limits_pb2.ListSubmitterLimitsRequest())
        return _limits(term, list(response.limits), listed=True)
    if args.action == "set":
        given = {"jobs": args.jobs, "submitted": args.max_submitted}
        request: Any = limits_pb2.SetSubmitterLimitRequest(
            submitter=args.submitter,
            **{name: bound_message(bound) for name, bound in given.items() if bound is not _UNSAID},
        )
        if not request.HasField("jobs") and not request.HasField("submitted"):
            raise InvalidInput("limit set: give the jobs at once, --max-submitted, or both")
    else:
        request = limits_pb2.SubmitterLimitRequest(submitter=args.submitter)
    limits = client.limits
    method = {
        "set": limits.SetSubmitterLimit,
        "get": limits.GetSubmitterLimit,
        "delete": limits.DeleteSubmitterLimit,
    }[args.action]
    return _limits(term, [client.call(method, request)], listed=False)


def _limits(term: Terminal, limits: list[limits_pb2.SubmitterLimit], *, listed: bool) -> int:
    if term.json:
        term.data([message_dict(found) for found in limits] if listed else message_dict(limits[0]))
        return 0
    term.table(
        ["SUBMITTER", "LIMIT", "MAX SUBMITTED", "RUNNING", "QUEUED"],
        [
            [
                found.submitter,
                _limit_text(found.limited, found.jobs, found.own),
                _limit_text(found.submitted_limited, found.max_submitted, found.submitted_own),
                str(found.running),
                str(found.queued),
            ]
            for found in limits
        ],
    )
    return 0


def _limit_text(limited: bool, jobs: int, own: bool) -> str:
    """A limit, and whose it is: "4", "4 (*)" (every submitter's), "none", "-" (nobody's)."""
    if not limited:
        return "none" if own else "-"
    return str(jobs) if own else f"{jobs} (*)"


def provider(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    if args.action == "list":
        response = client.call(client.providers.ListProviders, providers_pb2.ListProvidersRequest())
        return _providers(term, list(response.providers))
    if args.action == "capacity":
        return _providers(term, [client.call(client.providers.SetProviderCapacity, _capacity_request(args))])
    method = {
        "get": client.providers.GetProvider,
        "enable": client.providers.EnableProvider,
        "disable": client.providers.DisableProvider,
        "health": client.providers.CheckProviderHealth,
    }[args.action]
    found = client.call(method, providers_pb2.GetProviderRequest(provider=args.provider))
    _providers(term, [found])
    # `provider health` answers with its exit code too, for scripts and probes.
    return 1 if args.action == "health" and found.health != "HEALTHY" else 0


def _capacity_request(args: argparse.Namespace) -> providers_pb2.SetProviderCapacityRequest:
    """Workers, CPU and memory: each one given is set, the others stay as they are."""
    if args.max_workers is None and args.cpus is None and args.memory is None:
        raise InvalidInput("give the workers it runs at once, --cpus, --memory, or several of them")
    request = providers_pb2.SetProviderCapacityRequest(
        provider=args.provider, max_workers=args.max_workers or 0, workers_unchanged=args.max_workers is None
    )
    if args.cpus is not None:
        request.max_cpu_cores = 0.0 if _none(args.cpus) else _cpus(args.cpus)
    if args.memory is not None:
        most = f"{MAX_MEMORY_BYTES} bytes (1 EiB)"
        request.max_memory_bytes = 0 if _none(args.memory) else parse_size(args.memory, "--memory", most)
    return request


def _none(value: str) -> bool:
    """``none``: no limit (as 0 is)."""
    return value.strip().lower() == "none"


def _cpus(value: str) -> float:
    try:
        cores = float(value)
    except ValueError:
        cores = math.nan
    if not math.isfinite(cores) or cores < 0:
        raise InvalidInput(f"--cpus takes CPU cores (4, 0.5) or none, got {value[:32]!r}")
    return cores


def dead_letters(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    request = outbox_pb2.ListDeadLettersRequest(limit=args.limit)
    rows = client.call(client.outbox.ListDeadLetters, request).dead_letters
    if term.json:
        term.data({"dead_letters": [message_dict(row) for row in rows]})
        return 0
    term.table(
        ["ID", "POSITION", "EVENT", "AGGREGATE", "JOB", "ATTEMPTS", "ERROR"],
        [
            [
                row.id,
                str(row.position),
                row.event_type,
                f"{row.aggregate_type} {row.aggregate_id}",
                row.job_id or "-",
                str(row.attempts),
                row.last_error,
            ]
            for row in rows
        ],
    )
    term.info(f"{len(rows)} dead letter(s); `outbox redrive ID` or `outbox redrive --all` puts them back")
    return 0


def redrive(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    request = outbox_pb2.RedriveRequest(ids=args.ids, all=args.all)
    redriven = list(client.call(client.outbox.Redrive, request).redriven)
    if term.json:
        term.data({"redriven": redriven})
    else:
        for row_id in redriven:
            term.value(row_id)
        term.success(f"{len(redriven)} row(s) back in the outbox: the relay delivers them again")
    return 0


def queue(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    status = client.call(client.scheduler.GetQueueStatus, scheduler_pb2.GetQueueStatusRequest(limit=args.limit))
    data = message_dict(status)
    if term.json:
        term.data(data)
        return 0
    counts = {key: value for key, value in data.items() if key not in {"queued", "order"}}
    term.table(["STATE", "JOBS"], [[key.upper(), str(value)] for key, value in counts.items()])
    if status.queued:
        term.line("")
        if status.order == "fair":
            term.line("In line by priority, then by submitters' turns (HODEI_QUEUE_ORDER=fair):")
        term.table(
            ["POSITION", "JOB", "NAME", "PROVIDER", "PRIORITY", "WAITING", "WHY"],
            [
                [
                    str(q.position) if q.position else "-",
                    q.job_id,
                    q.name,
                    q.provider or "-",
                    str(q.priority),
                    f"{q.waiting_seconds:.0f}s",
                    q.reason,
                ]
                for q in status.queued
            ],
        )
    return 0


def workers(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    response = client.call(
        client.scheduler.ListWorkers,
        scheduler_pb2.ListWorkersRequest(state=args.state or "", limit=args.limit, live=args.live),
    )
    if term.json:
        term.data([message_dict(w) for w in response.workers])
        return 0
    term.table(
        ["ID", "JOB", "STATE", "PROVIDER", "RESOURCE", "LAST HEARTBEAT", "ERROR"],
        [
            [
                w.id,
                w.job_id,
                w.state,
                w.provider_type,
                w.provider_resource_id or "-",
                when(w, "last_heartbeat_at", timespec="seconds"),
                w.error_message or "-",
            ]
            for w in response.workers
        ],
    )
    return 0


def metrics(client: Client, term: Terminal, _: argparse.Namespace) -> int:
    response = client.call(client.metrics.GetMetrics, metrics_pb2.GetMetricsRequest())
    data = message_dict(response)
    if term.json:
        term.data(data)
        return 0
    rows: list[list[str]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            rows.extend([f"{key}.{inner}", str(count)] for inner, count in value.items())
        else:
            rows.append([key, str(value)])
    term.table(["METRIC", "VALUE"], rows)
    return 0


def add_commands(commands: Any) -> None:
    provider_parser = commands.add_parser("provider", help="list, inspect, enable or disable providers")
    actions = provider_parser.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every provider").set_defaults(handler=provider)
    for action, text in (
        ("get", "one provider"),
        ("enable", "accept jobs"),
        ("disable", "refuse new jobs; those in its queue wait until it is enabled, running ones go on"),
        ("health", "probe the provider now"),
    ):
        parser = actions.add_parser(action, help=text)
        parser.add_argument("provider", help="docker, kubernetes, local, or an id")
        parser.set_defaults(handler=provider)

    capacity = actions.add_parser(
        "capacity", help="set how many workers a provider runs at once, and the CPU and memory its jobs ask for"
    )
    capacity.add_argument("provider", help="docker, kubernetes, local, or an id")
    capacity.add_argument(
        "max_workers",
        type=whole,
        nargs="?",
        help="workers at once (0: each server's default); not given: as they are",
    )
    capacity.add_argument("--cpus", help="CPU cores its jobs may ask for together (--cpu); none: no limit")
    capacity.add_argument("--memory", help="memory its jobs may ask for together (--memory): 8Gi; none: no limit")
    capacity.set_defaults(handler=provider)

    pools = commands.add_parser(
        "pool", help="pools: at most so many of the jobs naming one (job run --pool) run at once"
    ).add_subparsers(dest="action", required=True)
    pools.add_parser("list", help="every pool, with its jobs running and waiting").set_defaults(handler=pool)
    set_pool = pools.add_parser("set", help="create a pool or size it anew (the operate role)")
    set_pool.add_argument("name", help="1-63 letters, digits, '.', '_', '-'")
    set_pool.add_argument("size", type=whole, help="its jobs at once (0: they wait)")
    set_pool.set_defaults(handler=pool)
    for action, text in (("get", "one pool"), ("delete", "delete a pool: its queued jobs wait until it is set again")):
        parser = pools.add_parser(action, help=text)
        parser.add_argument("name", help="the pool's name")
        parser.set_defaults(handler=pool)

    limits = commands.add_parser(
        "limit", help="submitter limits: at most so many of one submitter's jobs run at once, or are not ended"
    ).add_subparsers(dest="action", required=True)
    limits.add_parser(
        "list", help="every submitter with a limit of its own or with jobs queued or running, and *"
    ).set_defaults(handler=limit)
    set_limit = limits.add_parser(
        "set",
        help="set a submitter's limits (the operate role)",
        description="Each limit is a number, none (no limit, whatever * says) or * (*'s); one not given "
        "stays as it was (*'s for a new limit).",
    )
    set_limit.add_argument("submitter", help="a token's name, or '*': every submitter without a limit of its own")
    set_limit.add_argument(
        "jobs",
        nargs="?",
        type=limit_bound,
        default=_UNSAID,
        help="its jobs at once (0: they wait); the queue holds the rest",
    )
    set_limit.add_argument(
        "--max-submitted",
        type=limit_bound,
        default=_UNSAID,
        metavar="N",
        help="its jobs not ended (queued, held or running) at most: a submission past it is refused",
    )
    set_limit.set_defaults(handler=limit)
    for action, text in (
        ("get", "a submitter's limit (its own or *'s) and its jobs"),
        ("delete", "delete a submitter's own limit: * limits its jobs, if set"),
    ):
        parser = limits.add_parser(action, help=text)
        parser.add_argument("submitter", help="a token's name, or '*'")
        parser.set_defaults(handler=limit)

    queue_parser = commands.add_parser("queue", help="jobs per state, and the jobs waiting for capacity")
    add_limit(queue_parser, 100, "queued jobs")
    queue_parser.set_defaults(handler=queue)

    worker_parser = commands.add_parser("worker", help="workers").add_subparsers(dest="action", required=True)
    list_parser = worker_parser.add_parser("list", help="workers, newest first")
    list_parser.add_argument("--state", help="only this state (e.g. BUSY)")
    list_parser.add_argument("--live", action="store_true", help="only workers that are not over")
    add_limit(list_parser, 50, "workers")
    list_parser.set_defaults(handler=workers)

    commands.add_parser("metrics", help="counters of the server").set_defaults(handler=metrics)

    outbox = commands.add_parser("outbox", help="deliveries that gave up").add_subparsers(dest="action", required=True)
    letters = outbox.add_parser("dead-letters", help="outbox rows whose delivery gave up, with their error")
    add_limit(letters, 100, "rows")
    letters.set_defaults(handler=dead_letters)
    again = outbox.add_parser("redrive", help="put dead-lettered rows back (attempts reset)")
    again.add_argument("ids", nargs="*", metavar="ID", help="rows from `outbox dead-letters`")
    again.add_argument("--all", action="store_true", help="every dead letter")
    again.set_defaults(handler=redrive)
