"""The API edge: Hodei errors become gRPC statuses with a message a person can act on."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, NoReturn, TypeVar, cast

import grpc

from hodei.errors import (
    AlreadyExists,
    ConcurrencyConflict,
    HodeiError,
    InvalidInput,
    InvalidTransition,
    LimitReached,
    NotFound,
    PermissionDenied,
    ProviderUnavailable,
    StoreUnavailable,
    Unauthenticated,
)

log = logging.getLogger(__name__)

STATUS: list[tuple[type[HodeiError], grpc.StatusCode]] = [
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (InvalidTransition, grpc.StatusCode.FAILED_PRECONDITION),
    (LimitReached, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (ProviderUnavailable, grpc.StatusCode.FAILED_PRECONDITION),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    # Other writers kept changing what the request changes (its tries gave up): gRPC's
    # word for a lost concurrency check, which a client may retry as it is.
    (ConcurrencyConflict, grpc.StatusCode.ABORTED),
]

F = TypeVar("F", bound=Callable[..., Any])


def status_of(exc: HodeiError) -> grpc.StatusCode:
    for kind, code in STATUS:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def _status(exc: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, HodeiError):
        return status_of(exc), exc.message
    log.exception("unexpected error in an RPC", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def _abort(context: grpc.ServicerContext, exc: Exception) -> NoReturn:
    context.abort(*_status(exc))


def _passes(exc: BaseException) -> bool:
    """Errors gRPC raises itself (an abort, a cancelled call) go through untouched."""
    return isinstance(exc, grpc.RpcError | asyncio.CancelledError) or type(exc).__name__ == "AbortError"


def rpc(method: F) -> F:
    """Wraps a servicer method — plain or generator, sync or async — so that errors reach
    the client as statuses with a message a person can act on."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def async_stream(
            self: object, request: object, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[object]:
            try:
                async for item in method(self, request, context):
                    yield item
            except Exception as exc:
                if _passes(exc):
                    raise
                await context.abort(*_status(exc))

        return cast(F, async_stream)

    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def stream(self: object, request: object, context: grpc.ServicerContext) -> Iterator[object]:
            try:
                yield from method(self, request, context)
            except Exception as exc:
                if _passes(exc) or not context.is_active():
                    raise
                _abort(context, exc)

        return cast(F, stream)

    if inspect.iscoroutinefunction(method):

        @functools.wraps(method)
        async def async_unary(self: object, request: object, context: grpc.aio.ServicerContext[Any, Any]) -> object:
            try:
                return await method(self, request, context)
            except Exception as exc:
                if _passes(exc):
                    raise
                await context.abort(*_status(exc))

        return cast(F, async_unary)

    @functools.wraps(method)
    def unary(self: object, request: object, context: grpc.ServicerContext) -> object:
        try:
            return method(self, request, context)
        except Exception as exc:
            if _passes(exc):
                raise
            _abort(context, exc)

    return cast(F, unary)
