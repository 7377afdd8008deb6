"""The console's way into the platform: the gRPC services' own methods, called in
process, each allowed by its rule in ``hodei.roles.RULES`` for the caller's token.

So a page shows exactly what the API returns, with no second copy of any query, and the
console can do nothing the same token could not do through the API: a `read` token's
forged cancel is refused by the same rule that refuses ``hodei-jobs-cli job cancel``.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from google.protobuf.message import Message

from hodei.errors import HodeiError, PermissionDenied
from hodei.roles import Caller, Role, rule_of
from hodei.server.access import Gatekeeper, calling_as, serve_as
from hodei.server.edge import refuse_nul


class Api:
    def __init__(self, gatekeeper: Gatekeeper, servicers: Mapping[str, object]) -> None:
        """``servicers``: the full service name (``hodei.jobs.JobExecutionService``) of each servicer."""
        self.gatekeeper = gatekeeper
        self.servicers = dict(servicers)

    def identify(self, token: str | None) -> Caller:
        """The caller a token stands for (without one: anonymous if the server allows it)."""
        return self.gatekeeper.identify(_metadata(token))

    def check(self, who: Caller, method: str) -> None:
        """Refuses, with the API's own message, unless the method's rule allows ``who``."""
        rule = rule_of(method)
        if not isinstance(rule, Role):
            raise PermissionDenied(f"{method} is not for API tokens")
        self.gatekeeper.authorise(method, rule, who)

    def may(self, who: Caller, method: str) -> bool:
        rule = rule_of(method)
        return isinstance(rule, Role) and who.may(rule)

    def _behaviour(self, method: str) -> Any:
        service, _, name = method.strip("/").partition("/")
        servicer = self.servicers.get(service)
        if servicer is None:
            raise HodeiError(f"the console has no access to {service}")
        wrapped = getattr(type(servicer), name)
        # The method without the gRPC error wrapper: errors stay Hodei errors here.
        return getattr(wrapped, "__wrapped__", wrapped).__get__(servicer)

    async def call(self, who: Caller, method: str, request: Message) -> Any:
        self.check(who, method)
        refuse_nul(request)  # as the API's edge does (the method is called without it)
        behaviour = self._behaviour(method)
        with calling_as(who):
            if inspect.iscoroutinefunction(behaviour):
                return await behaviour(request, None)
            return await asyncio.to_thread(behaviour, request, None)

    async def stream(self, who: Caller, method: str, request: Message) -> AsyncGenerator[Any, None]:
        """A streaming method's messages; the calling task serves this caller only."""
        self.check(who, method)
        refuse_nul(request)
        serve_as(who)
        async for item in self._behaviour(method)(request, None):
            yield item


def _metadata(token: str | None) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")] if token else []
