"""hodei.jobs.AuditService: who changed the platform's configuration."""

from __future__ import annotations

from datetime import UTC

import grpc

from hodei._proto import audit_pb2, audit_pb2_grpc
from hodei.audit import Audit
from hodei.server.convert import timestamp
from hodei.server.edge import rpc


class AuditService(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, audit: Audit) -> None:
        self.audit = audit

    @rpc
    def ListChanges(
        self, request: audit_pb2.ListChangesRequest, context: grpc.ServicerContext
    ) -> audit_pb2.ListChangesResponse:
        since = request.since.ToDatetime(tzinfo=UTC) if request.HasField("since") else None
        found = self.audit.changes(request.kinds, request.actor, since, request.include_system, request.limit)
        return audit_pb2.ListChangesResponse(
            changes=[
                audit_pb2.Change(
                    at=timestamp(change.at),
                    actor=change.actor,
                    kind=change.kind,
                    subject=change.subject,
                    event_type=change.event_type,
                    change=change.change,
                )
                for change in found
            ]
        )
