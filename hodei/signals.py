"""Wake-ups across processes: a LISTEN connection turns NOTIFYs into local events.

Every commit of events sends ``NOTIFY hodei_signals, '<aggregate ids>'``. Waiters
(the relay, worker streams, log followers, job watchers) block on a ``Waiter`` and
then look at the database: a lost notification only delays them, which is why every
waiter also polls (with a timeout; the worker streams, all at once in one query).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable
from typing import Self

import psycopg

from hodei.store.db import connect
from hodei.store.recorder import NOTHING_TO_DELIVER, SIGNAL_CHANNEL, WAKE_ALL, by

log = logging.getLogger(__name__)


class Waiter:
    def __init__(self, hub: Signals, keys: tuple[str | None, ...]) -> None:
        self._hub = hub
        self.keys = keys
        self._event = threading.Event()
        # The keys of the signals (not nudges) since ``take_signal`` last looked.
        self._heard: set[str] = set()
        self._hearing = threading.Lock()

    def wake(self, keys: Iterable[str] = (WAKE_ALL,)) -> None:
        """A signal: the database changed, for ``keys`` (every aggregate id of a NOTIFY's
        payload; without keys, anything may have)."""
        self._hear(keys)
        self._event.set()

    def _hear(self, keys: Iterable[str]) -> None:
        with self._hearing:
            self._heard.update(keys)

    def nudge(self) -> None:
        """Wakes the waiting thread for something of its own, not because the database
        changed: ``take_signal`` stays False."""
        self._event.set()

    def take_signal(self) -> set[str]:
        """The keys of the signals since the last call (empty: none came; ``*``: any key
        may have changed)."""
        with self._hearing:
            heard, self._heard = self._heard, set()
        return heard

    def wait(self, timeout: float) -> bool:
        """True when woken before the timeout. Clears the wake-up either way."""
        woken = self._event.wait(timeout)
        self._event.clear()
        return woken

    def close(self) -> None:
        self._hub.remove(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncWaiter(Waiter):
    """A waiter for coroutines: woken from the listener thread through its loop. One
    given ``deaf_to`` (an actor) sleeps through that actor's own commits (``by``)."""

    def __init__(
        self,
        hub: Signals,
        keys: tuple[str | None, ...],
        loop: asyncio.AbstractEventLoop,
        deaf_to: str | None = None,
    ) -> None:
        super().__init__(hub, keys)
        self._loop = loop
        self._own = by(deaf_to) if deaf_to else None
        self._async_event = asyncio.Event()
        # When the last wake-up arrived (monotonic): a read begun after it sees what woke us.
        self.woken_at = 0.0

    def wake(self, keys: Iterable[str] = (WAKE_ALL,)) -> None:
        if self._own is not None and self._own in keys and WAKE_ALL not in keys:
            return  # its own commit: it knows what it wrote
        self.woken_at = time.monotonic()
        self._hear(keys)
        self._loop.call_soon_threadsafe(self._async_event.set)

    def nudge(self) -> None:
        """Wakes the coroutine for something of its own (a message to send)."""
        self._loop.call_soon_threadsafe(self._async_event.set)

    async def wait_async(self, timeout: float | None) -> bool:
        """True when woken before the timeout (None: none). Clears the wake-up either way."""
        try:
            async with asyncio.timeout(timeout):  # no task per wait, unlike wait_for
                await self._async_event.wait()
            woken = True
        except TimeoutError:
            woken = False
        self._async_event.clear()
        return woken


class Signals:
    """Local subscribers keyed by aggregate id (or every signal, with key None)."""

    def __init__(self, database_url: str | None) -> None:
        self._url = database_url
        self._lock = threading.Lock()
        # Only keys someone waits on: a job's or a worker's key goes with its last waiter.
        self._waiters: dict[str | None, set[Waiter]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()

    def waiter(self, *keys: str) -> Waiter:
        """Woken by signals for any of ``keys``; with no key, by every signal of a commit
        with rows to deliver."""
        waiter = Waiter(self, keys or (None,))
        with self._lock:
            self._add(waiter, waiter.keys)
        return waiter

    def async_waiter(self, *keys: str, deaf_to: str | None = None) -> AsyncWaiter:
        """A waiter for the running event loop's coroutines (see ``waiter``)."""
        waiter = AsyncWaiter(self, keys or (None,), asyncio.get_running_loop(), deaf_to)
        with self._lock:
            self._add(waiter, waiter.keys)
        return waiter

    def listen(self, waiter: Waiter, *keys: str) -> None:
        """Has ``waiter`` woken by signals for ``keys`` too, from now on."""
        with self._lock:
            added = tuple(key for key in keys if key not in waiter.keys)
            waiter.keys += added
            self._add(waiter, added)

    def _add(self, waiter: Waiter, keys: Iterable[str | None]) -> None:
        """Under ``_lock``."""
        for key in keys:
            self._waiters.setdefault(key, set()).add(waiter)

    def remove(self, waiter: Waiter) -> None:
        with self._lock:
            for key in waiter.keys:
                waiters = self._waiters.get(key)
                if waiters is not None:
                    waiters.discard(waiter)
                    if not waiters:
                        del self._waiters[key]

    def publish(self, payload: str) -> None:
        """Delivers a NOTIFY payload (space-separated aggregate ids, or ``*``; ``by:`` the
        commit's one actor) locally.
        Waiters for every signal (the relay) sleep through a commit that left no row to
        deliver."""
        keys = payload.split()
        with self._lock:
            targets = set() if NOTHING_TO_DELIVER in keys else set(self._waiters.get(None, ()))
            if WAKE_ALL in keys:
                for waiters in self._waiters.values():
                    targets |= waiters
            else:
                for key in keys:
                    targets |= self._waiters.get(key, set())
        for waiter in targets:
            waiter.wake(keys)

    def start(self) -> None:
        if self._url is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._listen_forever, name="hodei-signals", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _listen_forever(self) -> None:
        assert self._url is not None
        delay = 0.1
        lost = False
        while not self._stop.is_set():
            try:
                with connect(self._url, autocommit=True, application_name="hodei-signals") as conn:
                    conn.execute(f"LISTEN {SIGNAL_CHANNEL}")
                    self.connected.set()
                    if lost:  # the end of an outage, in the log beside its start
                        log.info("signal listener connected again: PostgreSQL answers")
                    lost, delay = False, 0.1
                    # A reconnect may have missed notifications: wake everyone once.
                    self.publish(WAKE_ALL)
                    while not self._stop.is_set():
                        for notify in conn.notifies(timeout=1.0, stop_after=64):
                            self.publish(notify.payload)
                        # Proves the connection is alive; a dead one raises and reconnects.
                        conn.execute("SELECT 1")
            except psycopg.Error as exc:
                self.connected.clear()
                lost = True
                log.warning("signal listener lost its connection (%s); reconnecting in %.1fs", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
