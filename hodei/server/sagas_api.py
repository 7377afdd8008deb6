"""hodei.jobs.SagaService: the saga audit without SQL (the seed's step 6.7 queries)."""

from __future__ import annotations

import grpc

from hodei._proto import sagas_pb2, sagas_pb2_grpc
from hodei.domain.saga import SagaState, SagaType
from hodei.errors import InvalidInput
from hodei.server.convert import saga_to_proto
from hodei.server.edge import rpc
from hodei.store.readmodels import ReadModels

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def _one_of(field: str, value: str, allowed: list[str]) -> str | None:
    if not value:
        return None
    if value.upper() not in allowed:
        raise InvalidInput(f"{field} must be one of {', '.join(allowed)}, got {value[:64]!r}")
    return value.upper()


class SagaService(sagas_pb2_grpc.SagaServiceServicer):
    def __init__(self, reads: ReadModels) -> None:
        self.reads = reads

    @rpc
    def ListSagas(
        self, request: sagas_pb2.ListSagasRequest, context: grpc.ServicerContext
    ) -> sagas_pb2.ListSagasResponse:
        if request.limit < 0:
            raise InvalidInput("limit must not be negative")
        sagas = self.reads.sagas(
            state=_one_of("state", request.state, [state.value for state in SagaState]),
            saga_type=_one_of("saga type", request.saga_type, [kind.value for kind in SagaType]),
            job_id=str(self.reads.resolve("job", request.job_id)) if request.job_id else None,
            limit=min(request.limit or DEFAULT_LIMIT, MAX_LIMIT),
        )
        return sagas_pb2.ListSagasResponse(sagas=[saga_to_proto(saga) for saga in sagas])

    @rpc
    def GetSaga(self, request: sagas_pb2.GetSagaRequest, context: grpc.ServicerContext) -> sagas_pb2.Saga:
        return saga_to_proto(self.reads.saga(request.saga_id))
