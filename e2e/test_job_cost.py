"""What one job costs the control plane, counted (never timed): events, outbox rows, and
write transactions, for one job on each provider. A change that makes a job cost more
fails here; one that makes it cost less lowers the ceilings (#13's goal: <= 20 events,
<= 25 transactions)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hodei.testing import ServerProcess, query, wait_settled

pytestmark = pytest.mark.e2e

# Today's counts for a trivial job, as ceilings: 20-21 events (21 when the job's acceptance
# and its result are two moves of its saga, as on the local provider, where they are apart
# in time); 20-24 write transactions (how acks fall into claims varies from run to run).
# Before: 40 events until a step that starts and completes in one transaction became one
# StepRan event; 33-35 until a saga's events of one transaction became one row (SagaMoved)
# and a worker whose resource is gone ended in one event; 38-40 transactions until a LOCAL
# step's StepStarted stopped being delivered to a saga that had nothing left to do, 29-34
# until a handler that changes nothing stopped writing its ack in a transaction of its own,
# 23-29 until the rows of saga moves were packed (fewer rows, fewer deliveries to ack).
# Since a command's reads joined its write's transaction and the relay's acknowledgements
# its claims, a job costs about half the transactions it did (the bench: 80 -> 43 a job,
# reads included), but this count (distinct writers of the job's rows) moved to 20-24: the
# acks of rows whose pokes were dropped (JobAccepted, JobProviderSelected) ride on claims.
# 13-14 since a save writes the rows no route wants delivered and the others claimed by
# its own relay (no claim finds them), and a handler whose last command writes nothing
# acknowledges its row in that command's reads; 11-12 since a worker's report moves its
# job's sagas in its own transaction (no poke after its delivery). Events are 21 since
# then on both providers: the acceptance's saga move is its own row even when the result
# comes at once (it used to share the poke's row with the result's, sometimes). 19 events
# and 9 transactions since a job that finds its provider with a free slot and nobody
# waiting takes the slot in its provider choice's event (no JobAdmitted, no admission
# round, no poke: its saga goes on to create the worker in that transaction); 8 since a
# worker's registration moves its job's sagas in its own transaction (no poke after its
# delivery: provisioning ends and execution dispatches the job in the registration's). 18
# since a worker's registration and its job's dispatch (neither wants a delivery) are one
# row, as a saga's moves are.
EVENTS = 18
TRANSACTIONS = 9


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"HODEI_SIM_ENABLED": "1"}
    with ServerProcess(database_url, tmp_path_factory.mktemp("logs"), env) as process:
        yield process


def run_true(server: ServerProcess, provider: str) -> str:
    """The id of a `true` job run to its end on ``provider``, with everything after it done."""
    ran = server.cli("job", "run", "--provider", provider, "--command", "true", "--wait")
    assert ran.returncode == 0, ran.stderr
    job_id = ran.stdout.strip()
    wait_settled(server.database_url, job_id, 60)
    return job_id


def cost(url: str, job_id: str) -> tuple[int, int, int]:
    """(events, outbox rows, write transactions) of one job's flow. Every row keeps the
    id of the transaction that last wrote it (xmin): the distinct ones over the job's
    events, their outbox rows (an ack rewrites its row) and its saga rows are the
    transactions that wrote anything for the job."""
    (events,) = query(url, "SELECT count(*) FROM domain_events WHERE correlation_id = %s", (job_id,))[0]
    (outbox,) = query(
        url,
        "SELECT count(*) FROM outbox_events o JOIN domain_events e ON e.id = o.id WHERE e.correlation_id = %s",
        (job_id,),
    )[0]
    (transactions,) = query(
        url,
        """
        SELECT count(DISTINCT x) FROM (
            SELECT e.xmin::text AS x FROM domain_events e WHERE e.correlation_id = %(job)s
            UNION ALL SELECT o.xmin::text FROM outbox_events o JOIN domain_events e ON e.id = o.id
                      WHERE e.correlation_id = %(job)s
            UNION ALL SELECT s.xmin::text FROM saga_steps s JOIN sagas g ON g.id = s.saga_id
                      WHERE g.correlation_id = %(job)s
        ) written
        """,
        {"job": job_id},
    )[0]
    return int(events), int(outbox), int(transactions)


def queued(url: str, job_id: str) -> bool:
    """Whether the job waited in its provider's queue (admitted by a round, not at once)."""
    rows = query(url, "SELECT 1 FROM domain_events WHERE correlation_id = %s AND event_type = 'JobAdmitted'", (job_id,))
    return bool(rows)


@pytest.mark.parametrize("provider", ["local", "sim"])
def test_one_job_costs_at_most_todays_events_and_transactions(server: ServerProcess, provider: str) -> None:
    job_id = run_true(server, provider)
    if queued(server.database_url, job_id):
        # The sweeper's admission round ran as the job chose its provider, so it joined the
        # queue (admission.admits_at_once): a JobAdmitted and its saga's move past the wait,
        # two rows more. The next job finds the slot free, as a job alone does.
        events, outbox, _ = cost(server.database_url, job_id)
        assert events == outbox == EVENTS + 2
        job_id = run_true(server, provider)
    events, outbox, transactions = cost(server.database_url, job_id)
    print(f"{provider}: {events} events, {outbox} outbox rows, {transactions} write transactions")
    assert outbox == events  # one outbox row per event, written with it
    assert events <= EVENTS
    assert transactions <= TRANSACTIONS


@pytest.mark.parametrize("provider", ["local", "sim"])
def test_a_workers_registration_dispatches_its_job_in_its_own_transaction(server: ServerProcess, provider: str) -> None:
    """No delivery of WorkerRegistered is left to poke the sagas: the registration's commit
    ends provisioning and assigns and dispatches the job; the worker's two events, which
    want no delivery, are one row (WorkerMoved), written delivered."""
    job_id = run_true(server, provider)
    rows = query(
        server.database_url,
        "SELECT e.event_type, e.xmin::text, o.status, o.attempts, o.claimed_by, "
        "ARRAY(SELECT m ->> 'event_type' FROM jsonb_array_elements(e.payload -> 'events') m) "
        "FROM domain_events e JOIN outbox_events o ON o.id = e.id WHERE e.correlation_id = %s "
        "AND e.event_type IN ('WorkerMoved', 'JobAssigned') ORDER BY e.position",
        (job_id,),
    )
    by_type = {event_type: rest for event_type, *rest in rows}
    assert sorted(by_type) == ["JobAssigned", "WorkerMoved"]
    assert len({writer for writer, *_ in by_type.values()}) == 1
    assert by_type["WorkerMoved"][1:] == ["PUBLISHED", 0, None, ["WorkerRegistered", "WorkerJobDispatched"]]
