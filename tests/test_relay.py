"""The outbox relay: competing relays, per-aggregate order, retries, dead letters,
NOTIFY wake-ups with polling as the guarantee."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import uuid4

import psycopg
from psycopg_pool import ConnectionPool

from hodei.config import RelayConfig
from hodei.domain.job import Job
from hodei.domain.spec import JobSpec
from hodei.domain.worker import Worker
from hodei.relay import CLAIM_SETTINGS, Delivery, Relay, Route, backoff_seconds
from hodei.signals import Signals
from hodei.store.app import HodeiStore, Meta
from hodei.store.db import open_pool
from hodei.store.sql import query as query_text
from hodei.testing import conninfo, eventually, query

CONFIG = RelayConfig(batch_size=50, poll_interval=0.05, lease_seconds=30, max_attempts=3, threads=4)


@dataclass
class Log:
    """Every delivery, with a global clock tick at its start and its end."""

    clock: itertools.count[int] = field(default_factory=itertools.count)
    entries: list[tuple[str, str, int, int, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self, relay_name: str) -> Route:
        def handle(delivery: Delivery) -> None:
            start = next(self.clock)
            time.sleep(0.001)
            end = next(self.clock)
            with self.lock:
                self.entries.append(
                    (relay_name, delivery.event.aggregate_id, delivery.event.aggregate_version, start, end)
                )

        return Route(handle)


def write_jobs(store: HodeiStore, aggregates: int, events_each: int) -> int:
    """Jobs with a run of status events each; returns the number of events."""
    total = 0
    for _ in range(aggregates):
        job = Job.submit(JobSpec(name="t", command="true", timeout_seconds=5, max_attempts=10), uuid4())
        for _ in range(events_each - 1):
            job.select_provider(str(uuid4()), "docker")
        store.write([job], Meta(actor="t"))
        total += events_each
    return total


def test_two_relays_handle_every_row_once_and_keep_per_aggregate_order(store: HodeiStore, pool: ConnectionPool) -> None:
    total = write_jobs(store, aggregates=30, events_each=6)
    log = Log()
    kinds = ("JobCreated", "JobProviderSelected")
    small_batches = RelayConfig(batch_size=8, poll_interval=0.01, lease_seconds=30, max_attempts=3, threads=4)
    relays = [
        Relay(pool, {kind: log.handler(name) for kind in kinds}, small_batches, name, Signals(None))
        for name in ("relay-a", "relay-b")
    ]
    stop = threading.Event()
    threads = [threading.Thread(target=relay.run, args=(stop,)) for relay in relays]
    for thread in threads:
        thread.start()
    try:
        eventually(lambda: len(log.entries) >= total, timeout=60, what="every row to be delivered")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    jobs = log.entries
    keys = [(aggregate, version) for _, aggregate, version, _, _ in jobs]
    assert len(keys) == len(set(keys)), "a row was handled twice"
    assert {relay for relay, *_ in jobs} == {"relay-a", "relay-b"}, "both relays should have taken work"
    by_aggregate: dict[str, list[tuple[int, int, int]]] = {}
    for _, aggregate, version, start, end in jobs:
        by_aggregate.setdefault(aggregate, []).append((version, start, end))
    for deliveries in by_aggregate.values():
        deliveries.sort()
        assert [v for v, _, _ in deliveries] == list(range(1, len(deliveries) + 1))
        for (_, _, previous_end), (_, start, _) in itertools.pairwise(deliveries):
            assert start > previous_end, "a later event of an aggregate started before the earlier one ended"
    assert query(conninfo(pool), "SELECT count(*) FROM outbox_events WHERE status <> 'PUBLISHED'") == [(0,)]


def test_a_failing_row_is_retried_with_backoff_then_dead_lettered(store: HodeiStore, pool: ConnectionPool) -> None:
    attempts: list[float] = []
    buried: list[str] = []

    def fail(delivery: Delivery) -> None:
        attempts.append(time.monotonic())
        raise RuntimeError(f"cannot handle {delivery.event.event_type}")

    relay = Relay(pool, {"JobCreated": Route(fail, lambda _, error: buried.append(error))}, CONFIG, "r", Signals(None))
    job = Job.submit(JobSpec(name="t", command="true", timeout_seconds=5), uuid4())
    store.write([job], Meta(actor="t"))
    deadline = time.monotonic() + 30
    while len(attempts) < CONFIG.max_attempts and time.monotonic() < deadline:
        relay.drain()
        time.sleep(0.05)
    relay.close()
    assert len(attempts) == CONFIG.max_attempts
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert all(gap >= 0.1 for gap in gaps), gaps
    row = query(
        conninfo(pool), "SELECT status, attempts, last_error FROM outbox_events WHERE aggregate_id = %s", (str(job.id),)
    )
    assert row == [("DEAD_LETTER", 3, "RuntimeError: cannot handle JobCreated")]
    assert buried == ["RuntimeError: cannot handle JobCreated"]


def test_backoff_grows_exponentially_with_jitter() -> None:
    samples = [[backoff_seconds(attempt) for _ in range(50)] for attempt in range(1, 8)]
    means = [sum(s) / len(s) for s in samples]
    assert all(later > earlier for earlier, later in itertools.pairwise(means[1:]))
    assert len({round(x, 6) for x in samples[3]}) > 1, "no jitter"
    assert max(max(s) for s in samples) <= 30.5


def test_a_handler_that_writes_events_acknowledges_its_row_in_the_same_transaction(
    store: HodeiStore, pool: ConnectionPool
) -> None:
    def react(delivery: Delivery) -> None:
        job = store.load(Job, delivery.event.aggregate_id)
        job.select_provider(str(uuid4()), "docker")
        store.write([job], Meta(actor="handler", ack=delivery.ack))
        assert query(conninfo(pool), "SELECT status FROM outbox_events WHERE id = %s", (delivery.outbox_id,)) == [
            ("PUBLISHED",)
        ]

    relay = Relay(pool, {"JobCreated": Route(react)}, CONFIG, "r", Signals(None))
    store.write([Job.submit(JobSpec(name="t", command="true", timeout_seconds=5), uuid4())], Meta(actor="t"))
    relay.drain()
    relay.close()
    assert relay.counters.handled == 4 and relay.counters.failed == 0


def test_older_jobs_rows_are_claimed_before_later_jobs_rows(store: HodeiStore, pool: ConnectionPool) -> None:
    """A job's next row is claimed before the first row of a job submitted after it,
    although that row is earlier in the log: a burst does not move in lockstep."""
    first = Job.submit(JobSpec(name="first", command="true", timeout_seconds=5), uuid4())
    store.write([first], Meta(actor="t"))
    later = Job.submit(JobSpec(name="later", command="true", timeout_seconds=5), uuid4())
    store.write([later], Meta(actor="t"))
    first.select_provider(str(uuid4()), "docker")
    store.write([first], Meta(actor="t"))
    origins = query(
        conninfo(pool),
        "SELECT aggregate_id, event_type, position, origin FROM outbox_events WHERE aggregate_id = ANY(%s) "
        "ORDER BY position",
        ([str(first.id), str(later.id)],),
    )
    first_origin = origins[0][2]
    assert [(a, o) for a, _, _, o in origins] == [
        (str(first.id), first_origin),
        (str(later.id), origins[1][2]),
        (str(first.id), first_origin),  # the first event of its job, not its own position
    ]
    query(
        conninfo(pool),
        "UPDATE outbox_events SET status = 'PUBLISHED' WHERE aggregate_id <> ALL(%s)",
        ([str(first.id), str(later.id)],),
    )
    relay = Relay(pool, {}, CONFIG, "r", Signals(None))
    try:
        claimed = relay.claim(2)
        assert [(d.event.aggregate_id, d.event.event_type) for d in claimed] == [
            (str(first.id), "JobCreated"),
            (str(first.id), "JobProviderSelected"),
        ]
        assert [d.event.aggregate_id for d in relay.claim(2)] == [str(later.id)]
    finally:
        relay.close()


def test_claims_are_planned_with_index_scans_whatever_the_statistics(store: HodeiStore, pool: ConnectionPool) -> None:
    """A young outbox has the statistics of an empty table: planned from them, a claim
    reads the outbox and the event log whole, and goes on doing so as they grow. The
    relay's claim connections plan it with index scans alone."""
    write_jobs(store, aggregates=3, events_each=2)
    params = {"limit": 10, "window": 2000, "claimer": "r", "lease": 30}

    def plan(settings: dict[str, str] | None) -> str:
        claims = open_pool(conninfo(pool), max_size=1, settings=settings)
        try:
            with claims.connection() as conn:
                row = conn.execute("EXPLAIN (FORMAT JSON) " + query_text("claim_outbox_rows"), params).fetchone()
        finally:
            claims.close()
        assert row is not None
        return json.dumps(row[0])

    assert "Seq Scan" in plan(None)  # what the statistics alone lead to
    relays = plan(CLAIM_SETTINGS)
    assert "Seq Scan" not in relays and "Bitmap" not in relays
    assert '"Index Name": "idx_outbox_events_open"' in relays and '"Index Name": "domain_events_pkey"' in relays


