"""The gate every API call passes: who is calling (an API token from the call's
``authorization: Bearer …`` metadata) and whether their role allows the method.

The check runs in the call's own thread or task, never where gRPC dispatches calls, so
a token lookup never holds up others. The caller is then available to the method as
``caller()`` for the duration of the call (streams included: each runs in its task).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any

import grpc
from psycopg_pool import ConnectionPool

from hodei.errors import HodeiError, PermissionDenied, Unauthenticated
from hodei.logfields import about
from hodei.roles import NOBODY_CHECKED, Caller, Gate, Role, rule_of
from hodei.server.edge import STREAMS, Streams, status_of
from hodei.store.api_tokens import HOW_TO_GET_ONE, ApiTokens
from hodei.store.db import command_transaction

log = logging.getLogger(__name__)

_CALLER: ContextVar[Caller] = ContextVar("hodei_caller")
HEADER = "authorization"
SCHEME = "bearer "
# How often the tokens of open streams are looked at again, and the use of tokens written down.
RECHECK_SECONDS = 5.0
TOKEN_NEEDED = (
    'this server requires an API token: set HODEI_TOKEN, pass --token, or put `token = "…"` in '
    f"~/.config/hodei/config.toml; {HOW_TO_GET_ONE}"
)


def caller() -> Caller:
    """The caller of the API method running in this thread (set by ``Gatekeeper``)."""
    return _CALLER.get()


def serve_as(who: Caller) -> None:
    """Makes ``who`` the caller for the rest of the current task: for a task that serves
    one caller only (a console request streaming a log), where a reset after the stream
    could run in another context."""
    _CALLER.set(who)


@contextlib.contextmanager
def calling_as(who: Caller) -> Iterator[None]:
    """Runs API methods in process as ``who`` (the web console's calls); threads started
    with ``asyncio.to_thread`` inside inherit it."""
    token = _CALLER.set(who)
    try:
        with about(caller=who.name):
            yield
    finally:
        _CALLER.reset(token)


def bearer(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == HEADER and isinstance(value, str):
            if not value.lower().startswith(SCHEME):
                raise Unauthenticated("the authorization metadata must be `Bearer <token>`")
            return value[len(SCHEME) :].strip()
    return None


class Gatekeeper(grpc.aio.ServerInterceptor):
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
        self.authorise(method, rule, who)
        return who

    def authorise(self, method: str, rule: Role | None, who: Caller) -> None:
        """Refuses the call unless ``who``'s role allows ``method`` (a role of None: no rule)."""
        if rule is None:
            raise PermissionDenied(f"{method} has no access rule: refused")
        if not who.may(rule):
            raise PermissionDenied(
                f"token `{who.name}` has the {who.role} role; {method} needs {rule} (or above): "
                "ask an admin for a token with that role"
            )

    async def intercept_service(
        self, continuation: Callable[[Any], Awaitable[Any]], details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler: grpc.RpcMethodHandler[Any, Any] | None = await continuation(details)
        if handler is None:
            return None
        method = details.method
        rule = rule_of(method)
        if rule in (Gate.OPEN, Gate.WORKER):
            return handler  # worker methods check the worker's own credential
        role = rule if isinstance(rule, Role) else None
        return _guarded(handler, lambda metadata: self.admit(method, role, metadata), self.tokens.pool)


def _guarded(handler: Any, admit: Callable[[Any], Caller], pool: ConnectionPool) -> grpc.RpcMethodHandler[Any, Any]:
    """The handler with the gate in front of its behavior, of whatever kind it is: a
    plain function runs in a worker thread (the token lookup may block there), in one
    transaction with the token lookup (``command_transaction``: a submission is one, not
    two); a coroutine on the loop (the lookup goes to a thread): an async stream is one
    too, once ``rpc`` wrapped it."""

    def refuse(exc: HodeiError) -> tuple[grpc.StatusCode, str]:
        return status_of(exc), exc.message

    def wrap(behavior: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(behavior):

            async def call_async(request: Any, context: Any) -> Any:
                try:
                    who = await asyncio.to_thread(admit, context.invocation_metadata())
                except HodeiError as exc:
                    await context.abort(*refuse(exc))
                _CALLER.set(who)
                with about(caller=who.name):
                    return await behavior(request, context)

            return call_async

        def call(request: Any, context: Any) -> Any:
            # A refusal, and the transaction's own errors (no connection to be had, a failed
            # commit), are the caller's answer: UNAVAILABLE with its reason, not gRPC's UNKNOWN.
            try:
                with command_transaction(pool):
                    who = admit(context.invocation_metadata())
                    token = _CALLER.set(who)
                    try:
                        with about(caller=who.name):
                            return behavior(request, context)
                    finally:
                        _CALLER.reset(token)
            except HodeiError as exc:
                context.abort(*refuse(exc))

        return call

    replaced = {
        kind: wrap(getattr(handler, kind))
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
        if getattr(handler, kind) is not None
    }
    guarded: grpc.RpcMethodHandler[Any, Any] = handler._replace(**replaced)
    return guarded


async def keep_tokens(tokens: ApiTokens, streams: Streams = STREAMS, every: float = RECHECK_SECONDS) -> None:
    """Every ``every`` seconds: writes down the tokens this process's calls used (``token
    list``'s LAST USED), and ends each open stream whose token was revoked or has expired
    since the stream began, with the refusal a new call would get (the token is looked up
    when a call begins: a `job logs --follow` or `job watch`, or a console's log page,
    begun before would read on for as long as its job ran). At most two statements a
    round; none while no call came and no stream is open."""
    while True:
        await asyncio.sleep(every)
        try:
            await asyncio.to_thread(tokens.record_use)
            held = streams.credentials()
            refused = await asyncio.to_thread(tokens.refusals, held) if held else {}
        except HodeiError as exc:
            log.debug("could not keep the API tokens' records this time: %s", exc.message)
            continue
        except Exception:  # the loop is a safeguard: it must outlive what it has not foreseen
            log.exception("could not keep the API tokens' records this time")
            continue
        for credential, why in refused.items():
            ended = streams.end(credential, why)
            if ended:
                log.info("ended %d stream(s): %s", ended, why.message)
