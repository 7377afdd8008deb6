"""`audit` against a real PostgreSQL: the configuration's changes read from the log, each
with who made it and in words, newest first, filtered as asked; never a sealed value."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hodei.audit import MAX_CHANGES, Audit, said
from hodei.domain.cron import Concurrency, CronJob, Definition, Schedule
from hodei.domain.limit import INHERITED, SubmitterLimit
from hodei.domain.pool import Pool
from hodei.domain.provider import PROVIDER_IDS, Provider, ProviderHealth, ProviderType
from hodei.domain.spec import JobSpec
from hodei.domain.webhook import Webhook
from hodei.errors import InvalidInput
from hodei.store.app import HodeiStore, Meta


def changed(store: HodeiStore, actor: str, *aggregates: object) -> None:
    store.write(list(aggregates), Meta(actor=actor))  # type: ignore[arg-type]


@pytest.fixture
def audit(store: HodeiStore) -> Audit:
    provider = store.load(Provider, PROVIDER_IDS[ProviderType.DOCKER])  # registered by migrate
    provider.disable()
    provider.set_capacity(4)
    changed(store, "ops", provider)
    provider.record_health(ProviderHealth.UNHEALTHY, "engine away")
    changed(store, "system", provider)
    pool = Pool.create("db", 3)
    changed(store, "ops", pool)
    pool.resize(5)
    changed(store, "alice-admin", pool)
    changed(store, "ops", SubmitterLimit.create("alice", 2, INHERITED))
    sealed = {"url": "aesgcm1:c2VhbGVk", "secret": "aesgcm1:c2VjcmV0"}
    changed(store, "root", Webhook.create("chat", "https://hooks.example.com", sealed, ("FAILED",), ("team=data",)))
    spec = JobSpec(
        name="b",
        command="backup.sh",
        timeout_seconds=60.0,
        env={"DB_PASSWORD": "plain-in-spec"},
        secret_names=("TOKEN",),
    )
    definition = Definition(Schedule("0 3 * * *", "Europe/Madrid"), Concurrency.FORBID, 0.0, spec)
    cron = CronJob.create("nightly", definition, {"TOKEN": "aesgcm1:c2VhbGVkdG9r"}, "bob")
    changed(store, "bob", cron)
    cron.pause()
    changed(store, "bob", cron)
    then = JobSpec(name="c", command="check.sh", timeout_seconds=60.0, after={"#0": "ok"})
    cron.redefine(Definition(definition.schedule, Concurrency.FORBID, 0.0, spec, (then,)), cron.sealed_secrets, "bob")
    changed(store, "bob", cron)
    return Audit(store.pool)


def test_each_change_says_who_made_it_and_how_newest_first(audit: Audit) -> None:
    shown = [(c.actor, c.kind, c.subject, c.change) for c in audit.changes([], "", None, False, 0)]
    assert shown == [
        ("bob", "cron", "nightly", "redefined: schedule '0 3 * * *' (Europe/Madrid), owner bob, 2 jobs a run"),
        ("bob", "cron", "nightly", "paused"),
        ("bob", "cron", "nightly", "created: schedule '0 3 * * *' (Europe/Madrid), owner bob"),
        ("root", "webhook", "chat", "created: https://hooks.example.com, on FAILED, labels team=data"),
        ("ops", "limit", "alice", "set: jobs at once 2, not ended as *'s"),
        ("alice-admin", "pool", "db", "size 5"),
        ("ops", "pool", "db", "created, size 3"),
        ("ops", "provider", "docker", "capacity 4 workers"),
        ("ops", "provider", "docker", "disabled: new jobs refused, its queue waits"),
    ]
    text = " ".join(c.change for c in audit.changes([], "", None, True, 0))
    for hidden in ("c2VhbGVk", "c2VjcmV0", "plain-in-spec", "backup.sh", "check.sh"):
        assert hidden not in text


def test_changes_are_filtered_by_kind_actor_time_and_count(audit: Audit) -> None:
    def subjects(
        *kinds: str, actor: str = "", since: datetime | None = None, system: bool = False, most: int = 0
    ) -> list[str]:
        return [f"{c.kind} {c.subject} {c.change}" for c in audit.changes(kinds, actor, since, system, most)]

    assert subjects("pool", "limit") == [
        "limit alice set: jobs at once 2, not ended as *'s",
        "pool db size 5",
        "pool db created, size 3",
    ]
    assert subjects(actor="alice-admin") == ["pool db size 5"]
    docker = [change for change in subjects("provider", system=True) if change.startswith("provider docker ")]
    assert docker == [
        "provider docker health UNHEALTHY: engine away",
        "provider docker capacity 4 workers",
        "provider docker disabled: new jobs refused, its queue waits",
        "provider docker registered",
    ]
    assert subjects(most=2) == [
        "cron nightly redefined: schedule '0 3 * * *' (Europe/Madrid), owner bob, 2 jobs a run",
        "cron nightly paused",
    ]
    assert subjects(since=datetime.now(UTC) + timedelta(minutes=1)) == []
    assert len(subjects(since=datetime.now(UTC) - timedelta(minutes=5))) == 9
    with pytest.raises(InvalidInput, match="unknown kind job: the kinds are provider, pool, limit, webhook, cron"):
        subjects("job")
    with pytest.raises(InvalidInput, match=f"limit is 1 to {MAX_CHANGES}"):
        subjects(most=MAX_CHANGES + 1)


def test_an_event_type_this_version_does_not_know_is_said_by_its_name() -> None:
    assert said("PoolRenamed", {"name": "db"}) == "PoolRenamed"
    assert (
        said("ProviderCapacityChanged", {"max_workers": None}) == "capacity back to each server's HODEI_*_MAX_WORKERS"
    )
    assert said("SubmitterLimitChanged", {"jobs": None, "submitted": 10, "inherits": []}) == (
        "jobs at once none, not ended 10"
    )
