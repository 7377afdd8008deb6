"""The outbox relay: delivers every committed event to its handler, at least once.

Rows are claimed in batches with ``FOR UPDATE SKIP LOCKED`` and a lease, so several
relays (several servers, or ``hodei-server relay``) share the work. A relay wakes on
NOTIFY and also polls, so a lost notification or a dead listener only delays it.
A handler that writes events acknowledges its row in the same transaction
(``Delivery.ack``); otherwise the relay acknowledges after the handler returns. A
failing row is retried with exponential backoff and jitter, then dead-lettered.

Most rows are never claimed: a save in a process with a relay writes the rows its relay
can take already claimed by it (``reserve`` and ``take``: the aggregate's first open
row, or behind rows this relay holds) and hands them over after commit, and writes the
rows no route wants delivered (``needs_delivery``). Claims find the rest: rows of
other processes, rows behind another relay's, retries, expired leases.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import math
import queue
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from psycopg_pool import ConnectionPool
from tenacity import RetryCallState, wait_exponential_jitter

from hodei.config import RelayConfig
from hodei.errors import LeaseLost
from hodei.logfields import about
from hodei.signals import Signals
from hodei.store.db import command_transaction, execute, fetch_value, open_pool, roll_back, translate_errors
from hodei.store.events import EventRecord, unpack
from hodei.store.recorder import WAKE_ALL, Ack, Reservation
from hodei.store.sql import query

log = logging.getLogger(__name__)

# The connections that claim and acknowledge rows in bulk:
# - commit without waiting for the disk: a claim lost in a crash leaves the row due
#   again, and a lost acknowledgement means one more delivery, which handlers tolerate.
#   Half the latency of a durable commit.
# - plan with index scans only. An outbox is a queue whose statistics are always stale
#   (it empties as fast as it fills, and a young event log grows faster than autovacuum
#   looks at it): planned from them, a claim read both tables whole, 4-15 ms a claim in
#   a 200-job burst, growing with the log. Nor bitmap scans: they visit every dead
#   index entry of the rows already handled, which plain index scans learn to skip.
#   Index scans only: about 1 ms a claim under the same load.
CLAIM_SETTINGS = {"synchronous_commit": "off", "enable_seqscan": "off", "enable_bitmapscan": "off"}
_BACKOFF = wait_exponential_jitter(multiplier=0.2, max=30.0, exp_base=2, jitter=0.5)


def backoff_seconds(attempt: int) -> float:
    """Delay before delivery ``attempt + 1``, from tenacity's exponential-with-jitter wait."""
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    return float(_BACKOFF(state))


# The field of a row's own aggregate in the records its handling writes (its job is its
# correlation id).
_OWN_FIELD = {"Job": "job_id", "Saga": "saga_id", "Worker": "worker_id"}


def _about(event: EventRecord) -> contextlib.AbstractContextManager[None]:
    """What the records of a row's handling are about: its event, its job, and its saga or
    worker."""
    fields = {"event": event.event_type, "job_id": event.correlation_id}
    own = _OWN_FIELD.get(event.aggregate_type)
    if own is not None:
        fields[own] = event.aggregate_id
    return about(**fields)


@dataclass
class Delivery:
    """One claimed outbox row and the events it carries: one, or a saga's moves of one
    transaction (``hodei.store.events.pack``), of which only the last can need a move."""

    outbox_id: UUID
    attempts: int
    events: list[EventRecord]
    ack: Ack
    # The first position of the event's job: older jobs' rows are claimed and run first.
    origin: int

    @property
    def event(self) -> EventRecord:
        """The event that routes the row: its last."""
        return self.events[-1]


def _always(_: EventRecord) -> bool:
    return True


@dataclass(frozen=True)
class Route:
    """What happens to one event type: ``handle`` on delivery; ``dead_letter`` when
    the row is given up, so the flow it belongs to can still end (every job ends);
    ``wants``: whether an event of the type needs ``handle`` at all (a pure function of
    the event): a row whose routing event it does not want is written delivered."""

    handle: Callable[[Delivery], None]
    dead_letter: Callable[[Delivery, str], None] | None = None
    wants: Callable[[EventRecord], bool] = _always


class _OldestFirst:
    """The relay's handler threads. Claimed work waits here for a free thread and is
    taken oldest job first (lowest origin), not in the order it was claimed: a job's next
    row, claimed while a hundred rows of later jobs wait, runs before them."""

    def __init__(self, threads: int) -> None:
        self._queue: queue.PriorityQueue[tuple[float, int, Callable[[], None] | None]] = queue.PriorityQueue()
        self._tickets = itertools.count()
        self._threads = [
            threading.Thread(target=self._work, name=f"hodei-relay-{n}", daemon=True) for n in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, origin: int, task: Callable[[], None]) -> None:
        self._queue.put((origin, next(self._tickets), task))

    def _work(self) -> None:
        while (task := self._queue.get()[2]) is not None:
            task()

    def shutdown(self) -> None:
        """Runs what is queued, then stops the threads."""
        for _ in self._threads:
            self._queue.put((math.inf, next(self._tickets), None))
        for thread in self._threads:
            thread.join()


