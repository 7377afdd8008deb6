"""Read models (``jobs``, ``workers``, ``sagas``, ``saga_steps``, ``saga_audit_events``,
``job_log_files``, ``provider_configs``) as functions of events.

The recorder runs ``project`` inside the transaction that appends the event; replay
runs the same function over the whole log. Rows depend only on the event, so both
produce identical tables. A projector writes only its own aggregate's rows (and rows
that reference them): replay regroups a page's statements across aggregates (``Waves``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from psycopg import Cursor
from psycopg.types.json import Jsonb

from hodei.domain.job import TERMINAL_STATES
from hodei.store.events import EventRecord, current, unpack, uuid5_text
from hodei.store.sql import query


class Sink(Protocol):
    """Where a projector puts its statements: each a named query and a row of it (``_row``)."""

    def run(self, name: str, params: dict[str, Any]) -> None: ...


Projector = Callable[[Sink, EventRecord], None]

READ_MODELS = (
    "provider_configs",
    "jobs",
    "job_log_files",
    "workers",
    "sagas",
    "saga_steps",
    "saga_audit_events",
)

# Each projection statement's row, as the statement reads it: an array, these columns in
# this order (``(e->>0)::uuid AS id``, ...). PostgreSQL reads an array's elements by
# place, where a row of keys costs it a parse of every key and a lookup of every column:
# half of replay's parameter cost (a page's audit rows 11 -> 6.5 us a row, its saga moves
# 10 -> 3 us). The projectors keep naming their values, in rows that hold the columns in
# this order (``_row``), so a row goes in place as it is. The first column is the aggregate's.
COLUMNS: dict[str, tuple[str, ...]] = {
    "project_job_created": (
        "id",
        "at",
        "name",
        "spec",
        "max_attempts",
        "priority",
        "retry_of",
        "correlation_id",
        "actor",
        "state",
        "attempt",
        "admitted_at",
        "selected_provider_id",
        "provider_type",
        "worker_id",
        "exit_code",
        "error_message",
        "started_at",
        "completed_at",
        "cancelled_by",
        "retry_at",
        "held_by",
        "hold_reason",
        "updated_at",
        "run_seconds",
        "cpu_seconds",
        "peak_memory_bytes",
    ),
    "project_job_admitted": ("id", "at"),
    "project_job_held": ("id", "at", "held_by", "reason"),
    "project_job_prioritized": ("id", "at", "priority"),
    "project_job_limits_changed": ("id", "at", "timeout_seconds", "resources"),
    "project_job_signalled": ("id", "at", "attempt", "signal"),
    "project_job_exec_requested": ("id", "at", "idx", "attempt", "argv", "timeout_seconds", "actor"),
    "project_job_exec_ended": ("id", "at", "idx", "exit_code", "message", "stdout_bytes", "stderr_bytes"),
    "project_job_provider_selected": ("id", "at", "provider_id", "provider_type", "admitted"),
    "project_job_assigned": ("id", "at", "worker_id", "provider_id", "provider_type"),
    "project_job_touched": ("id", "at"),
    "project_job_status_changed": (
        "id",
        "at",
        "new_state",
        "terminal",
        "exit_code",
        "reason",
        "ran_from",
        "ran_until",
        "retry_at",
        "actor",
        "cpu_seconds",
        "peak_memory_bytes",
    ),
    "project_job_stopped": ("id", "at", "cpu_seconds", "peak_memory_bytes"),
    "project_job_logs_persisted": ("id", "at", "event_id", "storage_uri", "size_bytes", "entry_count"),
    "project_job_logs_expired": ("id",),
    "project_worker_created": (
        "id",
        "at",
        "job_id",
        "attempt",
        "provider_id",
        "provider_type",
        "state",
        "provider_resource_id",
        "error_message",
        "registered_at",
        "updated_at",
    ),
    "project_worker_resource_created": ("id", "at", "resource_id"),
    "project_worker_registered": ("id", "at"),
    "project_worker_state": ("id", "at", "state"),
    "project_worker_failed": ("id", "at", "reason"),
    "project_saga_started": (
        "id",
        "at",
        "saga_type",
        "correlation_id",
        "attempt",
        "actor",
        "steps",
        "state",
        "current_step",
        "error",
        "completed_at",
        "updated_at",
    ),
    "project_saga_moves": (
        "id",
        "at",
        "state",
        "step_name",
        "step_order",
        "retry_count",
        "deadline_at",
        "error",
        "keep_error",
        "started_at",
        "completed_at",
        "finished",
    ),
    "project_step_compensating": ("id", "at", "step_name", "step_order"),
    "project_saga_audits": ("id", "at", "event_id", "event_type", "step_name", "message", "payload"),
    "project_provider_registered": ("id", "at", "name", "provider_type", "config"),
    "project_provider_status": ("id", "at", "status"),
    "project_provider_capacity": ("id", "at", "max_workers"),
    "project_provider_resources": ("id", "at", "max_cpu_cores", "max_memory_bytes"),
    "project_provider_health": ("id", "at", "health", "message"),
}
# A planned step, in project_saga_started's `steps` (``(s->>0)::uuid AS step_id``, ...).
STEP_COLUMNS = (
    "step_id",
    "step_name",
    "step_order",
    "state",
    "retry_count",
    "deadline_at",
    "error",
    "started_at",
    "completed_at",
    "updated_at",
)


# Each statement's row with every column NULL, in order: a row starts from it (``_row``).
_BLANK = {name: dict.fromkeys(columns) for name, columns in COLUMNS.items()}


def _in_place(rows: Iterable[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """``rows`` (``_row``'s) as their statement reads them: each an array of its COLUMNS."""
    return [tuple(row.values()) for row in rows]


def _row(statement: str, event: EventRecord, /, **values: Any) -> dict[str, Any]:
    """A row of ``statement``: its aggregate's id, the event's time (unless ``values`` say
    another) and ``values``, every one of the statement's COLUMNS in their order (one left
    out is NULL), so the row goes in place as it is (``_in_place``)."""
    return {**_BLANK[statement], "id": event.aggregate_id, "at": event.occurred_at, **values}


def _run(cur: Sink, statement: str, event: EventRecord, /, **values: Any) -> None:
    cur.run(statement, _row(statement, event, **values))


class Statements:
    """The projection statements of ``project_all``, sent in order; a run of one statement
    for different aggregates goes out as one execution (its rows in one jsonb array)."""

    def __init__(self, cur: Cursor[Any]) -> None:
        self._cur = cur
        self._batch: Batch | None = None

    def run(self, name: str, params: dict[str, Any]) -> None:
        if self._batch is None or not self._batch.takes(name, params):
            self.flush()
            self._batch = _batch(name)
        self._batch.add(name, params)

    def flush(self) -> None:
        if self._batch is not None:
            _send(self._cur, self._batch.name, self._batch.rows())
        self._batch = None


class Batch(Protocol):
    """The rows of one execution of a statement (``name``)."""

    name: str

    def takes(self, name: str, row: dict[str, Any]) -> bool:
        """Whether a row of statement ``name`` can join this execution (after its rows)."""
        ...

    def add(self, name: str, row: dict[str, Any]) -> None: ...

    def rows(self) -> list[dict[str, Any]]: ...


class _Rows:
    """Rows as they came: a statement updates an aggregate's row once, so a second row
    for one aggregate waits for the next execution."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._rows: list[dict[str, Any]] = []
        self._ids: set[Any] = set()

    def takes(self, name: str, row: dict[str, Any]) -> bool:
        return name == self.name and row["id"] not in self._ids

    def add(self, name: str, row: dict[str, Any]) -> None:
        self._ids.add(row["id"])
        self._rows.append(row)

    def rows(self) -> list[dict[str, Any]]:
        return self._rows


class _Moves:
    """Rows of ``project_saga_moves``, folded: a step's later change composes with its
    earlier one into a row of the step's last values (what running them one after the
    other leaves), and a saga's last move replaces its earlier ones. A saga's run of moves
    (its steps started, run, finished, its end) is then one execution however long, each
    row it changes updated once."""

    name = "project_saga_moves"

    def __init__(self) -> None:
        self._steps: dict[tuple[Any, int], dict[str, Any]] = {}
        self._sagas: dict[Any, dict[str, Any]] = {}

    def takes(self, name: str, row: dict[str, Any]) -> bool:
        return name == self.name

    def add(self, name: str, row: dict[str, Any]) -> None:
        if row["step_order"] is None:
            self._sagas[row["id"]] = row
            return
        key = (row["id"], row["step_order"])
        earlier = self._steps.get(key)
        if earlier is not None:
            row = {**row}
            for kept in ("retry_count", "started_at"):
                if row.get(kept) is None:
                    row[kept] = earlier.get(kept)
            if row.get("keep_error"):
                if row.get("error") is None:
                    row["error"] = earlier.get("error")
                row["keep_error"] = earlier.get("keep_error")
        self._steps[key] = row

    def rows(self) -> list[dict[str, Any]]:
        return [*self._steps.values(), *self._sagas.values()]

    def step(self, saga: Any, order: int) -> dict[str, Any] | None:
        """The step's row folded from its moves here, if it moved."""
        return self._steps.get((saga, order))

    def saga(self, saga: Any) -> dict[str, Any] | None:
        """The saga's last move here, if it moved."""
        return self._sagas.get(saga)


