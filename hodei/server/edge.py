"""The API edge: Hodei errors become gRPC statuses with a message a person can act on."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import inspect
import logging
import weakref
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar, cast

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from hodei.config import VARIABLES
from hodei.errors import (
    AlreadyExists,
    ConcurrencyConflict,
    HodeiError,
    InvalidInput,
    InvalidTransition,
    LimitReached,
    NoAnswer,
    NotFound,
    PermissionDenied,
    ProviderUnavailable,
    ShuttingDown,
    StoreUnavailable,
    Unauthenticated,
)
from hodei.logfields import about
from hodei.roles import Caller

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
    (ShuttingDown, grpc.StatusCode.UNAVAILABLE),
    (NoAnswer, grpc.StatusCode.DEADLINE_EXCEEDED),
    # Other writers kept changing what the request changes (its tries gave up): gRPC's
    # word for a lost concurrency check, which a client may retry as it is.
    (ConcurrencyConflict, grpc.StatusCode.ABORTED),
]

F = TypeVar("F", bound=Callable[..., Any])

# The most of an error's message a status carries, in UTF-8 bytes: gRPC sends it in a
# trailer, percent-encoded (up to three bytes a byte), and a client refuses trailers past
# 8 KiB now and then and past 16 KiB always.
MESSAGE_BYTES = 2000


def status_of(exc: HodeiError) -> grpc.StatusCode:
    for kind, code in STATUS:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def brief(message: str) -> str:
    """``message``, its middle left out past ``MESSAGE_BYTES``: an error quoting what it
    refused (a 20,000-character provider name) reached the client as RESOURCE_EXHAUSTED,
    "received metadata size exceeds hard limit", not as the refusal. What it is about (its
    beginning) and what to do (its end) stay."""
    encoded = message.encode()
    if len(encoded) <= MESSAGE_BYTES:
        return message
    head = encoded[: MESSAGE_BYTES // 2].decode(errors="ignore")
    tail = encoded[-MESSAGE_BYTES // 2 + 100 :].decode(errors="ignore")
    return f"{head} … ({len(message) - len(head) - len(tail)} characters left out) … {tail}"


def _status(exc: Exception) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, HodeiError):
        return status_of(exc), brief(exc.message)
    log.exception("unexpected error in an RPC", exc_info=exc)
    return grpc.StatusCode.INTERNAL, brief(f"internal error: {type(exc).__name__}: {exc}")


def _abort(context: grpc.ServicerContext, exc: Exception) -> NoReturn:
    context.abort(*_status(exc))


def _passes(exc: BaseException) -> bool:
    """Errors gRPC raises itself (an abort, a cancelled call) go through untouched."""
    return isinstance(exc, grpc.RpcError | asyncio.CancelledError) or type(exc).__name__ == "AbortError"


def _nul_in(message: Message, prefix: str = "") -> str | None:
    """The first of ``message``'s strings holding a NUL, by its path (``spec.labels['team']``)."""
    for field, value in message.ListFields():
        path = prefix + field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if isinstance(key, str) and "\x00" in key:
                    return f"a key of {path}"
                inner = f"{path}[{key!r}]"
                if isinstance(item, Message):
                    if found := _nul_in(item, inner + "."):
                        return found
                elif isinstance(item, str) and "\x00" in item:
                    return inner
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            for n, item in enumerate(value if field.is_repeated else [value]):
                if found := _nul_in(item, f"{path}[{n}]." if field.is_repeated else f"{path}."):
                    return found
        elif field.type == FieldDescriptor.TYPE_STRING:
            for n, item in enumerate(value if field.is_repeated else [value]):
                if "\x00" in item:
                    return f"{path}[{n}]" if field.is_repeated else path
    return None


def refuse_nul(request: object) -> None:
    """No text a request carries may hold a NUL character, whatever the method: PostgreSQL
    stores none (text and jsonb refuse it: the request failed as an internal error), a
    process's arguments and environment cannot carry one, and no name, id or filter is
    meant to. Refused here, for every method (the console's calls too), naming the field.
    A stream of requests (a worker's) is its method's to read."""
    if isinstance(request, Message) and (path := _nul_in(request)):
        raise InvalidInput(f"{path} must not contain NUL (\\x00) characters")


