"""The CronJob aggregate: a job spec submitted again at every time of a schedule.

What Kubernetes' CronJob, Nomad's periodic jobs and Slurm's scrontab do. A cron job's
events are its definition and its switches (paused, resumed, deleted) only: the jobs
it starts carry their own. Each time of the schedule (a *slot*) gets a job whose id is
derived from the cron job and the slot, so a slot becomes a job once, whichever server
fires it and however often it tries (the event log refuses the second JobCreated).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from eventsourcing.domain import event

from hodei.domain.base import HodeiAggregate, check_name, derived_id
from hodei.domain.duration import seconds_of
from hodei.domain.spec import JobSpec
from hodei.domain.workflow import MOST_JOBS, in_workflow, resolved
from hodei.errors import InvalidInput, InvalidTransition

# The label of every job a cron job starts: the cron job's name.
CRON_LABEL = "hodei.io/cron"
# In the environment of every job a cron job starts: the time it was scheduled for
# (ISO 8601, UTC; for `cron run`, the time it was asked for).
CRON_TIME_VARIABLE = "HODEI_CRON_TIME"

# cron's nicknames, as Vixie cron and Kubernetes read them.
NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_EVERY = re.compile(r"@every\s+(.+)", re.IGNORECASE)
# A sweep runs about once a second: a shorter period could not be kept.
MIN_EVERY_SECONDS = 1
MAX_EVERY_SECONDS = 366 * 86400
MAX_STARTING_DEADLINE_SECONDS = 366 * 86400.0
# Every sweep of every server reads each cron job's version and compares its next time.
MAX_CRON_JOBS = 1000
# The most times of its schedule one backfill (`cron backfill`) runs: a longer range goes in
# turns (each time a run of its own, its jobs written together).
MOST_BACKFILLED = 100


class Concurrency(StrEnum):
    """What a slot does while a job of an earlier one has not ended (Kubernetes'
    ``concurrencyPolicy``): start its own beside it, skip, or cancel it and start."""

    ALLOW = "allow"
    FORBID = "forbid"
    REPLACE = "replace"


def cron_id(name: str) -> UUID:
    """A cron job's id, from its name: defining a name twice is one aggregate."""
    return derived_id("cron", name)


def slot_job_id(cron: UUID, slot: datetime) -> UUID:
    """The id of the job of one slot (a pipeline's first): whoever fires it, the same job."""
    return derived_id("cron", cron, slot.astimezone(UTC).isoformat())


def slot_job_ids(cron: UUID, slot: datetime, count: int) -> list[UUID]:
    """The ids of the ``count`` jobs of one slot, in the definition's order: the first is
    ``slot_job_id``'s, so a slot is written once whatever its jobs."""
    first = slot_job_id(cron, slot)
    return [first, *(derived_id("cron", cron, slot.astimezone(UTC).isoformat(), place) for place in range(1, count))]


def _reads(fields: str) -> bool:
    """Whether CronSim reads five fields: each one alone is well written."""
    try:
        CronSim(fields, datetime.now(UTC))
    except CronSimError:
        return False
    return True