class _Starts:
    """Rows of ``project_saga_started``, each with the saga's moves that follow its start
    in this execution folded in (``_Moves``), so the saga and its steps are inserted as
    they end up: a saga's life is mostly within one page of a replay (97% of the bench's
    moves), where an insert and an update of every step cost the database twice a row."""

    name = "project_saga_started"

    def __init__(self) -> None:
        self._starts: dict[Any, dict[str, Any]] = {}
        self._moves = _Moves()

    def takes(self, name: str, row: dict[str, Any]) -> bool:
        if name == self.name:
            return row["id"] not in self._starts
        return name == _Moves.name and row["id"] in self._starts

    def add(self, name: str, row: dict[str, Any]) -> None:
        if name == self.name:
            self._starts[row["id"]] = row
        else:
            self._moves.add(name, row)

    def rows(self) -> list[dict[str, Any]]:
        return [self._moved(start) for start in self._starts.values()]

    def _moved(self, start: dict[str, Any]) -> dict[str, Any]:
        """The start's row with its moves applied as project_saga_moves applies them to
        the rows it inserts: a step's folded move over a PENDING step (its retries kept
        when the move has none; no error, deadline or start of its own to keep), the
        saga's last move over an IN_PROGRESS saga without a step or an error."""
        saga_id = start["id"]
        steps = [self._step(saga_id, planned) for planned in start["steps"]]
        saga = self._moves.saga(saga_id)
        if saga is None:
            return {**start, "steps": steps}
        if saga["finished"]:
            ends = {"state": saga["state"], "current_step": None, "error": saga["error"], "completed_at": saga["at"]}
        else:
            ends = {"state": "IN_PROGRESS", "current_step": saga["step_name"], "error": None, "completed_at": None}
        return {**start, "steps": steps, **ends, "updated_at": saga["at"]}

    def _step(self, saga_id: Any, planned: tuple[Any, ...]) -> tuple[Any, ...]:
        step_id, name, order, _, retries, *_ = planned
        move = self._moves.step(saga_id, order)
        if move is None:
            return planned
        retry_count = move["retry_count"]
        return (
            step_id,
            name,
            order,
            move["state"],
            retries if retry_count is None else retry_count,
            move["deadline_at"],
            move["error"],
            move["started_at"],
            move["completed_at"],
            move["at"],
        )