class Streams:
    """The streams this process serves that last as long as what they follow (a worker's,
    a log follower's, a job watcher's; each enters ``serving``): a stopping server ends
    them at once (``close``) with UNAVAILABLE, which every client of ours takes as "ask
    again, or another server"; left to the server's grace, each was cancelled after it,
    logged as an unhandled error, and held the stop back those seconds. A stream that ends
    by itself (an artifact's download) has the grace, and is ended the same way after it.
    The streams of one API token end alone (``end``) once it is revoked or expired.
    Those of API callers are limited (``most_callers``): each costs memory and a poll
    twice a second for as long as its job runs, and nothing else bounded how many a
    client could open (a thousand idle followers took 6% of a core); and so are those of
    one API token (``most_per_token``), or one client's script following every job of a
    burst took them all and the next person's `job logs --follow` waited. Workers'
    streams are not counted: their providers' limits bound them, and a worker refused
    would fail its job."""

    def __init__(self, most_callers: int, most_per_token: int) -> None:
        # Each open stream's task, and the API token (``Caller.credential``) it serves.
        self._open: dict[asyncio.Task[Any], str | None] = {}
        self._ended: weakref.WeakKeyDictionary[asyncio.Task[Any], HodeiError] = weakref.WeakKeyDictionary()
        self.closing = False
        self.most_callers = most_callers
        self.most_per_token = most_per_token
        self._callers = 0
        # The limited streams each API token holds; a token goes with its last one.
        self._of_token: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def serving(self, who: Caller | None = None, lasting: bool = True) -> Iterator[None]:
        """``who``: the API caller the stream serves (a worker's stream: None); ``lasting``:
        it lasts as long as what it follows (a read of a log as it is ends by itself, and
        is not limited)."""
        if self.closing:
            raise ShuttingDown()
        limited = who if lasting else None  # an API caller's stream that lasts
        token = None if limited is None else limited.credential
        if limited is not None and self._callers >= self.most_callers:
            raise LimitReached(
                f"this server already serves as many streams to API callers as it may ({self._callers}, "
                "HODEI_MAX_STREAMS: log followers, job watchers, the console's live logs): end some, or try again later"
            )
        if limited is not None and token is not None and self._of_token[token] >= self.most_per_token:
            raise LimitReached(
                f"the API token `{limited.name}` already holds as many streams on this server as one token may "
                f"({self._of_token[token]}, HODEI_MAX_STREAMS_PER_TOKEN: log followers, job watchers, the "
                "console's live logs): end some, or try again later"
            )
        task = asyncio.current_task()
        assert task is not None, "an async stream runs in a task"
        self._open[task] = None if who is None else who.credential
        self._callers += limited is not None
        if token is not None:
            self._of_token[token] += 1
        try:
            yield
        finally:
            self._open.pop(task, None)
            self._callers -= limited is not None
            if token is not None:
                self._of_token[token] -= 1
                if not self._of_token[token]:
                    del self._of_token[token]

    def credentials(self) -> set[str]:
        """The API tokens the open streams serve."""
        return {credential for credential in self._open.values() if credential is not None}

    def end(self, credential: str, why: HodeiError) -> int:
        """Ends each open stream of this API token, saying ``why``; how many it ended."""
        ending = [task for task, serves in self._open.items() if serves == credential]
        for task in ending:
            self._ended[task] = why
            task.cancel()
        return len(ending)

    def why_ended(self, task: asyncio.Task[Any] | None) -> HodeiError | None:
        """Why the stream of ``task`` was cancelled, if it was ended here; None if its
        client went away."""
        why = self._ended.pop(task, None) if task is not None else None
        return ShuttingDown() if why is None and self.closing else why

    async def close(self) -> None:
        """Ends every stream, and returns once each has sent its status: a server stopped
        meanwhile cut some off with its own ("Cancelling all calls")."""
        self.closing = True
        ending = list(self._open)
        for task in ending:
            task.cancel()
        if ending:
            await asyncio.wait(ending, timeout=5)


# One API a process: its following streams register here, its shutdown closes them; the
# server sets the callers' limits from its configuration (HODEI_MAX_STREAMS, _PER_TOKEN).
STREAMS = Streams(int(VARIABLES["HODEI_MAX_STREAMS"][0]), int(VARIABLES["HODEI_MAX_STREAMS_PER_TOKEN"][0]))


def rpc(method: F) -> F:
    """Wraps a servicer method — plain or generator, sync or async — so that errors reach
    the client as statuses with a message a person can act on, a request with a NUL in its
    text (``refuse_nul``) reaches no method, and an async stream ended here (``STREAMS``:
    the server stops, its token was revoked) says why."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def async_stream(self: object, request: object, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            # Each message is written here (gRPC's writer API), not yielded to gRPC to send:
            # a cancel (a stop's, a revocation's) then lands in this coroutine, which says
            # why. Yielded, a message was being sent by gRPC's own code when the cancel came
            # about one stop in ten: the call ended there with no status, and the client
            # read the stop's "Cancelling all calls" five seconds later.
            try:
                refuse_nul(request)
                with about(rpc=method.__qualname__):
                    async with contextlib.aclosing(method(self, request, context)) as items:
                        async for item in items:
                            await context.write(item)
            except asyncio.CancelledError:
                why = STREAMS.why_ended(asyncio.current_task())
                if why is None:
                    raise
                await context.abort(*_status(why))
            except Exception as exc:
                if _passes(exc):
                    raise
                await context.abort(*_status(exc))

        return cast(F, async_stream)

    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def stream(self: object, request: object, context: grpc.ServicerContext) -> Iterator[object]:
            try:
                refuse_nul(request)
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
                refuse_nul(request)
                with about(rpc=method.__qualname__):
                    return await method(self, request, context)
            except Exception as exc:
                if _passes(exc):
                    raise
                await context.abort(*_status(exc))

        return cast(F, async_unary)

    @functools.wraps(method)
    def unary(self: object, request: object, context: grpc.ServicerContext) -> object:
        try:
            refuse_nul(request)
            with about(rpc=method.__qualname__):
                return method(self, request, context)
        except Exception as exc:
            if _passes(exc):
                raise
            _abort(context, exc)

    return cast(F, unary)