@dataclass(frozen=True)
class Schedule:
    """A cron expression (five fields, or a nickname such as ``@daily``) read in a time
    zone, or ``@every DURATION`` (slots at multiples of the period since the Unix epoch)."""

    expression: str
    time_zone: str = "UTC"

    def __post_init__(self) -> None:
        self.validate()

    @property
    def _every(self) -> int | None:
        found = _EVERY.fullmatch(self.expression.strip())
        seconds = seconds_of(found.group(1)) if found else None
        return int(seconds) if seconds is not None and seconds == int(seconds) else None

    @property
    def _fields(self) -> str:
        text = " ".join(self.expression.split())
        return NICKNAMES.get(text.lower(), text)

    def _zone(self) -> ZoneInfo:
        """(A name the time zone database has no zone of can be a directory of them,
        ``America``, or a file name too long for the disk: OSError.)"""
        try:
            return ZoneInfo(self.time_zone)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise InvalidInput(
                f"time zone {self.time_zone[:64]!r} is not known (an IANA name such as UTC or Europe/Madrid)"
            ) from None

    def validate(self) -> None:
        self._zone()
        if self.expression.strip().lower().startswith("@every"):
            every = self._every
            if every is None or not MIN_EVERY_SECONDS <= every <= MAX_EVERY_SECONDS:
                raise InvalidInput(
                    f"schedule {self.expression[:64]!r}: @every takes a duration of whole seconds "
                    f"from {MIN_EVERY_SECONDS}s to 366d (e.g. @every 30s, @every 2h, @every 1h30m)"
                )
            return
        fields = self._fields
        if len(fields.split()) != 5:
            raise InvalidInput(
                f"schedule {self.expression[:64]!r}: give five fields (minute hour day-of-month month "
                f"day-of-week, e.g. '0 3 * * *'), a nickname ({', '.join(NICKNAMES)}) or @every DURATION"
            )
        try:
            next(CronSim(fields, datetime.now(self._zone())))
        except (CronSimError, StopIteration) as exc:
            minute, hour, day, month, weekday = fields.split()
            if _reads(f"{minute} {hour} 1 {month} {weekday}") and _reads(f"{minute} {hour} {day} * {weekday}"):
                raise InvalidInput(
                    f"schedule {self.expression[:64]!r} never comes: no month it names ({month}) has day {day}"
                ) from None
            raise InvalidInput(
                f"schedule {self.expression[:64]!r}: {exc or 'no time ever matches'} (minute 0-59, hour 0-23, "
                "day of month 1-31, month 1-12 or JAN-DEC, day of week 0-7 or SUN-SAT; *, lists, ranges, /steps)"
            ) from None

    def latest(self, moment: datetime) -> datetime:
        """The last slot at or before ``moment`` (UTC)."""
        every = self._every
        if every is not None:
            seconds = int(moment.timestamp())
            return datetime.fromtimestamp(seconds - seconds % every, UTC)
        # CronSim going back from a whole second excludes it (from a fraction of one, it
        # includes the whole second before): start at the next whole second.
        start = (moment.replace(microsecond=0) + timedelta(seconds=1)).astimezone(self._zone())
        return next(CronSim(self._fields, start, reverse=True)).astimezone(UTC)

    def following(self, moment: datetime, count: int) -> list[datetime]:
        """The next ``count`` slots after ``moment`` (UTC)."""
        every = self._every
        if every is not None:
            first = self.latest(moment) + timedelta(seconds=every)
            return [first + timedelta(seconds=every * n) for n in range(count)]
        slots = CronSim(self._fields, moment.astimezone(self._zone()))
        return [next(slots).astimezone(UTC) for _ in range(count)]

    def between(self, start: datetime, end: datetime, most: int) -> list[datetime]:
        """Its times from ``start`` to ``end``, both included (UTC): at most ``most`` + 1, so
        that a caller can tell a range holding more."""
        times: list[datetime] = []
        try:
            after = start - timedelta(microseconds=1)  # ``following`` is strictly after: ``start`` too
            while len(times) <= most:
                [slot] = self.following(after, 1)
                if slot > end:
                    break
                times.append(slot)
                after = slot
        except OverflowError:  # in its time zone, a moment of the years 1 or 9999 leaves the calendar
            raise InvalidInput(
                f"the times from {start.isoformat()} to {end.isoformat()} reach past the calendar's years 1 to 9999"
            ) from None
        return times

    def explain(self) -> str:
        if self._every is not None:
            return " ".join(self.expression.split())[1:].lower()  # "every 30s"
        text = CronSim(self._fields, datetime.now(self._zone())).explain()
        return text if self.time_zone == "UTC" else f"{text} ({self.time_zone})"


def which_job(place: int, spec: JobSpec, count: int) -> str:
    """What a refusal of one job of a cron job's ``count`` begins with: which job it is
    (nothing when it runs one)."""
    return f"job {place + 1} of the cron job ({spec.name or 'no name'}): " if count > 1 else ""


