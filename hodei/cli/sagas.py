"""``hodei-jobs-cli job describe`` and ``saga list|show``: the saga audit without SQL.

On a terminal a tree with durations and the failing step in red; piped, the same as
plain indented text; ``-o json`` the messages with every field present (absent times
as null), the shape documented in the README.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from rich.tree import Tree

from hodei._proto import jobs_pb2, sagas_pb2
from hodei.cli.client import Client
from hodei.cli.jobs import LATEST, add_job_id
from hodei.cli.jobs import describe as describe_job
from hodei.cli.parsing import add_limit
from hodei.cli.terminal import Terminal, one_line, when
from hodei.cli.webhooks import delivery_line
from hodei.domain.phases import seconds_text, size_text, usage_text
from hodei.wire import job_dict, message_dict


def _saga_label(saga: sagas_pb2.Saga) -> str:
    error = f" - {saga.error_message}" if saga.error_message else ""
    return (
        f"{saga.saga_type} saga {saga.id} attempt {saga.attempt}: {saga.state}, "
        f"{seconds_text(saga.duration_seconds)} (started {when(saga, 'started_at')}){error}"
    )


def _step_label(step: sagas_pb2.SagaStep) -> str:
    parts = [f"{step.order}. {step.name}: {step.state}"]
    if step.started_at.seconds or step.started_at.nanos:
        parts.append(seconds_text(step.duration_seconds))
    if step.retry_count:
        parts.append(f"{step.retry_count} {'retry' if step.retry_count == 1 else 'retries'}")
    if step.compensated:
        parts.append("compensation")
    text = ", ".join(parts)
    return f"{text} - {step.error_message}" if step.error_message else text


def _style(state: str) -> str:
    if state in ("FAILED", "COMPENSATION_FAILED"):
        return "bold red"
    if state in ("COMPENSATING", "COMPENSATED"):
        return "yellow"
    if state == "COMPLETED":
        return "green"
    return ""


def saga_tree(saga: sagas_pb2.Saga) -> Tree:
    tree = Tree(_saga_label(saga), style=_style(saga.state))
    steps = tree.add("steps")
    for step in saga.steps:
        steps.add(_step_label(step), style=_style(step.state))
    if saga.audit:
        audit = tree.add("audit")
        for entry in saga.audit:
            where = f" [{entry.step_name}]" if entry.step_name else ""
            audit.add(f"{when(entry, 'occurred_at')} {entry.event_type}{where}: {entry.message}")
    return tree


def describe(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    found = client.call(client.jobs.DescribeJob, jobs_pb2.GetJobRequest(job_id=args.job_id))
    if term.json:
        term.data(
            {
                "job": job_dict(found.job),
                "sagas": [message_dict(saga) for saga in found.sagas],
                "workers": [message_dict(worker) for worker in found.workers],
                "webhook_messages": [message_dict(message) for message in found.webhook_messages],
                "execs": [message_dict(ran) for ran in found.execs],
            }
        )
        return 0
    for line in describe_job(found.job):
        term.line(line)
    root = Tree("Phases")
    for phase in found.job.phases:
        shown = message_dict(phase)
        used = usage_text(shown["cpu_seconds"], shown["peak_memory_bytes"])
        detail = "; ".join(text for text in (phase.detail, used) if text)
        root.add(f"{when(phase, 'at')} {phase.name} (attempt {phase.attempt}){': ' + detail if detail else ''}")
    workers = Tree("Workers")
    for worker in found.workers:
        heard = when(worker, "last_heartbeat_at")
        error = f" - {worker.error_message}" if worker.error_message else ""
        workers.add(
            f"{worker.id} attempt {worker.attempt}: {worker.state} on {worker.provider_type} "
            f"{worker.provider_resource_id or '-'} (registered {when(worker, 'registered_at')}, "
            f"last heartbeat {heard}){error}",
            style=_style(worker.state),
        )
    sagas = Tree("Sagas")
    for saga in found.sagas:
        sagas.children.append(saga_tree(saga))
    for tree in (root, workers, sagas):
        term.tree(tree)
    if found.webhook_messages:
        told = Tree("Webhook messages")
        for message in found.webhook_messages:
            told.add(f"{message.webhook}: {delivery_line(message)}", style=_style(message.state))
        term.tree(told)
    if found.execs:
        ran = Tree("Commands run in it (job exec)")
        for command in found.execs:
            ran.add(exec_line(command), style="red" if command.exit_code else "")
        term.tree(ran)
    return 0


def exec_line(ran: jobs_pb2.JobExec) -> str:
    """``1 2026-12-06T01:14:02Z by alice (attempt 1): ps aux -> exited with code 0, 2.1 KiB out``."""
    said = one_line(" ".join(shlex.quote(word) for word in ran.argv))
    head = f"{ran.index} {when(ran, 'requested_at')} by {ran.requested_by or '-'} (attempt {ran.attempt}): {said}"
    if not ran.HasField("exit_code"):
        return f"{head} -> no end said (running, or its job ended first)"
    printed = f"{size_text(ran.stdout_bytes)} out"
    if ran.stderr_bytes:
        printed += f", {size_text(ran.stderr_bytes)} err"
    return f"{head} -> {ran.message}, {printed}"


def list_sagas(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    request = sagas_pb2.ListSagasRequest(
        state=args.state or "", saga_type=args.type or "", job_id=args.job_id or "", limit=args.limit
    )
    response = client.call(client.sagas.ListSagas, request)
    if term.json:
        term.data({"sagas": [message_dict(saga) for saga in response.sagas]})
        return 0
    term.table(
        ["ID", "TYPE", "STATE", "JOB", "ATTEMPT", "STARTED", "DURATION", "STEP", "ERROR"],
        [
            [
                saga.id,
                saga.saga_type,
                saga.state,
                saga.correlation_id,
                str(saga.attempt),
                when(saga, "started_at"),
                seconds_text(saga.duration_seconds),
                saga.current_step or "-",
                saga.error_message or "-",
            ]
            for saga in response.sagas
        ],
    )
    return 0


def show_saga(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    saga = client.call(client.sagas.GetSaga, sagas_pb2.GetSagaRequest(saga_id=args.saga_id))
    if term.json:
        term.data(message_dict(saga))
    else:
        term.tree(saga_tree(saga))
    return 0


def add_commands(commands: Any, job: Any) -> None:
    """Adds ``saga …`` and, to ``job``'s subcommands, ``job describe``."""
    parser = job.add_parser("describe", help="the job, its phases, workers, and every saga's steps and audit")
    add_job_id(parser)
    parser.set_defaults(handler=describe)
    saga = commands.add_parser("saga", help="the sagas that moved jobs, step by step").add_subparsers(
        dest="action", required=True
    )
    list_parser = saga.add_parser("list", help="list sagas, newest first")
    list_parser.add_argument("--state", help="IN_PROGRESS, COMPENSATING, COMPLETED or FAILED")
    list_parser.add_argument("--type", help="PROVISIONING, EXECUTION or RECOVERY")
    list_parser.add_argument(
        "--job", dest="job_id", metavar="JOB_ID", help=f"only this job's sagas (an id, a prefix of one, or {LATEST})"
    )
    add_limit(list_parser, 100, "sagas")
    list_parser.set_defaults(handler=list_sagas)
    show = saga.add_parser("show", help="a saga's steps (state, retries, duration, error) and audit trail")
    show.add_argument("saga_id", metavar="SAGA_ID", help="a saga's id, or a prefix of 8 characters or more")
    show.set_defaults(handler=show_saga)
