"""Idempotent submission: what a QueueJob, RetryJob or RunCronJob request's idempotency key
makes of its jobs' ids, and the earlier submission a key sent again finds.

A keyed job's id is derived from the submitter, the key and the job's place in the
request: a repeat derives the same ones, so the event log itself refuses a second
JobCreated of them (two racing repeats write one job), and the key is remembered for as
long as the log is, on every server, with nothing more stored than the digest of what the
request asked (``JobCreated.request_digest``). The three requests share one key space.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar
from uuid import UUID, uuid4

from google.protobuf.message import Message

from hodei._proto import jobs_pb2
from hodei.domain.base import check_idempotency_key, derived_id
from hodei.domain.job import Job
from hodei.domain.spec import validate_array
from hodei.errors import AlreadyExists, ConcurrencyConflict, LimitReached
from hodei.store.app import HodeiStore
from hodei.store.db import fetch_all
from hodei.store.job_secrets import JobSecrets, SecretsPurged

R = TypeVar("R")


@dataclass(frozen=True)
class Submission:
    """A request's job ids, and with an idempotency key the digest that tells a repeat of it."""

    key: str
    ids: list[UUID]
    digest: str | None

    @classmethod
    def of(cls, request: jobs_pb2.QueueJobRequest, who: str) -> Submission:
        if request.array:
            validate_array(list(request.array))  # before an id is made for each
        asked = jobs_pb2.QueueJobRequest()
        asked.CopyFrom(request)
        asked.idempotency_key = ""
        for name in asked.secrets:
            asked.secrets[name] = ""  # compared apart, opened: no digest of a secret is stored
        return cls.keyed(request.idempotency_key, who, max(1, len(request.array)), asked)

    @classmethod
    def of_several(cls, request: jobs_pb2.QueueJobsRequest, who: str) -> Submission:
        """Several jobs submitted together (QueueJobs): an id each, in the request's order."""
        asked = jobs_pb2.QueueJobsRequest()
        asked.CopyFrom(request)
        asked.idempotency_key = ""
        for part in asked.jobs:
            for name in part.secrets:
                part.secrets[name] = ""
        return cls.keyed(request.idempotency_key, who, len(request.jobs), asked)

    @classmethod
    def keyed(cls, key: str, who: str, count: int, asked: Message) -> Submission:
        """``count`` jobs' ids; with a key, derived, and the digest of ``asked``: what the
        request asks, its key and its secrets' values left out."""
        if not key:
            return cls("", [uuid4() for _ in range(count)], None)
        check_idempotency_key(key)
        digest = "sha256:" + hashlib.sha256(asked.SerializeToString(deterministic=True)).hexdigest()
        return cls(key, [derived_id("submission", who, key, place) for place in range(count)], digest)


def earlier(
    store: HodeiStore,
    secrets: JobSecrets,
    submission: Submission,
    values: Mapping[str, str] | None,
    later: Sequence[Mapping[str, str]] = (),
) -> Job | None:
    """The first job a key sent again submitted, when the request is the one it submitted
    it with (None: the key is new, or none given); AlreadyExists for another request.
    Nothing of the request is checked again: it was when its jobs were submitted, and what
    was true then (a job it starts after not yet ended) need not be now. ``values``: the
    request's secret values, compared apart with the job's, opened (None: it carries none;
    a job whose secrets were purged has none left to tell apart); ``later``: those of the
    request's next jobs, where each has its own (QueueJobs)."""
    first = store.find(Job, submission.ids[0]) if submission.key else None
    if first is None:
        return None
    same = first.request_digest == submission.digest and _same_secrets(secrets, first, values)
    for job_id, given in zip(submission.ids[1:], later, strict=False):
        if not same:
            break
        job = store.find(Job, job_id)
        same = job is not None and _same_secrets(secrets, job, given)
    if not same:
        raise AlreadyExists(
            f"idempotency key `{submission.key}` submitted job {first.id} with another request; "
            "a key names one submission: give a new key for another"
        )
    return first


def repeated_ids(store: HodeiStore, secrets: JobSecrets, submission: Submission) -> tuple[Job, list[str]] | None:
    """A key sent again of a request whose count of jobs is not known before it is written
    (a cron job's run, a pipeline's retry: its ids are every one it may have had): its first
    job and those of its ids that were written, all together. None: the key is new."""
    first = earlier(store, secrets, submission, None)
    if first is None:
        return None
    there = set(fetch_all(store.pool, "jobs_there", (submission.ids,), lambda job_id: job_id))
    return first, [str(job_id) for job_id in submission.ids if job_id in there]


def _same_secrets(secrets: JobSecrets, job: Job, values: Mapping[str, str] | None) -> bool:
    """Whether the job was given these secret values (None: none asked about; a job whose
    secrets were purged has none left to tell apart)."""
    if values is None:
        return True
    try:
        return secrets.open_sealed(job.id, job.sealed_secrets, f"job {job.id}") == values
    except SecretsPurged:
        return True


def first_answer(write: Callable[[], R], repeat: Callable[[], R | None]) -> R:
    """``write()``'s answer, or, when its write lost a race or a submitter's limit refused
    it, the answer to the same key sent again meanwhile (``repeat``): that first write
    stands, and may have taken the submitter's last room. Without one, the error."""
    try:
        return write()
    except (ConcurrencyConflict, LimitReached):
        if (answer := repeat()) is None:
            raise
        return answer
