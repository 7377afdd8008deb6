"""hodei.jobs.WebhookService: webhooks set, listed, tested, deleted and their secrets
rotated, their messages sent again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc

from hodei._proto import webhooks_pb2, webhooks_pb2_grpc
from hodei.server.access import caller
from hodei.server.convert import timestamp
from hodei.server.edge import rpc
from hodei.webhooks import Defined, DeliveryRow, Webhooks

# How long TestWebhook waits for its message's first attempt (the senders look each second,
# and an attempt waits 10 s for its answer at most).
TEST_WAIT = 15.0


def _webhook(defined: Defined) -> webhooks_pb2.Webhook:
    row = defined.row
    return webhooks_pb2.Webhook(
        name=row.name,
        url=defined.url,
        states=row.states,
        label_selector=row.label_selector,
        changed_at=timestamp(row.changed_at),
        changed_by=row.changed_by or "",
        pending=row.pending,
        failed=row.failed,
        delivered=row.delivered,
        previous_secret_until=timestamp(defined.previous_until),
        pipelines=row.pipelines,
    )


def delivery_to_proto(row: DeliveryRow) -> webhooks_pb2.WebhookDelivery:
    return webhooks_pb2.WebhookDelivery(
        id=str(row.id),
        webhook=row.webhook,
        type=row.type,
        job_id=str(row.job_id or ""),
        state=row.state,
        attempts=row.attempts,
        last_status=row.last_status,
        last_error=row.last_error or "",
        created_at=timestamp(row.created_at),
        updated_at=timestamp(row.updated_at),
        next_at=timestamp(row.next_at),
    )


class WebhookService(webhooks_pb2_grpc.WebhookServiceServicer):
    def __init__(self, webhooks: Webhooks) -> None:
        self.webhooks = webhooks

    @rpc
    def SetWebhook(
        self, request: webhooks_pb2.SetWebhookRequest, context: grpc.ServicerContext
    ) -> webhooks_pb2.SetWebhookResponse:
        defined, secret = self.webhooks.set(
            request.name, request.url, request.states, request.label_selector, caller().name, request.pipelines
        )
        return webhooks_pb2.SetWebhookResponse(webhook=_webhook(defined), signing_secret=secret)

    @rpc
    def RotateWebhookSecret(
        self, request: webhooks_pb2.RotateWebhookSecretRequest, context: grpc.ServicerContext
    ) -> webhooks_pb2.SetWebhookResponse:
        defined, secret = self.webhooks.rotate(request.name, request.overlap_seconds, caller().name)
        return webhooks_pb2.SetWebhookResponse(webhook=_webhook(defined), signing_secret=secret)

    @rpc
    def ListWebhooks(
        self, request: webhooks_pb2.ListWebhooksRequest, context: grpc.ServicerContext
    ) -> webhooks_pb2.ListWebhooksResponse:
        return webhooks_pb2.ListWebhooksResponse(webhooks=[_webhook(found) for found in self.webhooks.all()])

    @rpc
    def GetWebhook(
        self, request: webhooks_pb2.WebhookRequest, context: grpc.ServicerContext
    ) -> webhooks_pb2.WebhookDetail:
        defined = self.webhooks.get(request.name)
        deliveries = [delivery_to_proto(row) for row in self.webhooks.deliveries(request.name)]
        return webhooks_pb2.WebhookDetail(webhook=_webhook(defined), deliveries=deliveries)

    @rpc
    def DeleteWebhook(
        self, request: webhooks_pb2.WebhookRequest, context: grpc.ServicerContext
    ) -> webhooks_pb2.Webhook:
        return _webhook(self.webhooks.delete(request.name, caller().name))

    @rpc
    async def TestWebhook(
        self, request: webhooks_pb2.WebhookRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> webhooks_pb2.WebhookDelivery:
        """On the loop, not in a call's transaction: the message must be committed for a
        sender to see it while this waits."""
        sent = await asyncio.to_thread(self.webhooks.test, request.name)
        deadline = time.monotonic() + TEST_WAIT
        while True:
            found = await asyncio.to_thread(self.webhooks.delivery, sent)
            tried = found.state != "PENDING" or found.last_status is not None or found.last_error is not None
            if tried or time.monotonic() > deadline:
                return delivery_to_proto(found)
            await asyncio.sleep(0.1)

    @rpc
    def Redeliver(
        self, request: webhooks_pb2.RedeliverRequest, context: grpc.ServicerContext
    ) -> webhooks_pb2.WebhookDelivery:
        return delivery_to_proto(self.webhooks.redeliver(request.delivery_id))
