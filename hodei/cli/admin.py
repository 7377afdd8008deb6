"""``hodei-jobs-cli provider|queue|worker|metrics``: the operator's view."""

from __future__ import annotations

import argparse
from typing import Any

from google.protobuf.json_format import MessageToDict

from hodei._proto import metrics_pb2, providers_pb2, scheduler_pb2
from hodei.cli.client import Client
from hodei.cli.terminal import Terminal


def _providers(term: Terminal, providers: list[providers_pb2.Provider]) -> int:
    if term.json:
        term.data([MessageToDict(p, preserving_proto_field_name=True) for p in providers])
        return 0
    term.table(
        ["ID", "TYPE", "STATUS", "HEALTH", "HERE", "MESSAGE"],
        [
            [p.id, p.provider_type, p.status, p.health, "yes" if p.initialised else "no", p.health_message]
            for p in providers
        ],
    )
    return 0


def provider(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    if args.action == "list":
        response = client.call(client.providers.ListProviders, providers_pb2.ListProvidersRequest())
        return _providers(term, list(response.providers))
    method = {
        "get": client.providers.GetProvider,
        "enable": client.providers.EnableProvider,
        "disable": client.providers.DisableProvider,
        "health": client.providers.CheckProviderHealth,
    }[args.action]
    return _providers(term, [client.call(method, providers_pb2.GetProviderRequest(provider=args.provider))])


def queue(client: Client, term: Terminal, _: argparse.Namespace) -> int:
    status = client.call(client.scheduler.GetQueueStatus, scheduler_pb2.GetQueueStatusRequest())
    data = MessageToDict(status, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    if term.json:
        term.data(data)
    else:
        term.table(["STATE", "JOBS"], [[key.upper(), str(value)] for key, value in data.items()])
    return 0


def workers(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    response = client.call(
        client.scheduler.ListWorkers,
        scheduler_pb2.ListWorkersRequest(state=args.state or "", limit=args.limit),
    )
    if term.json:
        term.data([MessageToDict(w, preserving_proto_field_name=True) for w in response.workers])
        return 0
    term.table(
        ["ID", "JOB", "STATE", "PROVIDER", "RESOURCE", "ERROR"],
        [
            [w.id, w.job_id, w.state, w.provider_type, w.provider_resource_id or "-", w.error_message or "-"]
            for w in response.workers
        ],
    )
    return 0


def metrics(client: Client, term: Terminal, _: argparse.Namespace) -> int:
    response = client.call(client.metrics.GetMetrics, metrics_pb2.GetMetricsRequest())
    data = MessageToDict(response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
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
        ("disable", "refuse new jobs"),
        ("health", "probe the provider now"),
    ):
        parser = actions.add_parser(action, help=text)
        parser.add_argument("provider", help="docker, kubernetes, local, or an id")
        parser.set_defaults(handler=provider)

    commands.add_parser("queue", help="jobs per state").set_defaults(handler=queue)

    worker_parser = commands.add_parser("worker", help="workers").add_subparsers(dest="action", required=True)
    list_parser = worker_parser.add_parser("list", help="workers, newest first")
    list_parser.add_argument("--state", help="only this state (e.g. BUSY)")
    list_parser.add_argument("--limit", type=int, default=50)
    list_parser.set_defaults(handler=workers)

    commands.add_parser("metrics", help="counters of the server").set_defaults(handler=metrics)