@dataclass
class RelayCounters:
    handled: int = 0
    failed: int = 0
    lag_ms: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, lag_ms: float) -> None:
        with self.lock:
            self.handled += 1
            self.lag_ms.append(lag_ms)
            del self.lag_ms[:-1000]

    def lag_p50_ms(self) -> float:
        with self.lock:
            return statistics.median(self.lag_ms) if self.lag_ms else 0.0


class Relay:
    """Claims due rows, hands them to handler threads, acknowledges them.

    Up to ``batch_size`` rows are in flight (claimed or taken, queued or running) at
    once, on ``threads`` handler threads, an aggregate's one after the other. Rows whose
    handler ran no command (``HodeiStore.write`` acknowledges the others) are
    acknowledged in bulk by the next claim, in its transaction, before it looks for rows:
    the next row of their aggregate is claimable in it. As with a claim's rows of one
    aggregate, a row runs after the one before it even when that one failed (and waits
    for its retry): handlers re-read the state they act on.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        routes: Mapping[str, Route],
        config: RelayConfig,
        claimer: str,
        signals: Signals,
        delivered: Callable[[EventRecord, float | None], None] | None = None,
    ) -> None:
        self.pool = pool
        # Told of each event handled, with its lag in seconds (the metrics).
        self.delivered = delivered
        self.routes = routes
        self.config = config
        self.claimer = claimer
        self.signals = signals
        self.counters = RelayCounters()
        # Its own small pool (one thread of its own: two connections need no more).
        self._claims = open_pool(
            str(pool.conninfo),
            min_size=1,
            max_size=2,
            name=f"hodei-claims-{claimer}",
            settings=CLAIM_SETTINGS,
            workers=1,
        )
        self._handlers = _OldestFirst(config.threads)
        self._lock = threading.Condition()
        self._in_flight = 0
        self._to_ack: list[UUID] = []
        # Each aggregate's rows here, in order, the first one queued or running: one task
        # per aggregate runs them.
        self._aggregates: dict[str, collections.deque[Delivery]] = {}
        # A claim skipped for want of room: the next handler to finish has the relay claim.
        self._skipped = False
        # Aggregates with rows here when a NOTIFY announced rows of theirs: those may wait
        # behind the ones here, so once they are done the relay claims. Handlers that
        # finish otherwise do not wake it: rows waiting to be acknowledged ride on the next
        # claim, whatever wakes it (at the latest the poll); until then this relay takes
        # rows behind them, and only other relays' claims of their aggregates wait.
        self._announced: set[str] = set()
        self._closing = False
        # Woken by every NOTIFY of rows to deliver (a signal), and nudged when a handler
        # finishes.
        self._waiter = signals.waiter()

    # Rows written here ------------------------------------------------------

    def needs_delivery(self, event: EventRecord) -> bool:
        """Whether a row whose routing event (its last) is ``event`` has a handler to
        run. One that has none would be acknowledged by whichever relay claimed it, old or
        new, so the recorder writes it delivered and no relay claims it: nearly half a
        job's rows."""
        route = self.routes.get(event.event_type)
        try:
            return route is not None and route.wants(event)
        except Exception:
            return True  # let a delivery meet (and report) what a write must not

    def written_delivered(self, events: Sequence[EventRecord]) -> None:
        """Events of rows a save wrote delivered: told of as delivered ones are."""
        if self.delivered is not None:
            for event in events:
                self.delivered(event, None)

    def reserve(self, rows: int, aggregates: Iterable[str]) -> Reservation | None:
        """Room for the ``rows`` rows (of ``aggregates``) a save in this process is about
        to write for a relay, to take them: all, or None when they would pass the batch
        size, a claim waits for room (rows of older jobs may wait for it: the room goes
        to the claim, which takes them first), or the relay is closing; they are then
        written for a claim. With it, the rows of those aggregates this relay holds: a
        new row may be taken behind them."""
        with self._lock:
            if self._closing or self._skipped or self._in_flight + rows > self.config.batch_size:
                return None
            self._in_flight += rows
            held = [d.outbox_id for aggregate in aggregates for d in self._aggregates.get(aggregate, ())]
            return Reservation(rows, [*held, *self._to_ack], self.claimer, self.config.lease_seconds)

    def take(self, reservation: Reservation, rows: Sequence[tuple[list[EventRecord], int]]) -> None:
        """The rows a save wrote claimed by this relay (each its events and origin), now
        committed: they run as claimed ones do, each behind the rows of its aggregate
        held here. Gives back the room reserved and not used (all of it when the save
        failed: ``rows`` empty)."""
        deliveries = [
            Delivery(events[0].id, 1, events, Ack(events[0].id, self.claimer), origin) for events, origin in rows
        ]
        with self._lock:
            self._in_flight -= reservation.rows - len(deliveries)
        self._run(deliveries)

    # Claiming ---------------------------------------------------------------

    def claim(self, limit: int) -> list[Delivery]:
        """Acknowledges the rows handled without a write of their own and claims up to
        ``limit`` due rows, in one transaction: the next row of an acknowledged one's
        aggregate is claimable in the same claim."""
        with self._lock:
            acks, self._to_ack = self._to_ack, []
        params = {
            "limit": limit,
            "window": max(2000, 20 * limit),
            "claimer": self.claimer,
            "lease": self.config.lease_seconds,
        }
        try:
            with translate_errors(), self._claims.connection() as conn:
                if not acks:
                    rows = conn.execute(query("claim_outbox_rows"), params).fetchall()
                else:
                    try:
                        with conn.pipeline():
                            conn.execute("BEGIN")
                            conn.execute(query("ack_outbox_rows"), (acks, self.claimer))
                            claimed = conn.execute(query("claim_outbox_rows"), params)
                            conn.execute("COMMIT")
                    except BaseException:
                        roll_back(conn)
                        raise
                    rows = claimed.fetchall()
        except Exception:
            with self._lock:
                self._to_ack.extend(acks)
            raise
        deliveries = []
        for row in sorted(rows, key=lambda r: (r[12], r[11])):
            outbox_id, attempts, occurred_at, event_type, aggregate_id, aggregate_type, version = row[:7]
            correlation_id, actor, payload, topic, position, origin = row[7:]
            event = EventRecord(
                id=outbox_id,
                occurred_at=occurred_at,
                event_type=event_type,
                aggregate_id=aggregate_id,
                aggregate_type=aggregate_type,
                aggregate_version=version,
                correlation_id=correlation_id,
                actor=actor,
                payload=payload,
                topic=topic,
                position=position,
            )
            deliveries.append(Delivery(outbox_id, attempts, unpack(event), Ack(outbox_id, self.claimer), origin))
        return deliveries

    # Handling ---------------------------------------------------------------

    def handle(self, delivery: Delivery) -> None:
        """Runs the row's route. A handler has acknowledged the row in the transaction of
        its last command (``HodeiStore.write``), unless it ran none; then the next claim
        acknowledges it."""
        route = self.routes.get(delivery.event.event_type)
        lag_ms = (time.time() - delivery.event.occurred_at.timestamp()) * 1000
        # Told before the handler runs: the events its save writes delivered are told of
        # at its commit, and a StepCompleted must come after its StepStarted. Only on
        # the first attempt, so a retried row is told of once.
        if self.delivered is not None and delivery.attempts == 1:
            for event in delivery.events:
                self.delivered(event, lag_ms / 1000)
        with _about(delivery.event):
            try:
                if route is not None and route.wants(delivery.event):
                    with command_transaction(self.pool):  # what it reads joins its first command
                        route.handle(delivery)
                if not delivery.ack.done:
                    with self._lock:
                        self._to_ack.append(delivery.outbox_id)
                self.counters.record(lag_ms)
            except LeaseLost as exc:
                log.warning("%s", exc)
            except Exception as exc:
                self._give_back(delivery, route, exc)

    def flush_acks(self) -> None:
        """Acknowledges the rows waiting for the next claim, without claiming."""
        with self._lock:
            batch, self._to_ack = self._to_ack, []
        if not batch:
            return
        try:
            with translate_errors(), self._claims.connection() as conn:
                conn.execute(query("ack_outbox_rows"), (batch, self.claimer))
        except Exception:
            with self._lock:
                self._to_ack.extend(batch)
            raise

    def _give_back(self, delivery: Delivery, route: Route | None, exc: Exception) -> None:
        event = delivery.event
        error = f"{type(exc).__name__}: {exc}"
        dead = delivery.attempts >= self.config.max_attempts
        with self.counters.lock:
            self.counters.failed += 1
        if dead:
            log.error(
                "dead-lettering %s of %s after %d attempts: %s",
                event.event_type,
                event.aggregate_id,
                delivery.attempts,
                error,
            )
        else:
            log.warning(
                "%s of %s failed (attempt %d): %s", event.event_type, event.aggregate_id, delivery.attempts, error
            )
        params: dict[str, Any] = {
            "id": delivery.outbox_id,
            "claimer": self.claimer,
            "status": "DEAD_LETTER" if dead else "PENDING",
            "delay": 0.0 if dead else backoff_seconds(delivery.attempts),
            "error": error,
        }
        try:
            execute(self.pool, "release_outbox_row", params)
            if dead and route is not None and route.dead_letter is not None:
                route.dead_letter(delivery, error)
        except Exception:
            # The lease will expire and the row will be claimed again.
            log.exception("could not release outbox row %s", delivery.outbox_id)

    # Loops ------------------------------------------------------------------

    def _run(self, deliveries: Sequence[Delivery]) -> None:
        by_aggregate: dict[str, list[Delivery]] = {}
        for delivery in deliveries:
            by_aggregate.setdefault(delivery.event.aggregate_id, []).append(delivery)
        for group in by_aggregate.values():
            self._submit(group)

    def _submit(self, deliveries: list[Delivery]) -> None:
        """Rows of one aggregate, in order: behind its rows here, or in a task of their own
        that runs them one after the other."""
        aggregate = deliveries[0].event.aggregate_id
        with self._lock:
            queued = self._aggregates.get(aggregate)
            if queued is not None:
                queued.extend(deliveries)
                return
            queued = self._aggregates[aggregate] = collections.deque(deliveries)

        def run() -> None:
            while True:
                with self._lock:
                    if not queued:
                        del self._aggregates[aggregate]
                        claim = self._skipped or aggregate in self._announced
                        self._announced.discard(aggregate)
                        break
                    delivery = queued[0]
                try:
                    self.handle(delivery)
                finally:
                    with self._lock:
                        queued.popleft()
                        self._in_flight -= 1
                        self._lock.notify_all()
            if claim:
                self._waiter.nudge()

        self._handlers.submit(min(d.origin for d in deliveries), run)

    def pump(self) -> int:
        """Claims up to the free capacity, acknowledging finished rows with the claim: at
        once while a handler thread may be idle, otherwise once a quarter of the batch is
        free. A claim costs PostgreSQL a scan of the open rows' window (a few ms under
        load) whatever it returns; topping up one row per finished handler made it 7
        claims a job. Finished rows wait for the next claim to be acknowledged: a relay
        that dies first leaves them to be delivered again, which handlers tolerate."""
        return self._pump()[0]

    def _pump(self) -> tuple[int, int]:
        """(rows claimed, rows asked for)."""
        with self._lock:
            held = self._in_flight
            free = self.config.batch_size - held
            if held >= self.config.threads and free < max(1, self.config.batch_size // 4):
                free = 0
            self._skipped = free <= 0
        if free <= 0:
            return 0, 0
        # Rows taken meanwhile (``take``) may pass the batch size by what this claims.
        deliveries = self.claim(free)
        with self._lock:
            self._in_flight += len(deliveries)
        self._run(deliveries)
        return len(deliveries), free

    def run(self, stop: threading.Event) -> None:
        """Claims again at once only after a full claim (more rows may be due); after
        one that found fewer, it waits to be woken: by a NOTIFY (new rows), by the poll,
        or by a handler that finished when rows may wait behind it (``_announced``) or a
        claim was skipped for want of room. Claiming straight away again found nothing
        most of the time, a transaction each."""
        while not stop.is_set():
            try:
                claimed, asked = self._pump()
            except Exception as exc:
                log.warning("outbox claim failed: %s", exc)
                claimed = asked = 0
                stop.wait(1.0)
            if claimed == 0 or claimed < asked:
                self._waiter.wait(self.config.poll_interval)
                heard = self._waiter.take_signal()
                with self._lock:
                    self._announced |= set(self._aggregates) if WAKE_ALL in heard else heard & self._aggregates.keys()
        self.close()

    def drain(self, timeout: float = 30.0) -> int:
        """Handles rows until none is due and none is in flight (tests and tools)."""
        deadline = time.monotonic() + timeout
        handled = 0
        while time.monotonic() < deadline:
            handled += self.pump()
            with self._lock:
                if self._in_flight:
                    self._lock.wait(0.05)
                    continue
            self.flush_acks()
            if not self._has_due_rows():
                return handled
        raise TimeoutError(f"outbox not drained within {timeout}s")

    def _has_due_rows(self) -> bool:
        return bool(fetch_value(self.pool, "has_open_outbox_rows"))

    def close(self) -> None:
        with self._lock:
            self._closing = True
        self._waiter.close()
        self._handlers.shutdown()
        self.flush_acks()
        self._claims.close()