def test_a_save_for_a_row_whose_lease_was_lost_is_rolled_back(store: HodeiStore, pool: ConnectionPool) -> None:
    def slow(delivery: Delivery) -> None:
        query(
            conninfo(pool), "UPDATE outbox_events SET claimed_by = 'someone-else' WHERE id = %s", (delivery.outbox_id,)
        )
        job = store.load(Job, delivery.event.aggregate_id)
        job.select_provider(str(uuid4()), "docker")
        store.write([job], Meta(actor="handler", ack=delivery.ack))

    relay = Relay(pool, {"JobCreated": Route(slow)}, CONFIG, "r", Signals(None))
    job = Job.submit(JobSpec(name="t", command="true", timeout_seconds=5), uuid4())
    store.write([job], Meta(actor="t"))
    relay.handle(relay.claim(10)[-1])
    relay.close()
    assert query(conninfo(pool), "SELECT count(*) FROM domain_events WHERE aggregate_id = %s", (str(job.id),)) == [(1,)]


def _relay_latency(store: HodeiStore, pool: ConnectionPool, signals: Signals, poll: float) -> float:
    handled = threading.Event()
    relay = Relay(
        pool,
        {"JobCreated": Route(lambda _: handled.set())},
        RelayConfig(batch_size=10, poll_interval=poll, lease_seconds=30, max_attempts=3, threads=2),
        "r",
        signals,
    )
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,))
    thread.start()
    time.sleep(0.3)  # the relay is now idle, waiting
    started = time.monotonic()
    store.write([Job.submit(JobSpec(name="t", command="true", timeout_seconds=5), uuid4())], Meta(actor="t"))
    assert handled.wait(10), "the row was never delivered"
    elapsed = time.monotonic() - started
    stop.set()
    thread.join()
    return elapsed


