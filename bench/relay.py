"""``just bench-relay``: outbox relay throughput and commit-to-handler lag, next to a
bare LISTEN/NOTIFY round trip measured in the same run.

Goals: lag p50 within 2x of the bare round trip; >= 2,000 rows/s with batch claims.
"""

from __future__ import annotations

import threading
import time

import psycopg

from bench.common import database, header, percentile, row
from bench.store import new_job
from hodei.config import RelayConfig
from hodei.relay import Delivery, Relay, Route
from hodei.signals import Signals
from hodei.store.app import HodeiStore, Meta
from hodei.store.db import open_pool

SAMPLES = 200
ROWS = 10_000


def notify_one_way(url: str) -> list[float]:
    """Milliseconds from a NOTIFY's commit (as the sender sees it) to the listener."""
    samples = []
    with psycopg.connect(url, autocommit=True) as listener, psycopg.connect(url, autocommit=True) as sender:
        listener.execute("LISTEN bench")
        for _ in range(SAMPLES):
            sender.execute("NOTIFY bench")
            sent = time.perf_counter()
            next(listener.notifies(timeout=5, stop_after=1))
            samples.append((time.perf_counter() - sent) * 1000)
            time.sleep(0.005)
    return samples


def notify_round_trip(url: str) -> list[float]:
    """Milliseconds for a ping NOTIFY to reach a listener thread and its pong NOTIFY to
    come back: the least a process can do to react to another's commit and be seen."""
    samples = []
    ready = threading.Event()

    def echo() -> None:
        with psycopg.connect(url, autocommit=True) as conn, psycopg.connect(url, autocommit=True) as reply:
            conn.execute("LISTEN ping")
            ready.set()
            for _ in conn.notifies(timeout=30, stop_after=SAMPLES):
                reply.execute("NOTIFY pong")

    thread = threading.Thread(target=echo)
    thread.start()
    ready.wait(5)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("LISTEN pong")
        for _ in range(SAMPLES):
            started = time.perf_counter()
            conn.execute("NOTIFY ping")
            next(conn.notifies(timeout=5, stop_after=1))
            samples.append((time.perf_counter() - started) * 1000)
            time.sleep(0.005)
    thread.join()
    return samples


def relay_lag(url: str, pool: object, store: HodeiStore) -> list[float]:
    """Milliseconds from a save's commit to the start of its handler."""
    committed: dict[str, float] = {}
    lags: list[float] = []
    done = threading.Event()

    def handle(delivery: Delivery) -> None:
        started = time.perf_counter()
        job_id = delivery.event.aggregate_id
        while job_id not in committed:  # the handler can start before write() returns
            time.sleep(0)
        lags.append((started - committed[job_id]) * 1000)
        if len(lags) >= SAMPLES:
            done.set()

    signals = Signals(url)
    signals.start()
    signals.connected.wait(5)
    config = RelayConfig(batch_size=100, poll_interval=1.0, lease_seconds=30, max_attempts=3, threads=8)
    relay = Relay(pool, {"JobCreated": Route(handle)}, config, "bench", signals)  # type: ignore[arg-type]
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,))
    thread.start()
    for _ in range(SAMPLES):
        job = new_job()
        store.write([job], Meta(actor="bench"))
        committed[str(job.id)] = time.perf_counter()
        time.sleep(0.02)
    done.wait(30)
    stop.set()
    thread.join()
    signals.stop()
    return lags


def relay_throughput(pool: object, store: HodeiStore) -> float:
    for _ in range(ROWS // 100):
        store.write([new_job() for _ in range(100)], Meta(actor="bench"))
    config = RelayConfig(batch_size=100, poll_interval=1.0, lease_seconds=30, max_attempts=3, threads=8)
    relay = Relay(pool, {"JobCreated": Route(lambda _: None)}, config, "bench", Signals(None))  # type: ignore[arg-type]
    started = time.perf_counter()
    handled = relay.drain(timeout=300)
    elapsed = time.perf_counter() - started
    relay.close()
    return handled / elapsed


def main() -> None:
    with database() as url:
        pool = open_pool(url, max_size=20)
        store = HodeiStore(pool)
        one_way = notify_one_way(url)
        bare = notify_round_trip(url)
        lags = relay_lag(url, pool, store)
        throughput = relay_throughput(pool, store)
        pool.close()
    bare_p50, lag_p50 = percentile(bare, 50), percentile(lags, 50)
    print(header())
    print(row("bare NOTIFY one way (commit to listener) p50", f"{percentile(one_way, 50):.2f} ms", "(reference)"))
    print(row("bare LISTEN/NOTIFY round trip (ping-pong) p50", f"{bare_p50:.2f} ms", "(baseline)"))
    print(row("bare LISTEN/NOTIFY round trip (ping-pong) p99", f"{percentile(bare, 99):.2f} ms", "(baseline)"))
    print(
        row(
            "relay commit-to-handler lag p50",
            f"{lag_p50:.2f} ms",
            f"{bare_p50:.2f} ms",
            f"{lag_p50 / bare_p50:.2f}",
            "<= 2.0",
        )
    )
    print(
        row(
            "relay commit-to-handler lag p99",
            f"{percentile(lags, 99):.2f} ms",
            f"{percentile(bare, 99):.2f} ms",
            f"{percentile(lags, 99) / percentile(bare, 99):.2f}",
        )
    )
    print(row(f"relay throughput ({ROWS:,} rows, batch 100)", f"{throughput:,.0f} rows/s", "", "", ">= 2,000 rows/s"))


if __name__ == "__main__":
    main()
