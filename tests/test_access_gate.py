"""The API's gate (hodei.server.access) with a real database: a plain call and its
caller's check share one transaction."""

from __future__ import annotations

from typing import Any, cast
from uuid import uuid4

import grpc
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool

from hodei.domain.job import Job
from hodei.domain.spec import JobSpec
from hodei.roles import Role
from hodei.server.access import Gatekeeper, _guarded
from hodei.store.api_tokens import ApiTokens
from hodei.store.app import HodeiStore, Meta
from hodei.store.db import command_connection
from hodei.testing import conninfo, query


class _Context:
    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def abort(self, code: grpc.StatusCode, message: str) -> None:
        raise AssertionError(f"refused: {code} {message}")


def test_a_submission_and_its_callers_check_are_one_transaction(store: HodeiStore, pool: ConnectionPool) -> None:
    """The check (are tokens required?) begins the call's transaction and the call's save
    commits it: one transaction a submission, not two."""
    statuses: list[TransactionStatus | None] = []
    job = Job.submit(JobSpec(name="t", command="true", timeout_seconds=5), uuid4())

    def submit(request: Any, context: Any) -> str:
        conn = command_connection(pool)
        statuses.append(conn.info.transaction_status if conn is not None else None)
        store.write([job], Meta(actor="t", correlation_id=str(job.id)))
        statuses.append(conn.info.transaction_status if conn is not None else None)
        return "queued"

    gate = Gatekeeper(ApiTokens(pool), required=False)
    handler = _guarded(
        grpc.unary_unary_rpc_method_handler(submit),
        lambda metadata: gate.admit("/t/Submit", Role.SUBMIT, metadata),
        pool,
    )
    assert handler.unary_unary is not None
    assert handler.unary_unary(None, cast(grpc.ServicerContext, _Context())) == "queued"
    assert statuses == [TransactionStatus.INTRANS, TransactionStatus.IDLE]
    assert query(conninfo(pool), "SELECT count(*) FROM domain_events WHERE aggregate_id = %s", (str(job.id),)) == [(1,)]


def test_once_a_token_exists_authentication_is_known_on_without_asking_again(pool: ConnectionPool) -> None:
    """Tokens are never deleted: a call without one, once one exists, costs no statement."""
    tokens = ApiTokens(pool)
    assert not tokens.required()
    tokens.create(f"gate-{uuid4().hex[:8]}", Role.READ, None, "test")
    assert tokens.required()

    class Gone:
        def connection(self) -> Any:
            raise AssertionError("asked the database again")

    tokens.pool = cast(ConnectionPool, Gone())
    assert tokens.required()