def test_notify_wakes_the_relay_at_once(store: HodeiStore, pool: ConnectionPool) -> None:
    signals = Signals(conninfo(pool))
    signals.start()
    assert signals.connected.wait(5)
    try:
        assert _relay_latency(store, pool, signals, poll=30.0) < 5.0
    finally:
        signals.stop()


def test_without_notify_the_relay_still_polls(store: HodeiStore, pool: ConnectionPool) -> None:
    assert _relay_latency(store, pool, Signals(None), poll=0.3) < 5.0


def test_the_listener_reconnects_after_its_connection_dies(pool: ConnectionPool) -> None:
    signals = Signals(conninfo(pool))
    signals.start()
    try:
        assert signals.connected.wait(5)
        with psycopg.connect(conninfo(pool), autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'hodei-signals'"
            )
        eventually(lambda: not signals.connected.is_set(), timeout=10, what="the listener to notice")
        assert signals.connected.wait(10), "the listener did not reconnect"
        with signals.waiter("some-job") as waiter:
            with psycopg.connect(conninfo(pool), autocommit=True) as conn:
                conn.execute("SELECT pg_notify('hodei_signals', 'other some-job')")
            assert waiter.wait(5)
    finally:
        signals.stop()


def test_rows_handled_without_a_write_are_acknowledged_by_the_next_claim_in_its_transaction(
    store: HodeiStore, pool: ConnectionPool
) -> None:
    """No transaction of its own for the acknowledgement: the claim that follows makes
    it, before it looks, so the aggregate's next row is claimed at once."""
    job = Job.submit(JobSpec(name="t", command="true", timeout_seconds=5), uuid4())
    store.write([job], Meta(actor="t"))
    query(conninfo(pool), "UPDATE outbox_events SET status = 'PUBLISHED' WHERE aggregate_id <> %s", (str(job.id),))
    relay = Relay(pool, {}, CONFIG, "r", Signals(None))
    try:
        (first,) = relay.claim(10)
        relay.handle(first)
        assert query(conninfo(pool), "SELECT status FROM outbox_events WHERE id = %s", (first.outbox_id,)) != [
            ("PUBLISHED",)
        ]
        job.select_provider(str(uuid4()), "docker")
        store.write([job], Meta(actor="t"))
        (second,) = relay.claim(10)
        rows = [
            query(conninfo(pool), "SELECT status, xmin::text FROM outbox_events WHERE id = %s", (row.outbox_id,))[0]
            for row in (first, second)
        ]
        assert [status for status, _ in rows] == ["PUBLISHED", "PROCESSING"]
        assert rows[0][1] == rows[1][1], "acknowledged and claimed in one transaction"
    finally:
        relay.close()


