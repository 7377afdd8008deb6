"""hodei.jobs.LimitService: submitter limits set, listed and deleted."""

from __future__ import annotations

import grpc

from hodei._proto import limits_pb2, limits_pb2_grpc
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
    )


class LimitService(limits_pb2_grpc.LimitServiceServicer):
    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    @rpc
    def SetSubmitterLimit(
        self, request: limits_pb2.SetSubmitterLimitRequest, context: grpc.ServicerContext
    ) -> limits_pb2.SubmitterLimit:
        if request.unlimited and request.jobs:
            raise InvalidInput(
                f"a limit is a number of jobs or none (unlimited), not both; got {request.jobs} and none"
            )
        jobs = None if request.unlimited else request.jobs
        return _to_proto(self.limits.set(request.submitter, jobs, caller().name))

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
