"""Admission: a provider's free slots' worth of queued jobs, admitted in one transaction
under the provider's advisory lock."""

from __future__ import annotations

import pytest

from hodei import admission as admission_module
from hodei.admission import Admission, Capacity
from hodei.domain.job import Job
from hodei.domain.provider import PROVIDER_IDS, ProviderType
from hodei.store.app import HodeiStore, Meta
from hodei.testing import query
from tests.test_store import current_transaction, new_job

LOCK = "SELECT pg_try_advisory_lock(7, hashtext('docker'))"  # released as its connection closes


def test_a_round_counts_chooses_and_admits_in_one_transaction_under_the_providers_lock(
    store: HodeiStore, fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    queued = []
    for _ in range(3):
        job = new_job()
        job.select_provider(str(PROVIDER_IDS[ProviderType.DOCKER]), "docker")
        store.write([job], Meta(actor="t", correlation_id=str(job.id)))
        queued.append(job)
    admission = Admission(store, {ProviderType.DOCKER: 2})
    counted = admission.capacity
    during: list[object] = []

    def capacity(provider: ProviderType) -> Capacity:
        during.append(query(fresh_database_url, LOCK)[0][0])  # another server's admitter
        during.append(current_transaction(store.pool))
        return counted(provider)

    monkeypatch.setattr(admission, "capacity", capacity)
    assert admission.admit(ProviderType.DOCKER) == 2
    locked_out, round_transaction = during
    assert locked_out is False
    admitted = query(
        fresh_database_url,
        "SELECT aggregate_id, xmin::text FROM domain_events WHERE event_type = 'JobAdmitted' ORDER BY aggregate_id",
    )
    assert sorted(aggregate_id for aggregate_id, _ in admitted) == sorted(str(j.id) for j in queued[:2])
    assert {xmin for _, xmin in admitted} == {round_transaction}
    assert query(fresh_database_url, LOCK) == [(True,)]  # the round's end let go of it
    assert not store.load(Job, queued[2].id).admitted


def test_a_job_joining_the_queue_runs_no_round_while_the_last_one_here_found_no_room(
    store: HodeiStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a burst, every job joining the queue cost a round that found no room. A call
    for anything else (room freed) still looks, and so does one once the finding is old."""
    for _ in range(3):
        job = new_job()
        job.select_provider(str(PROVIDER_IDS[ProviderType.DOCKER]), "docker")
        store.write([job], Meta(actor="t", correlation_id=str(job.id)))
    admission = Admission(store, {ProviderType.DOCKER: 1})
    counted = admission.capacity
    rounds: list[ProviderType] = []

    def capacity(provider: ProviderType) -> Capacity:
        rounds.append(provider)
        return counted(provider)

    monkeypatch.setattr(admission, "capacity", capacity)
    assert admission.admit(ProviderType.DOCKER, joined=True) == 1  # nothing known: it looks
    assert admission.admit(ProviderType.DOCKER, joined=True) == 0  # the last round found room
    assert len(rounds) == 2
    assert admission.admit(ProviderType.DOCKER, joined=True) == 0
    assert len(rounds) == 2  # the last round found none: no round
    assert admission.admit(ProviderType.DOCKER) == 0  # a slot freed, say
    assert len(rounds) == 3
    monkeypatch.setattr(admission_module, "FULL_FOR", 0.0)
    assert admission.admit(ProviderType.DOCKER, joined=True) == 0
    assert len(rounds) == 4