class _Creates:
    """Rows of a job's or a worker's insert, each with the updates of its row that follow
    it in this execution applied as their statements' SET clauses apply them (``_UPDATES``),
    so the row is inserted as it ends up: a job's or a worker's life is mostly within one
    page of a replay (95% of the bench's job updates, 97% of its workers'), where an
    insert and then an update for each change cost the database a row version each."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._updates = _UPDATES[name]
        self._rows: dict[Any, dict[str, Any]] = {}

    def takes(self, name: str, row: dict[str, Any]) -> bool:
        if name == self.name:
            return row["id"] not in self._rows
        return name in self._updates and row["id"] in self._rows

    def add(self, name: str, row: dict[str, Any]) -> None:
        if name == self.name:
            self._rows[row["id"]] = row
        else:
            self._updates[name](self._rows[row["id"]], row)

    def rows(self) -> list[dict[str, Any]]:
        return list(self._rows.values())


def _batch(name: str) -> Batch:
    if name == _Moves.name:
        return _Moves()
    if name == _Starts.name:
        return _Starts()
    if name in _UPDATES:
        return _Creates(name)
    return _Rows(name)


def _send(cur: Cursor[Any], name: str, rows: list[dict[str, Any]]) -> None:
    cur.execute(query(name), (Jsonb(_in_place(rows)),))


class Waves:
    """Replay's statements, regrouped: a page of the log has each statement kind many
    times over, interleaved job by job, and an execution costs the client and the
    database far more than a row of it. Every projection statement touches only its own
    aggregate's rows (and rows that reference them), so only the order within one
    aggregate matters: wave n holds each aggregate's n-th statement, waves go out in
    order, and within a wave each kind is one execution, at most one row per aggregate
    (a saga's consecutive moves fold into one, ``_Moves``, and into its start when they
    follow it, ``_Starts``; a job's or a worker's updates into its insert, ``_Creates``).
    The aggregate is every statement's ``id`` column (``_row``)."""

    def __init__(self) -> None:
        self._waves: list[dict[str, Batch]] = []
        self._last: dict[Any, tuple[int, Batch]] = {}

    def run(self, name: str, params: dict[str, Any]) -> None:
        # An aggregate's next statement goes into the next wave, unless the execution its
        # last one went to takes it too (a saga's moves fold, into its start too).
        last = self._last.get(params["id"])
        if last is not None and last[1].takes(name, params):
            batch = last[1]
        else:
            wave = 0 if last is None else last[0] + 1
            if wave == len(self._waves):
                self._waves.append({})
            kinds = self._waves[wave]
            batch = kinds[name] if name in kinds else kinds.setdefault(name, _batch(name))
            self._last[params["id"]] = (wave, batch)
        batch.add(name, params)

    def send(self, cur: Cursor[Any]) -> None:
        for wave in self._waves:
            for name, batch in wave.items():
                _send(cur, name, batch.rows())


