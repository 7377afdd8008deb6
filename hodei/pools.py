"""Pools, as operators size them (``pool set``, ``pool delete``) and as people see them
(``pool list``): each with its jobs admitted and not ended, and those waiting.

Which pools exist is read from the log (each event names its pool: ``hodei.pool_size``);
the admission rounds (hodei.admission) count a pool's jobs from the ``jobs`` read model.
"""

from __future__ import annotations

from dataclasses import dataclass

from hodei.domain.base import check_name
from hodei.domain.pool import MAX_POOLS, Pool, check_size, pool_id
from hodei.errors import InvalidInput, InvalidTransition, NotFound
from hodei.store.app import HodeiStore, Meta
from hodei.store.db import fetch_all, fetch_value


@dataclass(frozen=True)
class PoolUse:
    name: str
    size: int
    # Its jobs admitted and not ended (over its size after a shrink: none starts until
    # they are under it), and its jobs waiting in the queue.
    running: int
    queued: int


class Pools:
    def __init__(self, store: HodeiStore) -> None:
        self.store = store

    def set(self, name: str, size: int, actor: str) -> PoolUse:
        """Creates the pool, or sizes it anew; the next admission round (a second at most)
        lets its jobs in."""
        check_name(name, "a pool")
        check_size(size)
        # Counted before the command: two pools created at once may both pass (a bound of
        # what a round reads, not a quota).
        existing = len(self.all())

        def run() -> tuple[None, list[Pool]]:
            pool = self.store.find(Pool, pool_id(name))
            if (pool is None or pool.deleted) and existing >= MAX_POOLS:
                raise InvalidTransition(f"there are {MAX_POOLS} pools, the most there may be: delete one first")
            if pool is None:
                pool = Pool.create(name, size)
            else:
                pool.resize(size)
            return None, [pool]

        self.store.command(Meta(actor=actor), run)
        return self.get(name)

    def delete(self, name: str, actor: str) -> PoolUse:
        """Its queued jobs wait until it is sized again (or they are cancelled); its running
        ones run on. The pool as it was."""
        found = self.get(name)

        def run() -> tuple[None, list[Pool]]:
            pool = self.store.load(Pool, pool_id(name))
            pool.delete()
            return None, [pool]

        self.store.command(Meta(actor=actor), run)
        return found

    def get(self, name: str) -> PoolUse:
        found = self._listed(name)
        if not found:
            raise NotFound(f"pool {name[:80]!r} not found (`pool list` shows them)")
        return found[0]

    def all(self) -> list[PoolUse]:
        """Every pool that was not deleted, by name."""
        return self._listed(None)

    def _listed(self, name: str | None) -> list[PoolUse]:
        return fetch_all(self.store.pool, "pools", {"name": name}, PoolUse)

    def check(self, name: str) -> None:
        """A job may name only a pool that exists (its jobs would wait for ever): its size
        read, not its jobs counted, at every submission naming one."""
        if name and fetch_value(self.store.pool, "pool_size", (name,)) is None:
            raise InvalidInput(f"no pool {name[:80]!r}: an operator creates it with `pool set {name[:80]} SIZE`")
