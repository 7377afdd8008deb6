"""hodei.jobs.LimitService: submitter limits set, listed and deleted."""

from __future__ import annotations

import grpc

from hodei._proto import limits_pb2, limits_pb2_grpc
from hodei.domain.limit import INHERITED, Bound
from hodei.errors import InvalidInput
from hodei.limits import Limits, SubmitterUse
from hodei.server.access import caller
from hodei.server.edge import rpc


def _to_proto(use: SubmitterUse) -> limits_pb2.SubmitterLimit:
    return limits_pb2.SubmitterLimit(
        submitter=use.submitter,
        limited=use.jobs is not None,
        jobs=use.jobs or 0,
        own=use.own,
        running=use.running,
        queued=use.queued,
        submitted_limited=use.submitted is not None,
        max_submitted=use.submitted or 0,
        submitted_own=use.submitted_own,
    )


def _bound(given: limits_pb2.Bound) -> Bound:
    which = given.WhichOneof("value")
    if which == "at_most":
        return given.at_most
    return None if which == "unlimited" else INHERITED


class LimitService(limits_pb2_grpc.LimitServiceServicer):
    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    @rpc
    def SetSubmitterLimit(
        self, request: limits_pb2.SetSubmitterLimitRequest, context: grpc.ServicerContext
    ) -> limits_pb2.SubmitterLimit:
        given = {
            name: _bound(bound)
            for name, bound in (("jobs", request.jobs), ("submitted", request.submitted))
            if bound.WhichOneof("value") is not None
        }
        if not given:
            raise InvalidInput("give a limit of jobs at once, of jobs not ended (submitted), or both")
        return _to_proto(self.limits.set(request.submitter, caller().name, given))

    @rpc
    def ListSubmitterLimits(
        self, request: limits_pb2.ListSubmitterLimitsRequest, context: grpc.ServicerContext
    ) -> limits_pb2.ListSubmitterLimitsResponse:
        return limits_pb2.ListSubmitterLimitsResponse(limits=[_to_proto(use) for use in self.limits.all()])

    @rpc
    def GetSubmitterLimit(
        self, request: limits_pb2.SubmitterLimitRequest, context: grpc.ServicerContext
    ) -> limits_pb2.SubmitterLimit:
        return _to_proto(self.limits.get(request.submitter))

    @rpc
    def DeleteSubmitterLimit(
        self, request: limits_pb2.SubmitterLimitRequest, context: grpc.ServicerContext
    ) -> limits_pb2.SubmitterLimit:
        return _to_proto(self.limits.delete(request.submitter, caller().name))
