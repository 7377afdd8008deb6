"""The gRPC connection the CLI commands share."""

from __future__ import annotations

import getpass
from typing import Any

import grpc

from hodei._proto import (
    jobs_pb2_grpc,
    logs_pb2_grpc,
    metrics_pb2_grpc,
    providers_pb2_grpc,
    scheduler_pb2_grpc,
)

DEFAULT_SERVER = "localhost:50051"
SERVER_VARIABLE = "HODEI_SERVER"


def _address(server: str) -> str:
    """Accepts ``host:port`` and the seed's ``http://host:port``."""
    for prefix in ("http://", "grpc://"):
        if server.startswith(prefix):
            return server[len(prefix) :]
    return server


class Client:
    def __init__(self, server: str, timeout: float = 30.0) -> None:
        self.address = _address(server)
        self.channel = grpc.insecure_channel(self.address)
        self.timeout = timeout
        self.metadata = (("x-hodei-actor", f"cli:{getpass.getuser()}"),)
        self.jobs = jobs_pb2_grpc.JobExecutionServiceStub(self.channel)
        self.logs = logs_pb2_grpc.LogStreamServiceStub(self.channel)
        self.providers = providers_pb2_grpc.ProviderManagementServiceStub(self.channel)
        self.scheduler = scheduler_pb2_grpc.SchedulerServiceStub(self.channel)
        self.metrics = metrics_pb2_grpc.MetricsServiceStub(self.channel)

    def call(self, method: Any, request: Any) -> Any:
        return method(request, timeout=self.timeout, metadata=self.metadata)

    def stream(self, method: Any, request: Any) -> Any:
        return method(request, metadata=self.metadata)

    def close(self) -> None:
        self.channel.close()
