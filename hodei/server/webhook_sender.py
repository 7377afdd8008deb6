"""Sends webhook messages (``hodei.webhooks``): a task on each serving server's event
loop, so a slow or silent receiver holds a coroutine for its timeout, never a thread
and never a sweep. Messages are claimed a few at a time (leased: servers share them),
signed as the Standard Webhooks specification says (``webhook-id``,
``webhook-timestamp``, ``webhook-signature``: an HMAC-SHA256 of the id, the time and the
body, by the ``standardwebhooks`` library its authors keep), POSTed without following
redirects, and each answer recorded.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from importlib.metadata import version

import aiohttp
from standardwebhooks import Webhook as Signer

from hodei.errors import HodeiError
from hodei.webhooks import Due, Target, Webhooks

log = logging.getLogger(__name__)

# Messages sent at once; seconds an attempt waits for its answer; seconds between looks
# when none is due.
AT_ONCE = 16
ANSWER_TIMEOUT = 10.0
IDLE = 1.0


def signed_headers(due: Due, secrets: tuple[str, ...], now: datetime) -> dict[str, str]:
    """A signature by each secret, space-separated (the specification's way through a
    rotation: a receiver accepts the message when one of them is its secret's)."""
    return {
        "content-type": "application/json",
        "webhook-id": str(due.id),
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": " ".join(Signer(secret).sign(str(due.id), now, due.body) for secret in secrets),
    }


async def send_webhooks(webhooks: Webhooks) -> None:
    """Runs until cancelled; PostgreSQL away only pauses it."""
    timeout = aiohttp.ClientTimeout(total=ANSWER_TIMEOUT)
    agent = {"user-agent": f"hodei-jobs/{version('hodei-jobs')}"}
    async with aiohttp.ClientSession(timeout=timeout, headers=agent) as session:
        while True:
            try:
                due = await asyncio.to_thread(webhooks.claim, AT_ONCE)
                targets = {name: await asyncio.to_thread(webhooks.target, name) for name in {d.webhook for d in due}}
            except HodeiError as exc:
                log.warning("webhook messages could not be claimed: %s", exc)
                due = []
            if not due:
                await asyncio.sleep(IDLE)
                continue
            outcomes = await asyncio.gather(
                *(_attempt(session, webhooks, d, targets[d.webhook]) for d in due), return_exceptions=True
            )
            for found, outcome in zip(due, outcomes, strict=True):
                if isinstance(outcome, Exception):  # its record failed: due again when its lease ends
                    log.warning("webhook %s message %s: %s", found.webhook, found.id, outcome)


async def _attempt(session: aiohttp.ClientSession, webhooks: Webhooks, due: Due, target: Target | None) -> None:
    if target is None:
        await asyncio.to_thread(webhooks.give_up, due, f"webhook {due.webhook} was deleted")
        return
    status: int | None = None
    error = ""
    try:
        headers = signed_headers(due, target.secrets, datetime.now(UTC))
        async with session.post(target.url, data=due.body.encode(), headers=headers, allow_redirects=False) as answer:
            status = answer.status
            if not 200 <= status < 300:
                said = (await answer.content.read(300)).decode(errors="replace").strip()
                error = f"answered {status} {answer.reason or ''}".strip() + (f": {said}" if said else "")
    except TimeoutError:
        error = f"no answer within {ANSWER_TIMEOUT:g} s"
    except (aiohttp.ClientError, ValueError) as exc:
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    state = await asyncio.to_thread(webhooks.record, due, status, error)
    if state != "DELIVERED":
        log.warning("webhook %s message %s (attempt %d): %s; %s", due.webhook, due.id, due.attempts, error, state)
