"""hodei.jobs.PoolService: pools sized, listed and deleted."""

from __future__ import annotations

import grpc

from hodei._proto import pools_pb2, pools_pb2_grpc
from hodei.pools import Pools, PoolUse
from hodei.server.access import caller
from hodei.server.edge import rpc


def _to_proto(pool: PoolUse) -> pools_pb2.Pool:
    return pools_pb2.Pool(name=pool.name, size=pool.size, running=pool.running, queued=pool.queued)


class PoolService(pools_pb2_grpc.PoolServiceServicer):
    def __init__(self, pools: Pools) -> None:
        self.pools = pools

    @rpc
    def SetPool(self, request: pools_pb2.SetPoolRequest, context: grpc.ServicerContext) -> pools_pb2.Pool:
        return _to_proto(self.pools.set(request.name, request.size, caller().name))

    @rpc
    def ListPools(
        self, request: pools_pb2.ListPoolsRequest, context: grpc.ServicerContext
    ) -> pools_pb2.ListPoolsResponse:
        return pools_pb2.ListPoolsResponse(pools=[_to_proto(pool) for pool in self.pools.all()])

    @rpc
    def GetPool(self, request: pools_pb2.PoolRequest, context: grpc.ServicerContext) -> pools_pb2.Pool:
        return _to_proto(self.pools.get(request.name))

    @rpc
    def DeletePool(self, request: pools_pb2.PoolRequest, context: grpc.ServicerContext) -> pools_pb2.Pool:
        return _to_proto(self.pools.delete(request.name, caller().name))