@dataclass(frozen=True)
class Definition:
    """What a person defines: the schedule, its policies, the job spec (as stored), and
    for a pipeline (`cron create --file` of several jobs) the specs of its other jobs."""

    schedule: Schedule
    concurrency: Concurrency
    # A slot missed (the platform was down) starts late only within this many seconds;
    # 0: however late.
    starting_deadline_seconds: float
    spec: JobSpec
    # A pipeline's jobs after the first, each submitted with it at every slot, in an order
    # that runs: each may start after jobs before it, named by place as a request of
    # several names them (``hodei.domain.workflow``: ``#0`` is ``spec``'s job).
    more_specs: tuple[JobSpec, ...] = ()

    @property
    def specs(self) -> tuple[JobSpec, ...]:
        return (self.spec, *self.more_specs)

    def validate(self, secrets: Mapping[str, str] | None = None) -> None:
        """``secrets``: the values submitted with it, checked with the specs that name them
        (a size, a name also given as a variable)."""
        deadline = self.starting_deadline_seconds
        if not 0 <= deadline <= MAX_STARTING_DEADLINE_SECONDS:
            raise InvalidInput(f"the starting deadline must be 0 to 366 days in seconds, got {deadline:.15g}")
        if len(self.specs) > MOST_JOBS:
            raise InvalidInput(f"a cron job runs at most {MOST_JOBS} jobs at each time, got {len(self.specs)}")
        several = len(self.specs) > 1
        for place, spec in enumerate(self.specs):
            where = which_job(place, spec, len(self.specs))
            waits_for_others = bool(spec.after) if place == 0 else bool(self._others(spec, place))
            if waits_for_others or spec.begin_at or spec.array_limit:
                raise InvalidInput(
                    f"{where}a cron job's jobs cannot wait for a time (--begin) or jobs other than those of the same "
                    "run (--after), nor limit an array"
                )
            given = None if secrets is None else {name: secrets[name] for name in spec.secret_names if name in secrets}
            try:
                spec.validate(given if several else secrets)
                if secrets:
                    spec.refuse_written(secrets)
            except InvalidInput as exc:
                raise InvalidInput(f"{where}{exc}") from None

    @staticmethod
    def _others(spec: JobSpec, place: int) -> dict[str, str]:
        """What ``spec`` starts after beside jobs of its own run (refused: a job of the run
        not before it)."""
        placeholder = [UUID(int=n) for n in range(place)]
        return dict(resolved(spec, place, placeholder)[0].after)

    def run_specs(self, job_ids: list[UUID]) -> list[JobSpec]:
        """The specs of one run's jobs (``job_ids``, one for each spec, in order): a
        pipeline's each labelled with its first job's id and starting after its jobs by id."""
        if not self.more_specs:
            return [self.spec]
        specs = []
        for place, spec in enumerate(self.specs):
            own, siblings = resolved(spec, place, job_ids)
            specs.append(in_workflow(own, job_ids[0], siblings))
        return specs

    def payload(self) -> dict[str, Any]:
        written: dict[str, Any] = {
            "schedule": self.schedule.expression,
            "time_zone": self.schedule.time_zone,
            "concurrency": self.concurrency.value,
            "starting_deadline_seconds": self.starting_deadline_seconds,
            "spec": self.spec.to_payload(),
        }
        if self.more_specs:  # a definition of one job is written as before pipelines were
            written["more_specs"] = [spec.to_payload() for spec in self.more_specs]
        return written

    @classmethod
    def of(cls, payload: dict[str, Any]) -> Definition:
        return cls(
            schedule=Schedule(payload["schedule"], payload["time_zone"]),
            concurrency=Concurrency(payload["concurrency"]),
            starting_deadline_seconds=float(payload["starting_deadline_seconds"]),
            spec=JobSpec.from_payload(payload["spec"]),
            more_specs=tuple(JobSpec.from_payload(spec) for spec in payload.get("more_specs", ())),
        )


