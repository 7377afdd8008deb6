"""hodei.jobs.AccessService: API tokens, managed by admins; WhoAmI for anyone."""

from __future__ import annotations

import grpc

from hodei._proto import access_pb2, access_pb2_grpc
from hodei.roles import Role
from hodei.server.access import caller
from hodei.server.convert import timestamp
from hodei.server.edge import rpc
from hodei.store.api_tokens import ApiToken, ApiTokens


def token_to_proto(row: ApiToken) -> access_pb2.ApiToken:
    return access_pb2.ApiToken(
        name=row.name,
        role=row.role,
        created_by=row.created_by,
        created_at=timestamp(row.created_at),
        expires_at=timestamp(row.expires_at),
        revoked_at=timestamp(row.revoked_at),
        revoked_by=row.revoked_by or "",
        last_used_at=timestamp(row.last_used_at),
    )


class AccessService(access_pb2_grpc.AccessServiceServicer):
    def __init__(self, tokens: ApiTokens) -> None:
        self.tokens = tokens

    @rpc
    def CreateToken(
        self, request: access_pb2.CreateTokenRequest, context: grpc.ServicerContext
    ) -> access_pb2.CreateTokenResponse:
        row, secret = self.tokens.create(
            request.name, Role.parse(request.role), request.expires_in_seconds or None, caller().name
        )
        return access_pb2.CreateTokenResponse(token=token_to_proto(row), secret=secret)

    @rpc
    def ListTokens(
        self, request: access_pb2.ListTokensRequest, context: grpc.ServicerContext
    ) -> access_pb2.ListTokensResponse:
        return access_pb2.ListTokensResponse(tokens=[token_to_proto(row) for row in self.tokens.list()])

    @rpc
    def RevokeToken(self, request: access_pb2.RevokeTokenRequest, context: grpc.ServicerContext) -> access_pb2.ApiToken:
        return token_to_proto(self.tokens.revoke(request.name, caller().name))

    @rpc
    def WhoAmI(self, request: access_pb2.WhoAmIRequest, context: grpc.ServicerContext) -> access_pb2.WhoAmIResponse:
        who = caller()
        return access_pb2.WhoAmIResponse(
            name=who.name, role=who.role.value, authenticated=who.authenticated, job_id=who.job_id or ""
        )