# Jobs ---------------------------------------------------------------------------


def _job_created(cur: Sink, event: EventRecord) -> None:
    # The spec names the job's secrets; their sealed values stay in the event only.
    spec = event.payload["spec"]
    _run(
        cur,
        "project_job_created",
        event,
        name=spec["name"],
        spec=spec,
        max_attempts=spec["max_attempts"],
        priority=spec.get("priority", 0),
        retry_of=event.payload["retry_of"],
        correlation_id=event.correlation_id,
        actor=event.actor,
        state="PENDING",
        attempt=1,
        updated_at=event.occurred_at,
        run_seconds=0.0,
    )


def _job_provider_selected(cur: Sink, event: EventRecord) -> None:
    p = event.payload
    _run(
        cur,
        "project_job_provider_selected",
        event,
        provider_id=p["provider_id"],
        provider_type=p["provider_type"],
        admitted=p["admitted"],
    )


def _job_admitted(cur: Sink, event: EventRecord) -> None:
    _run(cur, "project_job_admitted", event)


def _job_assigned(cur: Sink, event: EventRecord) -> None:
    p = event.payload
    _run(
        cur,
        "project_job_assigned",
        event,
        worker_id=p["worker_id"],
        provider_id=p["provider_id"],
        provider_type=p["provider_type"],
    )


def _job_held(cur: Sink, event: EventRecord) -> None:
    _run(cur, "project_job_held", event, held_by=event.payload["by"], reason=event.payload["reason"])


def _job_released(cur: Sink, event: EventRecord) -> None:
    _run(cur, "project_job_held", event)


def _job_prioritized(cur: Sink, event: EventRecord) -> None:
    _run(cur, "project_job_prioritized", event, priority=event.payload["priority"])


def _job_limits_changed(cur: Sink, event: EventRecord) -> None:
    p = event.payload
    _run(cur, "project_job_limits_changed", event, timeout_seconds=p["timeout_seconds"], resources=p["resources"])


def _job_signalled(cur: Sink, event: EventRecord) -> None:
    _run(cur, "project_job_signalled", event, attempt=event.payload["attempt"], signal=event.payload["signal"])


def _job_exec_requested(cur: Sink, event: EventRecord) -> None:
    p = event.payload
    _run(
        cur,
        "project_job_exec_requested",
        event,
        idx=p["index"],
        attempt=p["attempt"],
        argv=p["argv"],
        timeout_seconds=p["timeout_seconds"],
        actor=event.actor,
    )


def _job_exec_ended(cur: Sink, event: EventRecord) -> None:
    p = event.payload
    _run(
        cur,
        "project_job_exec_ended",
        event,
        idx=p["index"],
        exit_code=p["exit_code"],
        message=p["message"],
        stdout_bytes=p["stdout_bytes"],
        stderr_bytes=p["stderr_bytes"],
    )


def _job_touched(cur: Sink, event: EventRecord) -> None:
    _run(cur, "project_job_touched", event)


def _job_status_changed(cur: Sink, event: EventRecord) -> None:
    p = event.payload
    _run(
        cur,
        "project_job_status_changed",
        event,
        new_state=p["new_state"],
        terminal=p["new_state"] in TERMINAL_STATES,
        exit_code=p["exit_code"],
        reason=p["reason"],
        ran_from=p["ran_from"],
        ran_until=p["ran_until"],
        retry_at=p["retry_at"],
        actor=event.actor,
        **_used(p),
    )


def _job_stopped(cur: Sink, event: EventRecord) -> None:
    _run(cur, "project_job_stopped", event, **_used(event.payload))


def _used(payload: dict[str, Any]) -> dict[str, Any]:
    """What an attempt's worker said it used (``usage``: either part may be missing, or
    all of it, from a worker that could not measure or an event older than the field)."""
    used = payload.get("usage") or {}
    return {"cpu_seconds": used.get("cpu_seconds"), "peak_memory_bytes": used.get("peak_memory_bytes")}


def _job_logs_persisted(cur: Sink, event: EventRecord) -> None:
    p = event.payload
    _run(
        cur,
        "project_job_logs_persisted",
        event,
        event_id=event.id,
        storage_uri=p["storage_uri"],
        size_bytes=p["size_bytes"],
        entry_count=p["entry_count"],
    )


def _job_logs_expired(cur: Sink, event: EventRecord) -> None:
    _run(cur, "project_job_logs_expired", event)


