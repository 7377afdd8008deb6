"""A pool: at most so many of the jobs that name it (``job run --pool NAME``) admitted and
not ended at once, whatever their providers — Airflow's pools, Argo's semaphores, Slurm's
licenses: a database that takes four loaders at a time, a licence server with two seats.

Its events are its sizes and its deletion; the jobs that take its slots are counted from
the ``jobs`` read model by the queue's query (sql/017), never kept here.
"""

from __future__ import annotations

from uuid import UUID

from eventsourcing.domain import event

from hodei.domain.base import HodeiAggregate, check_name, derived_id
from hodei.errors import InvalidInput, InvalidTransition

MAX_POOL_SIZE = 100_000
# Pools at most: each is read by every admission round that meets one of its jobs.
MAX_POOLS = 1000


def pool_id(name: str) -> UUID:
    """A pool's id, from its name: sizing a name twice is one aggregate."""
    return derived_id("pool", name)


def check_size(size: int) -> int:
    if not 0 <= size <= MAX_POOL_SIZE:
        raise InvalidInput(f"a pool's size is 0 (its jobs wait) to {MAX_POOL_SIZE}, got {size}")
    return size


class Pool(HodeiAggregate):
    id: UUID  # derived from the name (the library takes an `id` argument when annotated)

    @event("PoolCreated")
    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self.deleted = False

    @classmethod
    def create(cls, name: str, size: int) -> Pool:
        # The library accepts `id` because the class annotates it (see `id: UUID` above).
        return cls(id=pool_id(check_name(name, "a pool")), name=name, size=check_size(size))  # type: ignore[call-arg]

    def resize(self, size: int) -> None:
        """A new size (a deleted pool's name is sized anew): jobs over it keep running, and
        no more start until they are under it."""
        check_size(size)
        if self.deleted or size != self.size:
            self._resized(name=self.name, size=size)

    def delete(self) -> None:
        """Its queued jobs wait (a pool that does not exist has no room) until it is sized
        again or they are cancelled."""
        if self.deleted:
            raise InvalidTransition(f"pool {self.name} was already deleted")
        self._deleted(name=self.name)

    # Each event names its pool: the queue's query reads a pool's size by its name from the
    # log (hodei.pool_size, sql/017).
    @event("PoolResized")
    def _resized(self, name: str, size: int) -> None:
        self.size = size
        self.deleted = False

    @event("PoolDeleted")
    def _deleted(self, name: str) -> None:
        self.deleted = True