def test_after_a_claim_that_found_fewer_rows_than_it_asked_for_the_relay_waits_to_be_woken(
    store: HodeiStore, pool: ConnectionPool
) -> None:
    """Claiming again at once would find nothing: a transaction for nothing. Nor does the
    handler that finishes wake it: its row's acknowledgement rides on the next claim,
    here the poll's; then it waits."""
    store.write([Job.submit(JobSpec(name="t", command="true", timeout_seconds=5), uuid4())], Meta(actor="t"))
    slow_poll = RelayConfig(batch_size=50, poll_interval=3, lease_seconds=30, max_attempts=3, threads=4)
    relay = Relay(pool, {}, slow_poll, "r", Signals(None))
    claims: list[int] = []
    claim = relay.claim

    def counted(limit: int) -> list[Delivery]:
        found = claim(limit)
        claims.append(len(found))
        return found

    relay.claim = counted  # type: ignore[method-assign]
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,))
    thread.start()
    try:
        eventually(
            lambda: query(conninfo(pool), "SELECT count(*) FROM outbox_events WHERE status <> 'PUBLISHED'") == [(0,)],
            timeout=20,
            what="the rows to be acknowledged",
        )
        time.sleep(0.5)  # room for a claim too many
        assert len(claims) == 2 and claims[0] > 0 and claims[1] == 0
    finally:
        stop.set()
        thread.join()


def _refuse_claims(relay: Relay) -> None:
    def claim(limit: int) -> list[Delivery]:
        raise AssertionError("a row was claimed: the save should have handed it over")

    relay.claim = claim  # type: ignore[method-assign]


def test_a_save_beside_a_relay_hands_it_the_rows_it_wants_and_writes_the_others_delivered(
    store: HodeiStore, pool: ConnectionPool
) -> None:
    """No claim finds them: the save writes the row a route wants claimed by this
    process's relay (handed over after commit), and the one no route wants delivered."""
    handled: list[tuple[str, int]] = []

    def react(delivery: Delivery) -> None:
        job = store.load(Job, delivery.event.aggregate_id)
        job.admit()  # a route-less event: JobAdmitted
        store.write([job], Meta(actor="handler", ack=delivery.ack))
        handled.append((delivery.event.event_type, delivery.attempts))  # once its save committed

    relay = Relay(pool, {"JobProviderSelected": Route(react)}, CONFIG, "r", Signals(None))
    _refuse_claims(relay)
    store.deliver_with(relay)
    try:
        job = Job.submit(JobSpec(name="t", command="true", timeout_seconds=5), uuid4())
        job.select_provider(str(uuid4()), "docker")
        store.write([job], Meta(actor="t"))
        eventually(lambda: handled or None, timeout=10, what="the row to be handed over and handled")
        rows = query(
            conninfo(pool),
            "SELECT event_type, status, claimed_by, attempts FROM outbox_events WHERE aggregate_id = %s "
            "ORDER BY position",
            (str(job.id),),
        )
    finally:
        relay.close()
    assert handled == [("JobProviderSelected", 1)]
    assert rows == [
        ("JobCreated", "PUBLISHED", None, 0),  # no route: written delivered
        ("JobProviderSelected", "PUBLISHED", "r", 1),  # taken, then acknowledged by its handler's save
        ("JobAdmitted", "PUBLISHED", None, 0),
    ]