# A job's updates as their statements' SET clauses (queries.sql) apply them to the row a
# project_job_created inserts (``_Creates``): the Python twin of each, kept in step with it
# by the replay tests, which compare rows folded here with rows the statements updated.
Update = Callable[[dict[str, Any], dict[str, Any]], None]


def _set_job_admitted(job: dict[str, Any], r: dict[str, Any]) -> None:
    job.update(admitted_at=r["at"], updated_at=r["at"])


def _set_job_provider_selected(job: dict[str, Any], r: dict[str, Any]) -> None:
    job.update(selected_provider_id=r["provider_id"], provider_type=r["provider_type"], updated_at=r["at"])
    if r["admitted"]:
        job["admitted_at"] = r["at"]


def _set_job_assigned(job: dict[str, Any], r: dict[str, Any]) -> None:
    job.update(
        state="ASSIGNED",
        worker_id=r["worker_id"],
        selected_provider_id=r["provider_id"],
        provider_type=r["provider_type"],
        updated_at=r["at"],
    )


def _set_job_held(job: dict[str, Any], r: dict[str, Any]) -> None:
    job.update(held_by=r["held_by"], hold_reason=r["reason"], updated_at=r["at"])


def _set_job_prioritized(job: dict[str, Any], r: dict[str, Any]) -> None:
    job.update(priority=r["priority"], spec={**job["spec"], "priority": r["priority"]}, updated_at=r["at"])


def _set_job_touched(job: dict[str, Any], r: dict[str, Any]) -> None:
    job["updated_at"] = r["at"]


def _set_job_status(job: dict[str, Any], r: dict[str, Any]) -> None:
    # Column by column, each CASE's branches in the statement's order.
    state, at, terminal = r["new_state"], r["at"], r["terminal"]
    requeued = state == "PENDING"
    if terminal and state != "SUCCEEDED":
        error = r["reason"]
    elif requeued:
        error = None
    else:
        error = job["error_message"]
    if state == "RUNNING":
        started = at
    elif requeued:
        started = None
    else:
        started = job["started_at"] if r["ran_from"] is None else r["ran_from"]
    job.update(
        state=state,
        exit_code=r["exit_code"] if terminal else job["exit_code"],
        error_message=error,
        started_at=started,
        completed_at=(at if r["ran_until"] is None else r["ran_until"]) if terminal else job["completed_at"],
        attempt=job["attempt"] + 1 if requeued else job["attempt"],
        worker_id=None if requeued else job["worker_id"],
        admitted_at=None if requeued else job["admitted_at"],
        cancelled_by=r["actor"] if state == "CANCELLED" else job["cancelled_by"],
        retry_at=r["retry_at"] if requeued else None,
        run_seconds=job["run_seconds"] + (_ran(job, r) if terminal or requeued else 0.0),
        updated_at=at,
    )
    _add_used(job, r)


def _ran(job: dict[str, Any], r: dict[str, Any]) -> float:
    """The seconds an attempt's command ran, as the statement's run_seconds reckons them
    from the row before this change (``job``); 0 when it never started."""
    began = r["ran_from"] if r["ran_from"] is not None else job["started_at"] if job["state"] == "RUNNING" else None
    if began is None:
        return 0.0
    until = r["ran_until"] if r["ran_until"] is not None else r["at"]
    return max(0.0, (_time(until) - _time(began)).total_seconds())


