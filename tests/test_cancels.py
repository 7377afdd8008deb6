"""The jobs a cancelled job submitted with its API token go with it (hodei.cancels), read
from the jobs' read model at each sweep."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hodei.cancels import Children
from hodei.domain.job import Job, JobState
from hodei.domain.spec import PARENT_LABEL
from hodei.roles import SYSTEM
from hodei.store.app import HodeiStore, Meta
from hodei.testing import query
from tests.test_store import new_job


def _child_of(store: HodeiStore, parent: Job | str) -> Job:
    job = new_job(labels={PARENT_LABEL: str(parent.id if isinstance(parent, Job) else parent)})
    store.write([job], Meta(actor="alice"))
    return job


def _row(url: str, job: Job) -> tuple[Any, ...]:
    [row] = query(url, "SELECT state, cancelled_by, error_message FROM jobs WHERE id = %s", (job.id,))
    return row


def test_a_cancelled_jobs_children_and_theirs_are_cancelled_and_no_others(
    store: HodeiStore, fresh_database_url: str
) -> None:
    url = fresh_database_url
    parent, finished = new_job(), new_job()
    store.write([parent, finished], Meta(actor="alice"))
    child = _child_of(store, parent)
    grandchild = _child_of(store, child)
    ended_child = _child_of(store, parent)
    query(url, "UPDATE jobs SET state = 'SUCCEEDED' WHERE id = %s RETURNING id", (ended_child.id,))
    of_finished = _child_of(store, finished)  # its parent succeeded: a fan-out left running
    query(url, "UPDATE jobs SET state = 'SUCCEEDED' WHERE id = %s RETURNING id", (finished.id,))
    forged = _child_of(store, "zzz")  # a label set by hand before the server refused it
    children = Children(store, 5.0, lambda: datetime.now(UTC))
    assert children.cancel_with_parents() == 0  # no parent cancelled: nothing, and no error

    parent = store.load(Job, parent.id)
    parent.cancel("cancelled by alice")
    store.write([parent], Meta(actor="alice"))
    assert children.cancel_with_parents() == 1
    reason = f"job {parent.id}, which submitted it with its API token, was cancelled"
    assert _row(url, child) == ("CANCELLED", SYSTEM, reason)
    assert _row(url, grandchild)[0] == "PENDING"  # its parent was not cancelled when the sweep read
    assert children.cancel_with_parents() == 1
    assert _row(url, grandchild)[:2] == ("CANCELLED", SYSTEM) and str(child.id) in _row(url, grandchild)[2]
    assert children.cancel_with_parents() == 0
    for untouched in (of_finished, forged):
        assert store.load(Job, untouched.id).state is JobState.PENDING
    assert _row(url, ended_child)[0] == "SUCCEEDED"