def test_a_row_is_taken_only_behind_rows_its_relay_holds(store: HodeiStore, pool: ConnectionPool) -> None:
    """Behind its aggregate's row that the relay is running, a new row is taken and runs
    after it; behind an open row the relay does not hold, it is left for a claim, which
    keeps the aggregate's order."""
    order: list[str] = []
    running = threading.Event()
    go_on = threading.Event()

    def first(delivery: Delivery) -> None:
        running.set()
        assert go_on.wait(10)
        order.append(delivery.event.event_type)

    def then(delivery: Delivery) -> None:
        order.append(delivery.event.event_type)

    relay = Relay(pool, {"JobCreated": Route(first), "JobProviderSelected": Route(then)}, CONFIG, "r", Signals(None))
    held = Job.submit(JobSpec(name="held", command="true", timeout_seconds=5), uuid4())
    elsewhere = Job.submit(JobSpec(name="elsewhere", command="true", timeout_seconds=5), uuid4())
    store.write([elsewhere], Meta(actor="t"))  # before the relay: its row waits for a claim
    store.deliver_with(relay)
    try:
        store.write([held], Meta(actor="t"))
        assert running.wait(10)
        for job in (held, elsewhere):
            job.select_provider(str(uuid4()), "docker")
            store.write([job], Meta(actor="t"))
        statuses = dict(
            query(
                conninfo(pool),
                "SELECT aggregate_id, status FROM outbox_events WHERE event_type = 'JobProviderSelected'",
            )
        )
        assert statuses == {str(held.id): "PROCESSING", str(elsewhere.id): "PENDING"}
        go_on.set()
        eventually(lambda: len(order) >= 2 or None, timeout=10, what="the held job's rows to run")
        assert order == ["JobCreated", "JobProviderSelected"]
    finally:
        go_on.set()
        relay.close()


def test_a_commit_that_no_waiter_keys_on_and_no_claim_needs_notifies_nobody(
    store: HodeiStore, pool: ConnectionPool
) -> None:
    """Every listening server's backend reads each NOTIFY in a transaction of its own. A
    worker's creation, resource and registration (no stream waits for them) and a job's
    creation (nobody can wait for a new id), handed to the relay or written delivered,
    tell nobody; a row left for a claim still does, and so does a worker's dispatch (its
    stream sends run-job) and any other change of a job."""
    relay = Relay(pool, {"WorkerJobDispatched": Route(lambda _: None)}, CONFIG, "r", Signals(None))
    job = Job.submit(JobSpec(name="t", command="true", timeout_seconds=5), uuid4())
    early, later = (
        Worker(
            job_id=str(job.id),
            attempt=attempt,
            provider_id=str(uuid4()),
            provider_type="docker",
            token_nonce="n",
            token_expires_at="2100-01-01T00:00:00+00:00",
        )
        for attempt in (1, 2)
    )
    with psycopg.connect(conninfo(pool), autocommit=True) as listener:
        listener.execute("LISTEN hodei_signals")
        store.write([job], Meta(actor="t"))
        store.write([early], Meta(actor="t"))  # before the relay: left for a claim
        store.deliver_with(relay)
        try:
            later.record_resource("r-1")
            later.register("s", "host", datetime.now(UTC))
            store.write([later], Meta(actor="t"))
            later.dispatch(str(job.id))
            store.write([later], Meta(actor="t"))
            another = Job.submit(JobSpec(name="t", command="true", timeout_seconds=5), uuid4())
            store.write([another], Meta(actor="t"))
            job.select_provider(str(uuid4()), "docker")
            store.write([job], Meta(actor="t"))
            payloads = [notify.payload for notify in listener.notifies(timeout=1.0)]
        finally:
            relay.close()
    assert payloads == [f"{job.id} by:t", f"{early.id} by:t", f"{later.id} by:t -", f"{job.id} by:t -"]


def test_a_key_goes_with_its_last_waiter() -> None:
    """A stream listens by its worker's and its job's ids, a follower by its job's: each
    key stayed in the hub with an empty set once its waiters left, some hundreds of
    bytes a job, for the server's life. A key still waited on keeps its waiter."""
    signals = Signals(None)

    async def stream() -> None:
        with signals.async_waiter("worker-1") as waiter:
            signals.listen(waiter, "worker-1", "job-1")
            with signals.waiter("job-1") as follower:
                signals.publish("job-1")
                assert follower.take_signal() == {"job-1"} and waiter.take_signal() == {"job-1"}
            signals.publish("job-1")
            assert waiter.take_signal() == {"job-1"}

    relay = signals.waiter()
    asyncio.run(stream())
    signals.publish("job-2")
    assert relay.take_signal() == {"job-1", "job-2"}
    assert signals._waiters == {None: {relay}}  # what the hub holds
    relay.close()
    assert signals._waiters == {}