def _time(value: datetime | str) -> datetime:
    """A time of a row: a datetime, or an event payload's ISO text."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _add_used(job: dict[str, Any], r: dict[str, Any]) -> None:
    if r["cpu_seconds"] is not None:
        job["cpu_seconds"] = (job["cpu_seconds"] or 0.0) + r["cpu_seconds"]
    if r["peak_memory_bytes"] is not None:
        peak = job["peak_memory_bytes"]
        job["peak_memory_bytes"] = r["peak_memory_bytes"] if peak is None else max(peak, r["peak_memory_bytes"])


def _set_job_stopped(job: dict[str, Any], r: dict[str, Any]) -> None:
    _add_used(job, r)
    job["updated_at"] = r["at"]


# Workers ------------------------------------------------------------------------


def _worker_created(cur: Sink, event: EventRecord) -> None:
    p = event.payload
    _run(
        cur,
        "project_worker_created",
        event,
        job_id=p["job_id"],
        attempt=p["attempt"],
        provider_id=p["provider_id"],
        provider_type=p["provider_type"],
        state="CREATING",
        updated_at=event.occurred_at,
    )


def _worker_resource_created(cur: Sink, event: EventRecord) -> None:
    _run(cur, "project_worker_resource_created", event, resource_id=event.payload["resource_id"])


def _worker_registered(cur: Sink, event: EventRecord) -> None:
    _run(cur, "project_worker_registered", event)


def _worker_state(state: str) -> Projector:
    def project(cur: Sink, event: EventRecord) -> None:
        _run(cur, "project_worker_state", event, state=state)

    return project


def _worker_failed(cur: Sink, event: EventRecord) -> None:
    _run(cur, "project_worker_failed", event, reason=event.payload["reason"])


# A worker's updates as their statements' SET clauses apply them (as a job's, above).


def _set_worker_resource(worker: dict[str, Any], r: dict[str, Any]) -> None:
    worker.update(provider_resource_id=r["resource_id"], updated_at=r["at"])
    if worker["state"] == "CREATING":
        worker["state"] = "CONNECTING"


def _set_worker_registered(worker: dict[str, Any], r: dict[str, Any]) -> None:
    worker.update(state="READY", registered_at=r["at"], updated_at=r["at"])


def _set_worker_state(worker: dict[str, Any], r: dict[str, Any]) -> None:
    worker.update(state=r["state"], updated_at=r["at"])


def _set_worker_failed(worker: dict[str, Any], r: dict[str, Any]) -> None:
    worker.update(state="FAILED", error_message=r["reason"], updated_at=r["at"])


# The updates a job's or a worker's insert folds in (``_Creates``), by the insert.
_UPDATES: dict[str, dict[str, Update]] = {
    "project_job_created": {
        "project_job_admitted": _set_job_admitted,
        "project_job_provider_selected": _set_job_provider_selected,
        "project_job_assigned": _set_job_assigned,
        "project_job_held": _set_job_held,
        "project_job_prioritized": _set_job_prioritized,
        "project_job_touched": _set_job_touched,
        "project_job_status_changed": _set_job_status,
        "project_job_stopped": _set_job_stopped,
    },
    "project_worker_created": {
        "project_worker_resource_created": _set_worker_resource,
        "project_worker_registered": _set_worker_registered,
        "project_worker_state": _set_worker_state,
        "project_worker_failed": _set_worker_failed,
    },
}


# Sagas --------------------------------------------------------------------------


def _planned_steps(saga_id: str, names: list[str], at: datetime) -> list[tuple[Any, ...]]:
    """A saga's steps (STEP_COLUMNS), PENDING, each with an id derived from the saga's and
    its place."""
    saga = UUID(saga_id)
    return [
        (uuid5_text(saga, f"step/{order}"), name, order, "PENDING", 0, None, None, None, None, at)
        for order, name in enumerate(names)
    ]


def _audit_message(event_type: str, p: dict[str, Any]) -> str:
    step = p.get("step_name")
    match event_type:
        case "SagaStarted":
            return f"{p['saga_type']} saga started for {p['correlation_id']}: {', '.join(p['steps'])}"
        case "StepStarted":
            attempt = f" (retry {p['retry_count']})" if p["retry_count"] else ""
            return f"step {step} started{attempt}"
        case "StepCompleted":
            return f"step {step} completed"
        case "StepFailed":
            then = f"; retrying at {p['retry_at']}" if p["retry_at"] else ""
            return f"step {step} failed after {p['retry_count']} retries: {p['error']}{then}"
        case "CompensationStarted":
            return f"compensating step {step}"
        case "StepCompensated":
            return f"step {step} compensated"
        case "CompensationFailed":
            return f"compensation of step {step} failed: {p['error']}"
        case "SagaCompleted":
            return "saga completed"
        case "SagaFailed":
            return f"saga failed: {p['reason']}"
    raise KeyError(f"no audit message for {event_type}")


# Every saga event leaves an audit row (a StepRan two).
_AUDITED = frozenset(
    {
        "SagaStarted",
        "StepStarted",
        "StepCompleted",
        "StepRan",
        "StepFailed",
        "CompensationStarted",
        "StepCompensated",
        "CompensationFailed",
        "SagaCompleted",
        "SagaFailed",
    }
)


def _audit(
    event: EventRecord,
    event_type: str,
    payload: dict[str, Any],
    event_id: UUID | str | None = None,
    at: datetime | None = None,
) -> dict[str, Any]:
    return _row(
        "project_saga_audits",
        event,
        at=at or event.occurred_at,
        event_id=event_id or event.id,
        event_type=event_type,
        step_name=payload.get("step_name"),
        message=_audit_message(event_type, payload),
        payload=payload,
    )


def _audits(event: EventRecord) -> list[dict[str, Any]]:
    """A saga event's audit rows: one each, and two for a StepRan, the trail people
    read (a StepStarted at its start, a StepCompleted with its output)."""
    p = event.payload
    if event.event_type != "StepRan":
        return [_audit(event, event.event_type, p)]
    step = {"step_name": p["step_name"], "step_order": p["step_order"]}
    started = {**step, "retry_count": p["retry_count"], "deadline_at": None}
    return [
        _audit(event, "StepStarted", started, uuid5_text(event.id, "started"), datetime.fromisoformat(p["started_at"])),
        _audit(event, "StepCompleted", {**step, "output": p["output"]}),
    ]


def _saga_started(cur: Sink, event: EventRecord) -> None:
    p = event.payload
    _run(
        cur,
        "project_saga_started",
        event,
        saga_type=p["saga_type"],
        correlation_id=p["correlation_id"],
        attempt=p["attempt"],
        actor=event.actor,
        steps=_planned_steps(event.aggregate_id, p["steps"], event.occurred_at),
        state="IN_PROGRESS",
        updated_at=event.occurred_at,
    )


def _step(cur: Sink, event: EventRecord, state: str, moves_saga: bool = False, **values: Any) -> None:
    """A step's change, one statement for every kind and the saga's moves
    (``project_saga_moves``, folded by ``_Moves``, or into the saga's start by ``_Starts``):
    a saga's save moves it through several steps (one completes, the next runs, the one
    after starts, or the saga ends), each a row of one execution. A value left out keeps
    the step's own: a finished step keeps its start and retries. A step started or run
    also moves the saga (``moves_saga``): a row without a step, the saga's current one."""
    p = event.payload
    _run(cur, "project_saga_moves", event, state=state, step_name=p["step_name"], step_order=p["step_order"], **values)
    if moves_saga:
        _run(cur, "project_saga_moves", event, step_name=p["step_name"], step_order=None, finished=False)