class CronJob(HodeiAggregate):
    id: UUID  # given by the caller (the library takes an `id` argument when annotated)

    @event("CronJobCreated")
    def __init__(
        self, name: str, definition: dict[str, Any], sealed_secrets: dict[str, str], owner: str, since: str
    ) -> None:
        self.name = name
        self._define(definition, sealed_secrets, owner, since)
        self.paused = False
        self.deleted = False

    @classmethod
    def create(cls, name: str, definition: Definition, sealed_secrets: dict[str, str], owner: str) -> CronJob:
        definition.validate()
        _check_sealed(definition, sealed_secrets)
        return cls(  # type: ignore[call-arg]  # `id` is accepted: the class annotates it
            id=cron_id(check_name(name, "a cron job")),
            name=name,
            definition=definition.payload(),
            sealed_secrets=sealed_secrets,
            owner=owner,
            since=_now(),
        )

    def _define(self, definition: dict[str, Any], sealed_secrets: dict[str, str], owner: str, since: str) -> None:
        self.definition = Definition.of(definition)
        self.sealed_secrets = dict(sealed_secrets)
        # Who defined it: its jobs are submitted in this name (so they may cancel them).
        self.owner = owner
        # Slots before this never start: a new schedule, or one resumed, looks ahead.
        self.active_since = datetime.fromisoformat(since)

    def redefine(self, definition: Definition, sealed_secrets: dict[str, str], owner: str) -> None:
        """A new definition; a deleted cron job comes back with it (paused or not as it was)."""
        definition.validate()
        _check_sealed(definition, sealed_secrets)
        self._redefined(definition=definition.payload(), sealed_secrets=sealed_secrets, owner=owner, since=_now())

    def pause(self) -> None:
        self._check_live("pause")
        if not self.paused:
            self._paused()

    def resume(self) -> None:
        self._check_live("resume")
        if self.paused:
            self._resumed(since=_now())

    def delete(self) -> None:
        self._check_live("delete")
        self._deleted()

    def _check_live(self, action: str) -> None:
        if self.deleted:
            raise InvalidTransition(f"cannot {action} cron job {self.name}: it was deleted")

    @property
    def active(self) -> bool:
        return not (self.paused or self.deleted)

    def due(self, now: datetime) -> datetime | None:
        """The slot to start now, if any: the latest at or before ``now``, once the cron
        job was active then and within its starting deadline (older missed slots are
        skipped: after an outage a schedule runs once, not once per slot missed)."""
        slot = self.last_slot(now)
        return slot if slot is not None and not self._late(slot, now) else None

    def too_late(self, now: datetime) -> datetime | None:
        """The slot that would be due but for its starting deadline, if any (said in the
        server's log: a time that did not run)."""
        slot = self.last_slot(now)
        return slot if slot is not None and self._late(slot, now) else None

    def backfill_times(self, start: datetime, end: datetime, now: datetime) -> list[datetime]:
        """The times of its schedule from ``start`` to ``end`` (both included) that a backfill
        runs (Airflow's `dags backfill`): any that came by ``now``, paused or not, before it
        was defined or not. A time to come is the schedule's to run when it comes (run
        early, its slot's job would be there and the time would not run again); a range
        holding more than MOST_BACKFILLED goes in turns."""
        if start > end:
            raise InvalidInput(f"--since ({start.isoformat()}) must not be after --until ({end.isoformat()})")
        if end > now:
            raise InvalidInput(
                f"--until ({end.isoformat()}) has not come yet (now {now.isoformat()}): a time to come runs when "
                "it comes"
            )
        times = self.definition.schedule.between(start, end, MOST_BACKFILLED)
        if len(times) > MOST_BACKFILLED:
            raise InvalidInput(
                f"cron job {self.name} has more than {MOST_BACKFILLED} times from {start.isoformat()} to "
                f"{end.isoformat()}: a backfill runs at most {MOST_BACKFILLED}; give a shorter range, then the next "
                f"(the first {MOST_BACKFILLED} end at {times[MOST_BACKFILLED - 1].isoformat()})"
            )
        return times

    def last_slot(self, now: datetime) -> datetime | None:
        """The latest time of its schedule at or before ``now`` since it was created or
        resumed; None while paused, or before its first."""
        if not self.active:
            return None
        slot = self.definition.schedule.latest(now)
        return slot if slot >= self.active_since else None

    def _late(self, slot: datetime, now: datetime) -> bool:
        deadline = self.definition.starting_deadline_seconds
        return bool(deadline) and (now - slot).total_seconds() > deadline

    def run_specs(self, job_ids: list[UUID], moment: datetime, env: Mapping[str, str] | None = None) -> list[JobSpec]:
        """The specs of the jobs of one run (``job_ids``, one for each of its specs) for
        ``moment`` (a slot, or the time of a `cron run`, whose ``env`` goes over each spec's)."""
        return [
            replace(
                spec,
                env={**spec.env, **(env or {}), CRON_TIME_VARIABLE: moment.astimezone(UTC).isoformat()},
                labels={**spec.labels, CRON_LABEL: self.name},
            )
            for spec in self.definition.run_specs(job_ids)
        ]

    @event("CronJobRedefined")
    def _redefined(self, definition: dict[str, Any], sealed_secrets: dict[str, str], owner: str, since: str) -> None:
        self._define(definition, sealed_secrets, owner, since)
        self.deleted = False

    @event("CronJobPaused")
    def _paused(self) -> None:
        self.paused = True

    @event("CronJobResumed")
    def _resumed(self, since: str) -> None:
        self.paused = False
        self.active_since = datetime.fromisoformat(since)

    @event("CronJobDeleted")
    def _deleted(self) -> None:
        self.deleted = True


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _check_sealed(definition: Definition, sealed_secrets: dict[str, str]) -> None:
    if sorted(sealed_secrets) != sorted({name for spec in definition.specs for name in spec.secret_names}):
        raise InvalidTransition("the cron job's sealed secrets must be exactly the ones its spec names")
