"""Admission control: each provider runs at most its capacity of workers; the other jobs
wait in a queue, in PostgreSQL, and leave it by priority, then in submission order.

With ``HODEI_QUEUE_ORDER=fair`` a priority's jobs leave it by their submitters' turns instead
(Slurm's fair share in its simplest form): a job's turn is its submitter's use — its jobs
admitted and not ended, on any provider, and those admitted in the last
``HODEI_QUEUE_FAIR_WINDOW`` seconds that ended since — plus its place among its submitter's
jobs in line; the lowest goes first, ties in submission order. Alice's thousand jobs
submitted before bob's ten then take turns with his as slots free, instead of going first.

A job's provisioning saga chooses its provider, then waits (``wait_for_slot``) until the
job is admitted: a ``JobAdmitted`` event, or, when the provider has a free slot and no
job waiting as it is chosen, that choice's own event (``admits_at_once``; the saga goes
on in that transaction). Admitting is done under an advisory lock per
provider, so servers sharing the database never admit past the capacity between them;
it runs when a job joins a queue, when a worker is terminated (a slot frees) and on
every sweep. Slots in use are counted from the read models, never kept in memory. Where
a provider's starts compete for this machine (local agents), at most so many of its
workers start at once: a worker that registers frees a start, and the queue moves then.

A held job (``job hold``, or ``job run --hold``) keeps out of its line until released; one
submitted with ``--begin`` keeps out of its line until its time, one with
``--after`` until each job it names has ended as asked (``hodei.after_met`` in the queue's
query); one that ended otherwise makes it a job that never starts, cancelled by the
sweeper's round (``cancel_never_started``). A job of an array with a limit (``--array
0-99%4``) leaves the queue only while fewer of its array's jobs than that are admitted and
not ended (``next_in_queue`` counts each limited array once a round); a job whose submitter
has a limit (``limit set``) only while fewer of that submitter's jobs are, on any provider;
a job of a pool (``--pool``) only while fewer of the pool's jobs than its size are, on any
provider. A round takes the locks of the pools and limited submitters its queue holds (in
their names' order, after the provider's), so rounds of different providers count each
other's admissions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple
from uuid import UUID

from psycopg_pool import ConnectionPool

from hodei.domain.job import Job
from hodei.domain.provider import ProviderType, ResourceLimits
from hodei.domain.spec import never_after
from hodei.errors import ConcurrencyConflict, InvalidTransition
from hodei.roles import SYSTEM
from hodei.store.app import HodeiStore, Meta
from hodei.store.db import fetch_all, fetch_column, fetch_one, fetch_value
from hodei.store.recorder import Ack

log = logging.getLogger(__name__)

# Seconds a round's finding of no room is trusted for a job joining the queue: the
# sweeper's round (every second by default) finds again.
FULL_FOR = 1.0
# CPU cores are fractions (--cpu 0.1): their sums are not exact (0.1 + 0.2 > 0.3).
_ROUNDING = 1e-9
# The queue's order, fixed for a server's life, written into its queries as a constant
# (hodei.store.sql.query): submission order within a priority.
FIFO: Mapping[str, bool] = {"fair": False}


@dataclass(frozen=True)
class Capacity:
    limit: int
    in_use: int
    # Of those in use, the workers starting (admitted, not yet registered), and how many
    # may (None: as many as the capacity).
    starting: int = 0
    start_limit: int | None = None
    # Disabled (`provider disable`): it starts nothing, its queue waits until enabled.
    disabled: bool = False
    # The CPU cores and memory its jobs may ask for together, and what the jobs holding
    # its slots ask for (counted only where a limit is set).
    resources: ResourceLimits = field(default_factory=ResourceLimits)
    cpu_in_use: float = 0.0
    memory_in_use: int = 0

    @property
    def free(self) -> int:
        if self.disabled:
            return 0
        free = self.limit - self.in_use
        if self.start_limit is not None:
            free = min(free, self.start_limit - self.starting)
        return max(free, 0)

    def holds(self, cpu_cores: float, memory_bytes: int) -> bool:
        """Whether its resources have room for so much more than what is in use."""
        cpu, memory = self.resources.cpu_cores, self.resources.memory_bytes
        return (cpu is None or self.cpu_in_use + cpu_cores <= cpu + _ROUNDING) and (
            memory is None or self.memory_in_use + memory_bytes <= memory
        )

    def fitting(self, asked: Iterable[tuple[UUID, float, int]]) -> list[UUID]:
        """Of the jobs next in line (each id with the CPU cores and memory it asks for, in
        the queue's order), those its resources hold together. The first that does not fit
        stops there, and those behind it wait with it (no backfill: a big job is never
        passed for ever by small ones); one that never fits (it asks for more than the
        provider has) is passed over, and waits until the limit is raised."""
        chosen: list[UUID] = []
        cpu, memory = 0.0, 0
        for job_id, cpu_cores, memory_bytes in asked:
            if self.resources.beyond(cpu_cores, memory_bytes):
                continue
            if not self.holds(cpu + cpu_cores, memory + memory_bytes):
                break
            cpu, memory = cpu + cpu_cores, memory + memory_bytes
            chosen.append(job_id)
        return chosen


@dataclass(frozen=True)
class InLine:
    """A provider's line (waiting_in_line): its jobs that wait for its capacity and nothing
    else, and how long the oldest of them has waited."""

    provider: str
    jobs: int
    oldest_seconds: float


@dataclass(frozen=True)
class QueuedJob:
    job_id: str
    name: str
    provider: str
    priority: int
    created_at: datetime
    position: int
    retry_at: datetime | None
    # Out of line (position 0) while held (`job hold`: by whom, why), until then (--begin),
    # or while it waits for a job it starts after (--after): that job's id, state and the
    # condition asked of it.
    held_by: str | None = None
    hold_reason: str = ""
    begin_at: datetime | None = None
    waiting_for: dict[str, str] | None = None
    # A job of an array with a limit (--array …%N): the limit, its array's jobs admitted and
    # not ended, and its place among its array's jobs ready to go (out of line past the limit).
    array_limit: int = 0
    array_running: int = 0
    array_place: int | None = None
    # Its submitter (`actor`) and, when it has a limit (`limit set`), that limit, its jobs
    # admitted and not ended, and this job's place among its jobs of this provider ready to go.
    submitter: str = ""
    submitter_limit: int | None = None
    submitter_running: int = 0
    submitter_place: int | None = None
    # A job of a pool (--pool): its size (None: no such pool), its jobs admitted and not
    # ended, and its place among the pool's jobs of its provider ready to go.
    pool: str = ""
    pool_size: int | None = None
    pool_running: int = 0
    pool_place: int | None = None
    # In the fair order, a job in line: its turn, and of it its submitter's use
    # (hodei.submitter_use); the rest is its place among its submitter's jobs in line.
    turn: int = 0
    used: int = 0

    @property
    def past_array_limit(self) -> bool:
        return bool(self.array_limit) and _past(self.array_limit, self.array_running, self.array_place)

    @property
    def past_submitter_limit(self) -> bool:
        return self.submitter_limit is not None and _past(
            self.submitter_limit, self.submitter_running, self.submitter_place
        )

    @property
    def past_pool_size(self) -> bool:
        """Out of line because its pool is full (or gone), nothing else holding it back."""
        return bool(self.pool) and _past(self.pool_size or 0, self.pool_running, self.pool_place)


def _past(limit: int, running: int, place: int | None) -> bool:
    """A job placed among the ready ones of a limit (None: not ready, held back otherwise)
    beyond its room."""
    return place is not None and running + place > limit


@dataclass(frozen=True)
class NeverStarted:
    job_id: str
    after_id: str
    condition: str
    after_state: str

    @property
    def reason(self) -> str:
        return never_after(self.after_id, self.after_state, self.condition) + " (--after)"


class _CapacityRow(NamedTuple):
    """provider_capacity_and_use's row."""

    configured: int | None
    in_use: int
    starting: int
    disabled: bool
    max_cpu_cores: float | None
    max_memory_bytes: int | None
    cpu_cores_in_use: float
    memory_bytes_in_use: int


class Asked(NamedTuple):
    """A job, and what it asks for (asked_resources)."""

    id: UUID
    cpu_cores: float
    memory_bytes: int


@dataclass(frozen=True)
class _Room:
    """What a round (or a job joining the queue) found under its provider's lock."""

    capacity: Capacity
    pools: list[str]
    submitters: list[str]
    joining_limited: bool

    @property
    def free(self) -> int:
        return self.capacity.free


@dataclass
class _Turn:
    """This process's admitter of one provider: one thread admits, later callers only
    ask it to look again (rather than each waiting for the advisory lock, a pooled
    connection held, and then finding the queue already served)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    running: bool = False
    again: bool = False
    # When this process's last look found no room (None: it found some). Until anything
    # here frees room (its round clears this) a job joining the queue need not look.
    full_at: float | None = None

    def full_lately(self) -> bool:
        """The last look here, under ``FULL_FOR`` ago, found no room (``lock`` held)."""
        return self.full_at is not None and time.monotonic() - self.full_at < FULL_FOR


class Admission:
    def __init__(
        self,
        store: HodeiStore,
        defaults: Mapping[ProviderType, int],
        start_limits: Mapping[ProviderType, int] | None = None,
        fair_window: float | None = None,
    ) -> None:
        """``start_limits``: workers a provider may have starting at once, where its starts
        compete for this machine (the local provider's agents: a burst of them started
        together takes each several times as long, the first job of a burst too).
        ``fair_window``: the queue's order is by submitters' turns, their use counted over
        so many seconds (HODEI_QUEUE_ORDER=fair); None: submission order."""
        self.store = store
        self.pool: ConnectionPool = store.pool
        self.defaults = dict(defaults)
        self.start_limits = dict(start_limits or {})
        self.order = FIFO if fair_window is None else {"fair": True}
        self.recent = fair_window or 0.0
        self._turns = {provider: _Turn() for provider in ProviderType}

    @property
    def fair(self) -> bool:
        return self.order["fair"]

    def capacity(self, provider: ProviderType) -> Capacity:
        found = fetch_one(self.pool, "provider_capacity_and_use", {"provider": provider.value}, _CapacityRow)
        assert found is not None  # the query always has its one row
        return Capacity(
            int(found.configured or self.defaults[provider]),
            int(found.in_use),
            int(found.starting),
            self.start_limits.get(provider),
            bool(found.disabled),
            ResourceLimits(found.max_cpu_cores, found.max_memory_bytes),
            float(found.cpu_cores_in_use),
            int(found.memory_bytes_in_use),
        )

    def started(self, provider: ProviderType) -> None:
        """A worker of ``provider`` has registered: where starts are limited, a start is free."""
        if provider in self.start_limits:
            self.admit(provider)

    def admit(self, provider: ProviderType, ack: Ack | None = None, *, joined: bool = False) -> int:
        """Admits as many queued jobs of ``provider`` as it has free slots; how many this
        call admitted. While another thread of this process admits for the provider, the
        call returns at once and that thread looks again when it is done. ``ack``: the
        relay's row that asked, acknowledged with the first round's admissions if any.
        ``joined``: asked because a job joined the queue, which frees nothing: when the
        last round here (none running), under ``FULL_FOR`` ago, found no room, no round
        looks (in a burst every job cost one that found none). Room freed here runs a
        round; room freed by another server is given out by its round, or at the latest
        by the next sweep's."""
        turn = self._turns[provider]
        with turn.lock:
            if turn.running:
                turn.again = True
                return 0
            if joined and turn.full_lately():
                return 0
            turn.running = True
        admitted = 0
        try:
            while True:
                with turn.lock:
                    turn.again = False
                admitted += self._admit_round(provider, ack)
                ack = None
                with turn.lock:
                    if not turn.again:
                        turn.running = False
                        return admitted
        except BaseException:
            with turn.lock:
                turn.running = False
            raise

    def _admit_round(self, provider: ProviderType, ack: Ack | None) -> int:
        """One transaction, under the provider's advisory lock (servers sharing the
        database never admit past the capacity between them): the free slots' worth of
        queued jobs, counted, chosen and admitted."""

        def run() -> tuple[int, list[Job]]:
            room = self._room(provider)
            if room.free == 0:
                return 0, []
            # In one order (the provider's, its pools' by name, its submitters' by name):
            # rounds never deadlock.
            for name in room.pools:
                fetch_value(self.pool, "lock_pool", (name,))
            for name in room.submitters:
                fetch_value(self.pool, "lock_submitter", (name,))
            admitted = []
            queued = {
                "provider": provider.value,
                "limit": room.free,
                "joining": None,
                "pools": room.pools,
                "submitters": room.submitters,
                "recent": self.recent,
            }
            for job_id in self._fitting(room.capacity, fetch_column(self.pool, "next_in_queue", queued, self.order)):
                job = self.store.load(Job, job_id)
                try:
                    job.admit()
                except InvalidTransition:
                    continue  # cancelled, or moved on, since it was read from the queue
                admitted.append(job)
            return len(admitted), admitted

        try:
            return self.store.command(Meta(actor=SYSTEM, ack=ack), run)
        except ConcurrencyConflict:
            log.info("jobs changed while being admitted; the next round looks again")
            return 0

    def admits_at_once(self, job: Job, provider: ProviderType, now: datetime) -> bool:
        """Whether ``job``, joining ``provider``'s queue in the caller's transaction, takes
        a slot at once: the provider has one free and no job ready to be admitted waiting
        for it (so nobody is passed). Asked under the provider's advisory lock, which the
        caller's transaction then holds, as a round's, until it ends: the slot is counted
        by whoever looks next. Not while this process's round runs or its last look found
        no room (``FULL_FOR``): the job waits in the queue as any, and rounds admit it."""
        if job.held_by is not None:
            return False  # a round admits it once released
        if job.retry_at is not None and job.retry_at > now:
            return False  # its backoff first
        if job.spec.after:
            return False  # a round admits it once the jobs it starts after have ended
        if job.spec.array_limit:
            return False  # a round admits it while its array has room
        if job.spec.pool:
            return False  # a round admits it while its pool has room (under the pool's lock)
        begins = job.spec.begins
        if begins is not None and begins > now:
            return False  # a round admits it once its time has come
        turn = self._turns[provider]
        with turn.lock:
            if turn.running or turn.full_lately():
                return False
        room = self._room(provider, joining=str(job.id))
        if room.joining_limited:
            return False  # a round admits it while its submitter has room (under its lock)
        # Whether anyone ready waits, a pool's jobs too (none is admitted here: no locks).
        queued = {
            "provider": provider.value,
            "limit": 1,
            "joining": str(job.id),
            "pools": None,
            "submitters": None,
            "recent": self.recent,
        }
        resources = job.spec.resources
        return (
            room.free > 0
            and room.capacity.fitting([(job.id, resources.cpu_cores, resources.memory_bytes)]) != []
            and not fetch_column(self.pool, "next_in_queue", queued, self.order)
        )

    def _fitting(self, capacity: Capacity, next_in_line: list[UUID]) -> list[UUID]:
        """Those of the jobs next in line that its resources hold (all where it has no limits)."""
        if not capacity.resources.any or not next_in_line:
            return next_in_line
        asked = self.asked(next_in_line)
        return capacity.fitting(asked[job_id] for job_id in next_in_line)

    def asked(self, job_ids: Iterable[UUID | str]) -> dict[UUID, Asked]:
        """What each of these jobs asks for (--cpu, --memory)."""
        return {found.id: found for found in fetch_all(self.pool, "asked_resources", (list(job_ids),), Asked)}

    def _room(self, provider: ProviderType, joining: str | None = None) -> _Room:
        """The provider's free slots, counted under its advisory lock, which the caller's
        transaction holds until it ends (remembered here when there are none), the pools
        its queued jobs name and their submitters that have a limit, and whether the
        submitter of ``joining`` has one."""

        found = fetch_one(
            self.pool,
            "lock_admission",
            {"provider": provider.value, "joining": joining},
            lambda pools, submitters, joining_limited: (pools, submitters, joining_limited),
        )
        assert found is not None  # the query always has its one row
        capacity = self.capacity(provider)
        turn = self._turns[provider]
        with turn.lock:
            turn.full_at = time.monotonic() if capacity.free == 0 else None
        return _Room(capacity, *found)

    def admit_all(self, providers: list[ProviderType]) -> None:
        for provider in providers:
            self.admit(provider)

    def queue(self, limit: int) -> list[QueuedJob]:
        return fetch_all(self.pool, "queued_jobs", {"limit": limit, "recent": self.recent}, QueuedJob, self.order)

    def lines(self) -> dict[str, InLine]:
        """Each provider's line with a job in it, by provider."""
        rows = fetch_all(self.pool, "waiting_in_line", {"recent": self.recent}, InLine, self.order)
        return {row.provider: row for row in rows}

    def cancel_never_started(self, limit: int = 100) -> int:
        """Cancels queued jobs one of whose ``--after`` jobs ended otherwise than asked
        (as Slurm's ``kill_invalid_depend``): they would wait for ever. How many."""
        cancelled = 0
        for found in fetch_all(self.pool, "never_started_dependents", {"limit": limit}, NeverStarted):

            def cancel(found: NeverStarted = found) -> tuple[bool, list[Job]]:
                job = self.store.load(Job, found.job_id)
                if job.is_terminal or job.admitted:
                    return False, []
                job.cancel(found.reason)
                return True, [job]

            try:
                done = self.store.command(Meta(actor=SYSTEM, correlation_id=found.job_id), cancel)
            except ConcurrencyConflict:
                continue  # it kept moving while this tried: the next round looks again
            if done:
                cancelled += 1
                log.info("cancelled job %s: %s", found.job_id, found.reason, extra={"job_id": found.job_id})
        return cancelled