def _step_started(cur: Sink, event: EventRecord) -> None:
    p = event.payload
    _step(
        cur,
        event,
        "IN_PROGRESS",
        moves_saga=True,
        retry_count=p["retry_count"],
        deadline_at=p["deadline_at"],
        started_at=event.occurred_at,
    )


def _step_ran(cur: Sink, event: EventRecord) -> None:
    p = event.payload
    _step(
        cur,
        event,
        "COMPLETED",
        moves_saga=True,
        retry_count=p["retry_count"],
        started_at=p["started_at"],
        completed_at=event.occurred_at,
    )


def _step_finished(state: str) -> Projector:
    def project(cur: Sink, event: EventRecord) -> None:
        p = event.payload
        _step(
            cur,
            event,
            state,
            deadline_at=p.get("retry_at"),
            error=p.get("error"),
            keep_error=True,
            completed_at=event.occurred_at,
        )

    return project


def _compensation_started(cur: Sink, event: EventRecord) -> None:
    p = event.payload
    _run(cur, "project_step_compensating", event, step_name=p.get("step_name"), step_order=p["step_order"])


def _saga_ended(state: str) -> Projector:
    """The saga's end, a row of ``project_saga_moves`` without a step."""

    def project(cur: Sink, event: EventRecord) -> None:
        reason = event.payload.get("reason")
        _run(cur, "project_saga_moves", event, state=state, step_order=None, error=reason, finished=True)

    return project


# Providers ----------------------------------------------------------------------


def _provider_registered(cur: Sink, event: EventRecord) -> None:
    p = event.payload
    _run(
        cur, "project_provider_registered", event, name=p["name"], provider_type=p["provider_type"], config=p["config"]
    )


def _provider_status(status: str) -> Projector:
    def project(cur: Sink, event: EventRecord) -> None:
        _run(cur, "project_provider_status", event, status=status)

    return project


def _provider_capacity(cur: Sink, event: EventRecord) -> None:
    _run(cur, "project_provider_capacity", event, max_workers=event.payload["max_workers"])


def _provider_resources(cur: Sink, event: EventRecord) -> None:
    p = event.payload
    _run(
        cur,
        "project_provider_resources",
        event,
        max_cpu_cores=p["max_cpu_cores"],
        max_memory_bytes=p["max_memory_bytes"],
    )


def _provider_health(cur: Sink, event: EventRecord) -> None:
    p = event.payload
    _run(cur, "project_provider_health", event, health=p["health"], message=p["message"])


def _no_read_model(cur: Sink, event: EventRecord) -> None:
    """Cron jobs, pools and webhooks have no read model: their few events are read from
    the log (hodei.cron, hodei.pools, hodei.webhooks)."""


