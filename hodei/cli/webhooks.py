"""``hodei-jobs-cli webhook …``: URLs told of each job that ends (the admin role's)."""

from __future__ import annotations

import argparse
from typing import Any

from hodei._proto import webhooks_pb2
from hodei.cli.client import Client
from hodei.cli.parsing import comma_list, duration
from hodei.cli.terminal import Terminal, when
from hodei.domain.base import check_name
from hodei.domain.webhook import (
    ENDINGS,
    PIPELINE_FINISHED,
    STARTED,
    check_about,
    check_overlap,
    check_selector,
    check_states,
    check_url,
)
from hodei.wire import message_dict


def _check(args: argparse.Namespace) -> None:
    """Refuses before connecting what the server would (its own rules)."""
    check_name(args.name, "a webhook")
    if args.action == "rotate":
        check_overlap(args.overlap)
    if args.action == "set":
        check_url(args.url)
        check_about(check_states(args.on), args.pipelines)
        check_selector(args.label or [])


def webhook(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    service = client.webhooks
    if args.action == "list":
        found = list(client.call(service.ListWebhooks, webhooks_pb2.ListWebhooksRequest()).webhooks)
        if term.json:
            term.data([message_dict(hook) for hook in found])
            return 0
        columns = ["WEBHOOK", "URL", "ABOUT", "ON", "LABELS", "PENDING", "FAILED", "DELIVERED"]
        term.table(columns, [_row(hook) for hook in found])
        return 0
    if args.action == "set":
        request = webhooks_pb2.SetWebhookRequest(
            name=args.name,
            url=args.url,
            states=check_states(args.on),
            label_selector=args.label or [],
            pipelines=args.pipelines,
        )
        answer = client.call(service.SetWebhook, request)
        if term.json:
            term.data(message_dict(answer))
            return 0
        _describe(term, answer.webhook)
        if answer.signing_secret:
            term.line(f"Signing secret: {answer.signing_secret}")
            term.info("keep it where the receiver checks signatures: it is not shown again")
        return 0
    if args.action == "rotate":
        rotation = webhooks_pb2.RotateWebhookSecretRequest(name=args.name, overlap_seconds=args.overlap)
        answer = client.call(service.RotateWebhookSecret, rotation)
        if term.json:
            term.data(message_dict(answer))
            return 0
        _describe(term, answer.webhook)
        term.line(f"Signing secret: {answer.signing_secret}")
        term.info("give it to the receiver: it is not shown again")
        return 0
    if args.action == "get":
        detail = client.call(service.GetWebhook, webhooks_pb2.WebhookRequest(name=args.name))
        if term.json:
            term.data(message_dict(detail))
            return 0
        _describe(term, detail.webhook)
        term.line("Messages (newest first)" if detail.deliveries else "Messages: none yet")
        for delivery in detail.deliveries:
            term.line(f"  {delivery_line(delivery)}")
        return 0
    if args.action == "delete":
        gone = client.call(service.DeleteWebhook, webhooks_pb2.WebhookRequest(name=args.name))
        if term.json:
            term.data(message_dict(gone))
            return 0
        term.line(f"Webhook {gone.name} deleted: its URL and signing secret are shredded")
        return 0
    if args.action == "test":
        sent = client.call(service.TestWebhook, webhooks_pb2.WebhookRequest(name=args.name))
    else:
        sent = client.call(service.Redeliver, webhooks_pb2.RedeliverRequest(delivery_id=args.delivery_id))
    if term.json:
        term.data(message_dict(sent))
    else:
        term.line(delivery_line(sent))
    return 0 if sent.state == "DELIVERED" or args.action == "redeliver" else 1


def _row(hook: webhooks_pb2.Webhook) -> list[str]:
    return [
        hook.name,
        hook.url,
        "pipelines" if hook.pipelines else "jobs",
        ",".join(hook.states),
        " ".join(hook.label_selector) or "-",
        str(hook.pending),
        str(hook.failed),
        str(hook.delivered),
    ]


def _describe(term: Terminal, hook: webhooks_pb2.Webhook) -> None:
    term.line(f"Webhook {hook.name}")
    term.line(f"URL: {hook.url}")
    term.line(f"About: {'pipelines (one message when a pipeline ends)' if hook.pipelines else 'jobs'}")
    term.line(f"On: {', '.join(hook.states)}")
    term.line(f"Labels: {' '.join(hook.label_selector) or '- (every job)'}")
    term.line(f"Changed: {when(hook, 'changed_at')} by {hook.changed_by or '-'}")
    if hook.HasField("previous_secret_until"):
        term.line(f"Previous secret: signs too until {when(hook, 'previous_secret_until')}")
    term.line(f"Messages: {hook.pending} pending, {hook.failed} failed, {hook.delivered} delivered")


def delivery_line(delivery: webhooks_pb2.WebhookDelivery) -> str:
    what = "pipeline" if delivery.type == PIPELINE_FINISHED else "job"
    about = f"{what} {delivery.job_id}" if delivery.job_id else delivery.type
    answer = f"HTTP {delivery.last_status}" if delivery.HasField("last_status") else "no answer"
    tried = f"{delivery.attempts} attempt{'s' if delivery.attempts != 1 else ''}"
    text = f"{delivery.id} {when(delivery, 'created_at')} {about}: {delivery.state}, {tried}"
    if delivery.attempts:
        text += f", last {answer}"
    if delivery.last_error and delivery.state != "DELIVERED":
        text += f" ({delivery.last_error})"
    if delivery.state == "PENDING" and delivery.HasField("next_at"):
        text += f"; next try {when(delivery, 'next_at')}"
    return text


def add_commands(commands: Any) -> None:
    hooks = commands.add_parser(
        "webhook", help="URLs told of each job that ends, by a signed POST (the admin role)"
    ).add_subparsers(dest="action", required=True)
    hooks.add_parser("list", help="every webhook, with its messages pending, failed and delivered").set_defaults(
        handler=webhook
    )
    set_hook = hooks.add_parser(
        "set",
        help="create a webhook or set it anew",
        description=(
            "Each job that ends in one of its states, with labels its selector matches, is POSTed to the URL "
            "as JSON ({type: job.finished, timestamp, data: the job as `job get -o json` prints it}), and with "
            "--on RUNNING each attempt's start ({type: job.started, data: the job as it was then}), signed as "
            "the Standard Webhooks specification says with the secret printed when the webhook is created. "
            "Set again, it keeps its secret; delete it and set it to have a new one."
        ),
    )
    set_hook.add_argument("name", help="1-63 letters, digits, '.', '_', '-'")
    set_hook.add_argument("--url", required=True, help="http:// or https:// (may hold a credential: shown to admins)")
    set_hook.add_argument(
        "--on",
        type=comma_list,
        default=[],
        metavar="STATES",
        help=f"the endings it is told of, comma-separated: {', '.join(ENDINGS)} (default: all), and "
        f"{STARTED}: each attempt's start",
    )
    set_hook.add_argument(
        "--label",
        "-l",
        action="append",
        metavar="SELECTOR",
        help="only jobs whose labels match: KEY=VALUE, KEY!=VALUE, KEY, !KEY (job list -l's); repeatable",
    )
    set_hook.add_argument(
        "--pipelines",
        action="store_true",
        help="told of pipelines instead of jobs (job run --file of several, a cron job's run of several): one "
        "message ({type: pipeline.finished, data: the pipeline as `job workflow -o json` prints it}) once all its "
        "jobs have ended, when the pipeline ended in one of --on's states and its first job's labels match",
    )
    for action, text in (
        ("get", "one webhook and its newest messages"),
        ("delete", "delete a webhook: its URL and secret shredded, its pending messages given up on"),
        ("test", "send it a webhook.test message now and say how it answered (exit 1 unless 2xx)"),
    ):
        parser = hooks.add_parser(action, help=text)
        parser.add_argument("name", help="the webhook's name")
        parser.set_defaults(handler=webhook, prepare=_check)
    set_hook.set_defaults(handler=webhook, prepare=_check)
    rotate = hooks.add_parser(
        "rotate",
        help="give a webhook a new signing secret; the old one signs too for the overlap",
        description=(
            "Prints a new signing secret. For the overlap each message carries two signatures (the "
            "Standard Webhooks header's space-separated list), the new secret's and the old one's, so the "
            "receiver may be given the new secret at any time within it without refusing a message; then "
            "the old one stops. A secret still signing from an earlier rotation stops at once."
        ),
    )
    rotate.add_argument("name", help="the webhook's name")
    rotate.add_argument(
        "--overlap",
        type=duration,
        default=86400.0,
        metavar="DURATION",
        help="how long the old secret goes on signing: seconds or e.g. 1h, 2d (default 24h; 0: it stops now; "
        "at most 7d)",
    )
    rotate.set_defaults(handler=webhook, prepare=_check)
    redeliver = hooks.add_parser("redeliver", help="send a message again now (its attempts counted anew)")
    redeliver.add_argument("delivery_id", metavar="ID", help="a message's id (`webhook get NAME` lists them)")
    redeliver.set_defaults(handler=webhook)
