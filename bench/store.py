"""``just bench-store``: event-store saves and replay, next to raw PostgreSQL inserts.

Baseline: one single-row INSERT per transaction through psycopg, on the same database
in the same run. Goals: one-event saves at >= 50% of the raw transaction rate; replay
>= 20,000 events/s.
"""

from __future__ import annotations

import time
from uuid import uuid4

import psycopg
from psycopg.types.json import Jsonb

from bench.common import database, header, row
from hodei.domain.job import Job
from hodei.domain.spec import JobSpec
from hodei.store import replay
from hodei.store.app import HodeiStore, Meta
from hodei.store.db import open_pool

N = 2000
BATCH = 10


def new_job() -> Job:
    return Job.submit(JobSpec(name="bench", command="echo hi", timeout_seconds=30, env={"A": "1"}), uuid4())


def raw_insert_rate(url: str) -> float:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS hodei.bench_raw (id uuid PRIMARY KEY, payload jsonb)")
        for _ in range(50):
            conn.execute("INSERT INTO hodei.bench_raw VALUES (%s, %s)", (uuid4(), Jsonb({"n": 1})))
        started = time.perf_counter()
        for _ in range(N):
            with conn.transaction():
                conn.execute("INSERT INTO hodei.bench_raw VALUES (%s, %s)", (uuid4(), Jsonb({"name": "bench", "n": 1})))
        return N / (time.perf_counter() - started)


def log_replay_rate(store: HodeiStore) -> tuple[int, float]:
    """Event-sourcing replay: read the whole log and rebuild every aggregate in memory."""
    started = time.perf_counter()
    aggregates: dict[object, object] = {}
    count, start = 0, 1
    while True:
        page = store.recorder.select_notifications(start=start, limit=1000)
        if not page:
            break
        for notification in page:
            event = store.mapper.to_domain_event(notification)
            aggregates[event.originator_id] = event.mutate(aggregates.get(event.originator_id))  # type: ignore[attr-defined]
        count += len(page)
        start = page[-1].id + 1
    return count, count / (time.perf_counter() - started)


def main() -> None:
    with database() as url:
        pool = open_pool(url, max_size=4)
        store = HodeiStore(pool)
        meta = Meta(actor="bench")
        raw = raw_insert_rate(url)
        for _ in range(50):
            store.write([new_job()], meta)
        jobs = [new_job() for _ in range(N)]
        started = time.perf_counter()
        for job in jobs:
            store.write([job], meta)
        single = N / (time.perf_counter() - started)
        batches = [[new_job() for _ in range(BATCH)] for _ in range(N // BATCH)]
        started = time.perf_counter()
        for batch in batches:
            store.write(batch, meta)
        batched = N / (time.perf_counter() - started)
        started = time.perf_counter()
        events = replay.apply(pool).events
        replay_rate = events / (time.perf_counter() - started)
        decoded, decode_rate = log_replay_rate(store)
        pool.close()
    print(header())
    print(row("raw INSERT, 1 row per transaction", f"{raw:,.0f} tx/s", "(baseline)"))
    print(
        row(
            "save, 1 event per transaction", f"{single:,.0f} ev/s", f"{raw:,.0f} tx/s", f"{single / raw:.2f}", ">= 0.50"
        )
    )
    print(
        row(f"save, {BATCH} events per transaction", f"{batched:,.0f} ev/s", f"{raw:,.0f} tx/s", f"{batched / raw:.2f}")
    )
    print(
        row(
            f"replay: rebuild aggregates ({decoded:,} events)",
            f"{decode_rate:,.0f} ev/s",
            f"{raw:,.0f} tx/s",
            f"{decode_rate / raw:.2f}",
            ">= 20,000 ev/s",
        )
    )
    print(
        row(
            f"replay --apply: read models ({events:,} events)",
            f"{replay_rate:,.0f} ev/s",
            f"{raw:,.0f} tx/s",
            f"{replay_rate / raw:.2f}",
        )
    )


if __name__ == "__main__":
    main()