PROJECTORS: dict[str, Projector] = {
    "JobCreated": _job_created,
    "JobProviderSelected": _job_provider_selected,
    "JobAdmitted": _job_admitted,
    "JobAssigned": _job_assigned,
    "JobHeld": _job_held,
    "JobReleased": _job_released,
    "JobPrioritized": _job_prioritized,
    "JobLimitsChanged": _job_limits_changed,
    "JobSignalled": _job_signalled,
    "JobExecRequested": _job_exec_requested,
    "JobExecEnded": _job_exec_ended,
    "JobAccepted": _job_touched,
    "JobStatusChanged": _job_status_changed,
    "JobStopped": _job_stopped,
    "JobArtifactsStored": _job_touched,
    "JobArtifactsExpired": _job_touched,
    "JobLogsPersisted": _job_logs_persisted,
    "JobLogsExpired": _job_logs_expired,
    "WorkerCreated": _worker_created,
    "WorkerResourceCreated": _worker_resource_created,
    "WorkerRegistered": _worker_registered,
    "WorkerJobDispatched": _worker_state("BUSY"),
    "WorkerFailed": _worker_failed,
    "WorkerTerminating": _worker_state("TERMINATING"),
    "WorkerTerminated": _worker_state("TERMINATED"),
    "SagaStarted": _saga_started,
    "StepStarted": _step_started,
    "StepCompleted": _step_finished("COMPLETED"),
    "StepRan": _step_ran,
    "StepFailed": _step_finished("FAILED"),
    "CompensationStarted": _compensation_started,
    "StepCompensated": _step_finished("COMPENSATED"),
    "CompensationFailed": _step_finished("COMPENSATION_FAILED"),
    "SagaCompleted": _saga_ended("COMPLETED"),
    "SagaFailed": _saga_ended("FAILED"),
    "ProviderRegistered": _provider_registered,
    "ProviderEnabled": _provider_status("ACTIVE"),
    "ProviderDisabled": _provider_status("DISABLED"),
    "ProviderHealthChanged": _provider_health,
    "PoolCreated": _no_read_model,
    "PoolResized": _no_read_model,
    "PoolDeleted": _no_read_model,
    "WebhookSet": _no_read_model,
    "WebhookChanged": _no_read_model,
    "WebhookSecretRotated": _no_read_model,
    "WebhookDeleted": _no_read_model,
    "SubmitterLimitSet": _no_read_model,
    "SubmitterLimitChanged": _no_read_model,
    "SubmitterLimitDeleted": _no_read_model,
    "ProviderCapacityChanged": _provider_capacity,
    "ProviderResourcesChanged": _provider_resources,
    "CronJobCreated": _no_read_model,
    "CronJobRedefined": _no_read_model,
    "CronJobPaused": _no_read_model,
    "CronJobResumed": _no_read_model,
    "CronJobDeleted": _no_read_model,
}


def _project_into(sink: Sink, events: Iterable[EventRecord]) -> list[dict[str, Any]]:
    """Runs the projector of each event (of rows unpacked: ``unpack``) into ``sink``; the
    audit rows, for the caller to add last."""
    audits = []
    for stored in events:
        try:
            projector = PROJECTORS[stored.event_type]
        except KeyError:
            raise KeyError(f"no projection for event type {stored.event_type}; add one to PROJECTORS") from None
        event = current(stored)
        projector(sink, event)
        if event.event_type in _AUDITED:
            audits.extend(_audits(event))
    return audits


def project_but_audits(cursor: Cursor[Any], rows: Iterable[EventRecord]) -> list[tuple[Any, ...]]:
    """Projects the rows' events in order but for their audit rows, which it returns: the
    recorder inserts them with the events, in the append's statement
    (``insert_events_and_outbox``: each row only references its saga, written by then), a
    statement fewer for each of a saga's saves; a pipelined statement costs the client
    about as much as the database. Each an array of project_saga_audits' COLUMNS, which
    the append's `audited` reads too."""
    audits = _project_in_order(cursor, (event for row in rows for event in unpack(row)))
    return _in_place(audits)


def project_all(cursor: Cursor[Any], rows: Iterable[EventRecord]) -> int:
    """Projects the rows' events in order, their audit rows last, in one statement; how
    many events (a row of a saga's moves holds several)."""
    events = [event for row in rows for event in unpack(row)]
    audits = _project_in_order(cursor, events)
    if audits:
        _send(cursor, "project_saga_audits", audits)
    return len(events)


def _project_in_order(cursor: Cursor[Any], events: Iterable[EventRecord]) -> list[dict[str, Any]]:
    cur = Statements(cursor)
    audits = _project_into(cur, events)
    cur.flush()
    return audits


class Page:
    """A page of the log as replay's statements, regrouped in ``Waves`` (the live write
    path keeps event order: its few statements gain nothing, and the order in which
    concurrent writers lock read-model rows stays what it was). Built apart from being
    sent, so replay builds the next page while the database runs this one."""

    def __init__(self, rows: Sequence[EventRecord]) -> None:
        events = [event for row in rows for event in unpack(row)]
        self.events = len(events)  # a row of a saga's moves holds several
        self._waves = Waves()
        self._audits = _project_into(self._waves, events)

    def send(self, cursor: Cursor[Any]) -> None:
        """Every statement, in the caller's pipeline (so the database never waits for the
        client between pages)."""
        self._waves.send(cursor)
        if self._audits:
            _send(cursor, "project_saga_audits", self._audits)


def project(cursor: Cursor[Any], event: EventRecord) -> None:
    project_all(cursor, (event,))
