"""Cron jobs: defining them, and starting the job of each slot that comes due.

Every server's sweeper calls ``fire_due`` about once a second. Which cron jobs exist
and what each says is read from the log (their latest versions through a partial index,
then only the changed ones loaded); the job of a slot has an id derived from the slot
(``hodei.domain.cron.slot_job_id``), so two servers firing the same slot write one job:
the second's JobCreated is refused by the event log and it finds the job there.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from uuid import UUID, uuid4

from hodei.cancels import cancel
from hodei.domain.base import check_name
from hodei.domain.cron import MAX_CRON_JOBS, Concurrency, CronJob, Definition, cron_id, slot_job_id, slot_job_ids
from hodei.domain.job import Job
from hodei.domain.spec import PARENT_LABEL, JobBounds, JobSpec
from hodei.errors import ConcurrencyConflict, InvalidTransition, NotFound
from hodei.store.app import HodeiStore, Meta
from hodei.store.db import command_transaction, fetch_all
from hodei.store.job_secrets import JobSecrets

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class CronJobRun:
    """A job a cron job started."""

    job_id: UUID
    state: str
    created_at: datetime


@dataclass(frozen=True)
class Backfilled:
    """A time a backfill looked at: its run's jobs, and whether it had run before (then
    nothing was submitted for it)."""

    time: datetime
    job_ids: list[UUID]
    already_run: bool


@dataclass(frozen=True)
class Version:
    aggregate_id: str
    version: int


class CronJobs:
    def __init__(
        self,
        store: HodeiStore,
        secrets: JobSecrets,
        *,
        kill_grace: float,
        clock: Clock = _now,
        bounds: JobBounds | None = None,
    ) -> None:
        """``kill_grace``: the seconds between SIGTERM and SIGKILL of a job that a slot of
        a cron job with ``replace`` cancels (HODEI_KILL_GRACE, a cancel's without --grace).
        ``bounds``: what a job asking for none is given and the most one may ask for
        (HODEI_DEFAULT_CPUS, …), for each job made."""
        self.store = store
        self.secrets = secrets
        self.kill_grace = kill_grace
        self.bounds = bounds or JobBounds()
        self.clock = clock
        # Every cron job as last loaded, by id: reloaded when its version moves. A cache:
        # the log says what exists.
        self._known: dict[str, CronJob] = {}
        # When to look at each cron job again (its next slot), and at which version of it.
        self._next: dict[UUID, tuple[int, datetime]] = {}
        self._lock = threading.Lock()
        # Times this process skipped, by (cron job, why: "forbid" or "deadline"), since it
        # started: a Prometheus counter (hodei.metrics), not events, which would grow a cron
        # job's log with every skipped time.
        self._skipped: collections.Counter[tuple[str, str]] = collections.Counter()

    # Definitions ---------------------------------------------------------------

    def define(
        self, name: str, definition: Definition, secrets: Mapping[str, str], actor: str, *, replace: bool
    ) -> CronJob:
        """A new cron job, or (``replace``, or a deleted one's name) a new definition."""
        check_name(name, "a cron job")
        definition.validate(secrets)
        sealed = self.secrets.seal(cron_id(name), secrets)
        # Counted before the command (whose loads are its own): two cron jobs created at
        # once may both pass, a bound of memory and sweep time, not a quota.
        defined = len(self.all())

        def run() -> tuple[CronJob, list[CronJob]]:
            cron = self.store.find(CronJob, cron_id(name))
            if (cron is None or cron.deleted) and defined >= MAX_CRON_JOBS:
                raise InvalidTransition(f"there are {MAX_CRON_JOBS} cron jobs, the most there may be: delete one first")
            if cron is None:
                cron = CronJob.create(name, definition, sealed, actor)
            elif cron.deleted or replace:
                cron.redefine(definition, sealed, actor)
            else:
                raise InvalidTransition(f"cron job {name} exists: `cron create --replace` gives it a new definition")
            return cron, [cron]

        return self.store.command(Meta(actor=actor), run)

    def change(self, name: str, actor: str, act: Callable[[CronJob], None]) -> CronJob:
        """Pauses, resumes or deletes (``act``); a deleted one's secrets are shredded."""

        def run() -> tuple[CronJob, list[CronJob]]:
            cron = self.get(name)
            act(cron)
            return cron, [cron]

        cron = self.store.command(Meta(actor=actor), run)
        if cron.deleted:
            self.secrets.purge(cron.id)
        return cron

    def get(self, name: str) -> CronJob:
        cron = self.find(name)
        if cron is None:
            raise NotFound(f"cron job {name[:80]!r} not found (`cron list` shows them)")
        return cron

    def find(self, name: str) -> CronJob | None:
        """The cron job of that name; None when there is none (or it was deleted)."""
        cron = self.store.find(CronJob, cron_id(name)) if name else None
        return None if cron is None or cron.deleted else cron

    def all(self) -> list[CronJob]:
        """Every cron job that was not deleted, by name."""
        return sorted((cron for cron in self._refreshed() if not cron.deleted), key=lambda cron: cron.name)

    def newest_jobs(self, names: list[str]) -> dict[str, CronJobRun]:
        def row(name: str, job_id: UUID, state: str, created_at: datetime) -> tuple[str, CronJobRun]:
            return name, CronJobRun(job_id, state, created_at)

        return dict(fetch_all(self.store.pool, "cron_jobs_newest", (names,), row))

    def started(self, job_ids: list[UUID]) -> set[UUID]:
        """Which of these jobs were written: a slot's job is there once any server fired it."""
        return set(fetch_all(self.store.pool, "jobs_there", (job_ids,), lambda job_id: job_id))

    def active_jobs(self, name: str) -> list[CronJobRun]:
        """Its jobs that have not ended, oldest first."""
        return fetch_all(self.store.pool, "cron_jobs_not_ended", (name,), CronJobRun)

    def _refreshed(self) -> list[CronJob]:
        """Every cron job not deleted, loaded again where its version moved; a deleted one is
        let go with what this process kept of it (its next slot, its skipped counts)."""
        versions = {
            row.aggregate_id: row.version for row in fetch_all(self.store.pool, "cron_job_versions", None, Version)
        }
        with self._lock:
            for aggregate_id in self._known.keys() - versions.keys():
                gone = self._known.pop(aggregate_id)
                self._next.pop(gone.id, None)
                for key in [key for key in self._skipped if key[0] == gone.name]:
                    del self._skipped[key]
            for aggregate_id, version in versions.items():
                known = self._known.get(aggregate_id)
                if known is None or known.version != version:
                    self._known[aggregate_id] = self.store.load(CronJob, aggregate_id)
            return list(self._known.values())

    # Runs ------------------------------------------------------------------------

    def run_now(
        self,
        name: str,
        actor: str,
        env: Mapping[str, str] | None = None,
        check: Callable[[list[JobSpec]], None] | None = None,
        job_ids: list[UUID] | None = None,
        request_digest: str | None = None,
        parent: str | None = None,
    ) -> list[UUID]:
        """The jobs of the cron job now (a pipeline's all), whatever its schedule and policy
        (``cron run``); ``env``: their variables over the specs' (Nomad's dispatch of a
        parameterized job), which the definition's checks never saw: ``check`` (the API's)
        sees the specs first. ``job_ids`` (one for each of its specs) and ``request_digest``:
        an idempotency key's (hodei.server.submission). ``parent``: the job whose API token
        asks (its jobs are labelled with it, as those it submits are)."""
        cron = self.get(name)
        job_ids = job_ids or [uuid4() for _ in cron.definition.specs]
        self._submit(cron, job_ids, self.clock(), actor, env, check, request_digest, parent)
        return job_ids

    def backfill(
        self,
        name: str,
        start: datetime,
        end: datetime,
        actor: str,
        check: Callable[[list[JobSpec]], None] | None = None,
        parent: str | None = None,
    ) -> list[Backfilled]:
        """The run of each time of its schedule from ``start`` to ``end`` that never ran
        (``CronJob.backfill_times``), oldest first, in the name of ``actor``, each as its time
        would have run it (HODEI_CRON_TIME, its slot's jobs: a time that ran, or that a sweep
        runs meanwhile, is not run again, so a backfill sent again, or stopped part-way by a
        refusal, goes on where it stopped), whatever its policy: the times were missed, not
        running beside each other. ``check`` and ``parent``: as ``run_now``'s, for each run."""
        cron = self.get(name)
        count = len(cron.definition.specs)
        times = cron.backfill_times(start, end, self.clock())
        runs = [(time, slot_job_ids(cron.id, time, count)) for time in times]
        ran = self.started([job_ids[0] for _, job_ids in runs])
        done = []
        for time, job_ids in runs:
            already = job_ids[0] in ran
            if not already:
                try:
                    self._submit(cron, job_ids, time, actor, check=check, parent=parent)
                except ConcurrencyConflict:
                    already = True  # a sweep (or another backfill) wrote the time's run first
            done.append(Backfilled(time, job_ids, already))
        return done

    def fire_due(self) -> list[UUID]:
        """Starts the job of every slot due (the sweeper's round); the jobs it wrote. A cron
        job is looked at again at its next slot (or once it changed), not at every sweep: a
        schedule's latest slot costs 60-230 us to compute, a thousand cron jobs a sweep."""
        now = self.clock()
        started = []
        for cron in self._refreshed():
            version, look_at = self._next.get(cron.id, (None, now))
            if version == cron.version and now < look_at:
                continue
            slot = cron.due(now)
            late = cron.too_late(now) if slot is None else None
            if late is not None and self.store.find(Job, slot_job_id(cron.id, late)) is None:  # not run before
                self._skip(cron.name, "deadline")
                log.info(
                    "cron job %s skips its run of %s: %.0fs late, past its starting deadline of %gs",
                    cron.name,
                    late.isoformat(),
                    (now - late).total_seconds(),
                    cron.definition.starting_deadline_seconds,
                )
            if slot is not None:
                try:
                    job_id = self._fire(cron, slot)
                except ConcurrencyConflict:
                    job_id = None  # another server wrote the slot's job first
                except Exception as exc:
                    log.warning("cron job %s could not start its job of %s: %s", cron.name, slot.isoformat(), exc)
                    continue  # the next sweep tries again
                if job_id is not None:
                    started.append(job_id)
            self._next[cron.id] = (cron.version, cron.definition.schedule.following(now, 1)[0])
        return started

    def _fire(self, cron: CronJob, slot: datetime) -> UUID | None:
        job_ids = slot_job_ids(cron.id, slot, len(cron.definition.specs))
        job_id = job_ids[0]
        if self.store.find(Job, job_id) is not None:
            return None  # another server (or this one, before a restart) started it
        concurrency = cron.definition.concurrency
        # Not the slot's own jobs: another server may have written them since it looked.
        running = (
            []
            if concurrency is Concurrency.ALLOW
            else [run for run in self.active_jobs(cron.name) if run.job_id not in job_ids]
        )
        if running and concurrency is Concurrency.FORBID:
            self._skip(cron.name, "forbid")
            log.info(
                "cron job %s skips its run of %s: job %s is still %s (concurrency forbid)",
                cron.name,
                slot.isoformat(),
                running[-1].job_id,
                running[-1].state,
            )
            return None
        for run in running:  # replace: cancelled first, so a crash between leaves no two running
            reason = f"replaced by the run of cron job {cron.name} at {slot.isoformat()}"
            cancel(self.store, run.job_id, reason, self.kill_grace, self.clock())
        self._submit(cron, job_ids, slot, cron.owner)
        log.info("cron job %s started job %s for %s", cron.name, ", ".join(map(str, job_ids)), slot.isoformat())
        return job_id

    def _skip(self, name: str, why: str) -> None:
        with self._lock:
            self._skipped[name, why] += 1

    def skipped(self) -> dict[tuple[str, str], int]:
        """The times this process skipped since it started, by (cron job, "forbid" or
        "deadline")."""
        with self._lock:
            return dict(self._skipped)

    def _submit(
        self,
        cron: CronJob,
        job_ids: list[UUID],
        moment: datetime,
        actor: str,
        env: Mapping[str, str] | None = None,
        check: Callable[[list[JobSpec]], None] | None = None,
        request_digest: str | None = None,
        parent: str | None = None,
    ) -> None:
        """The run's jobs (one for each spec, ``job_ids``), all or none, in the name of
        ``actor`` (a slot's: the cron job's owner, who may cancel them); each given the
        secrets its spec names, sealed again under a key of its own, and labelled with the
        ``parent`` job that asked with its API token, if one did. ``check`` runs in the
        transaction that writes them (a submitter's limit counts its jobs there)."""
        plain = self.secrets.open_sealed(cron.id, cron.sealed_secrets, f"cron job {cron.name}")
        jobs = []
        for job_id, asked in zip(job_ids, cron.run_specs(job_ids, moment, env or {}), strict=True):
            spec = self.bounds.apply(asked)
            if parent is not None:
                spec = replace(spec, labels={**spec.labels, PARENT_LABEL: parent})
            given = {name: plain[name] for name in spec.secret_names}
            spec.validate(given)
            jobs.append(Job.submit(spec, job_id, self.secrets.seal(job_id, given), request_digest=request_digest))
        with command_transaction(self.store.pool):
            if check is not None:
                check([job.spec for job in jobs])
            self.store.write(jobs, Meta(actor=actor))  # each job's events correlated with itself
