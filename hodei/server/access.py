"""The gate every API call passes: who is calling (an API token from the call's
``authorization: Bearer …`` metadata) and whether their role allows the method.

The check runs inside the handler's thread, not in gRPC's dispatch thread, so a token
lookup never holds up other calls. The caller is then available to the method as
``caller()`` for the duration of the call (streams included).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import grpc

from hodei.errors import HodeiError, PermissionDenied, Unauthenticated
from hodei.roles import NOBODY_CHECKED, Caller, Gate, Role, rule_of
from hodei.server.edge import status_of
from hodei.store.api_tokens import HOW_TO_GET_ONE, ApiTokens

_CALLER: ContextVar[Caller] = ContextVar("hodei_caller")
HEADER = "authorization"
SCHEME = "bearer "
TOKEN_NEEDED = (
    'this server requires an API token: set HODEI_TOKEN, pass --token, or put `token = "…"` in '
    f"~/.config/hodei/config.toml; {HOW_TO_GET_ONE}"
)


def caller() -> Caller:
    """The caller of the API method running in this thread (set by ``Gatekeeper``)."""
    return _CALLER.get()


def bearer(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == HEADER and isinstance(value, str):
            if not value.lower().startswith(SCHEME):
                raise Unauthenticated("the authorization metadata must be `Bearer <token>`")
            return value[len(SCHEME) :].strip()
    return None


class Gatekeeper(grpc.ServerInterceptor):
    def __init__(self, tokens: ApiTokens, required: bool) -> None:
        self.tokens = tokens
        self.always_required = required

    def identify(self, metadata: Any) -> Caller:
        secret = bearer(metadata)
        if secret is not None:
            return self.tokens.authenticate(secret)
        if self.always_required or self.tokens.required():
            raise Unauthenticated(TOKEN_NEEDED)
        return NOBODY_CHECKED

    def admit(self, method: str, rule: Role | None, metadata: Any) -> Caller:
        who = self.identify(metadata)
        if rule is None:
            raise PermissionDenied(f"{method} has no access rule: refused")
        if not who.may(rule):
            raise PermissionDenied(
                f"token `{who.name}` has the {who.role} role; {method} needs {rule} (or above): "
                "ask an admin for a token with that role"
            )
        return who

    def intercept_service(
        self, continuation: Callable[[Any], Any], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler: grpc.RpcMethodHandler[Any, Any] | None = continuation(details)
        if handler is None:
            return None
        method = details.method
        rule = rule_of(method)
        if rule in (Gate.OPEN, Gate.WORKER):
            return handler  # worker methods check the worker's own credential
        role = rule if isinstance(rule, Role) else None
        return _guarded(handler, lambda metadata: self.admit(method, role, metadata))


def _guarded(handler: Any, admit: Callable[[Any], Caller]) -> grpc.RpcMethodHandler[Any, Any]:
    def enter(context: grpc.ServicerContext) -> Any:
        try:
            who = admit(context.invocation_metadata())
        except HodeiError as exc:
            context.abort(status_of(exc), exc.message)
        return _CALLER.set(who)

    def unary(behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            token = enter(context)
            try:
                return behavior(request, context)
            finally:
                _CALLER.reset(token)

        return call

    def streaming(behavior: Callable[[Any, grpc.ServicerContext], Iterator[Any]]) -> Callable[..., Iterator[Any]]:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            token = enter(context)
            try:
                yield from behavior(request, context)
            finally:
                # A stream may be closed from another thread (then the next call sets its own).
                with contextlib.suppress(ValueError):
                    _CALLER.reset(token)

        return call

    replaced = {}
    for kind, wrap in (
        ("unary_unary", unary),
        ("stream_unary", unary),
        ("unary_stream", streaming),
        ("stream_stream", streaming),
    ):
        behavior = getattr(handler, kind)
        if behavior is not None:
            replaced[kind] = wrap(behavior)
    guarded: grpc.RpcMethodHandler[Any, Any] = handler._replace(**replaced)
    return guarded
