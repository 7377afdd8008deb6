"""Webhooks against a real PostgreSQL: definitions sealed in the log, the log read for jobs
that ended (which webhook, as it was then, is told of which job), and each message's
attempts, retries and end. Sending over HTTP is e2e/test_webhooks'."""

from __future__ import annotations

import base64
import json
import math
import threading
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest

from hodei.admission import Admission
from hodei.cron import CronJobs
from hodei.domain.job import Job
from hodei.domain.provider import ProviderType
from hodei.domain.spec import JobSpec, LabelSelector
from hodei.domain.webhook import ENDINGS, Webhook, check_selector, check_states, check_url, origin_of, webhook_id
from hodei.errors import InvalidInput, InvalidTransition, NotFound
from hodei.limits import Limits
from hodei.metrics import PlatformMetrics
from hodei.pools import Pools
from hodei.store.app import HodeiStore, Meta
from hodei.store.db import command_transaction, fetch_value
from hodei.store.job_secrets import JobSecrets
from hodei.store.readmodels import ReadModels
from hodei.testing import conninfo, query
from hodei.webhooks import FINISHED, MAX_ATTEMPTS, RETRY_AFTER, Target, Webhooks

URL = "https://hooks.example.com/services/T000/B000/tok3n-in-the-path?key=k3y-in-the-query"


@pytest.fixture
def webhooks(store: HodeiStore) -> Webhooks:
    return Webhooks(store, JobSecrets(store.pool), ReadModels(store.pool))


def ended(store: HodeiStore, how: str = "FAILED", **labels: str) -> str:
    """A job that ends at once, as a provisioning failure or a cancel ends one."""
    spec = JobSpec(name="t", command="true", timeout_seconds=30.0, provider="local", labels=labels)
    job = Job.submit(spec, uuid4())
    store.write([job], Meta(actor="alice", correlation_id=str(job.id)))
    job = store.load(Job, job.id)
    if how == "CANCELLED":
        job.cancel("not wanted")
    else:
        job.fail("no worker could be made")
    store.write([job], Meta(actor="alice", correlation_id=str(job.id)))
    return str(job.id)


def messages(store: HodeiStore) -> list[tuple[str, str, str]]:
    """(webhook, job id, its state in the body) of every message, oldest first."""
    rows = query(
        conninfo(store.pool),
        "SELECT webhook, job_id::text, body::jsonb -> 'data' ->> 'state' FROM hodei.webhook_deliveries "
        "WHERE type = 'job.finished' ORDER BY created_at, webhook",
    )
    return [(str(a), str(b), str(c)) for a, b, c in rows]


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("", "needs a URL"),
        ("ftp://example.com/x", "http:// or https://"),
        ("https:///no-host", "http:// or https://"),
        ("https://example.com/a b", "without spaces"),
        ("https://example.com:99999/", "cannot be read"),
        ("https://example.com/" + "x" * 2048, "at most 2048"),
    ],
)
def test_a_url_that_cannot_be_posted_to_is_refused_by_name(url: str, says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        check_url(url)


def test_what_is_shown_of_a_url_is_its_origin_only() -> None:
    assert origin_of(URL) == "https://hooks.example.com"
    assert origin_of("http://user:pass@127.0.0.1:8080/x?y=1") == "http://127.0.0.1:8080"
    assert origin_of("http://[::1]:9000/hook") == "http://[::1]:9000"


def test_states_and_selectors_are_checked_as_job_list_checks_them() -> None:
    assert check_states([]) == ENDINGS
    assert check_states(["failed", " TIMEOUT "]) == ("FAILED", "TIMEOUT")
    assert check_states(["failed", "running"]) == ("RUNNING", "FAILED")
    with pytest.raises(InvalidInput, match=r"starting \(RUNNING\) or ending CANCELLED, .*; not of ASSIGNED, PENDING"):
        check_states(["PENDING", "assigned"])
    assert check_selector(["team=data", " !temp "]) == ("team=data", "!temp")
    with pytest.raises(InvalidInput, match="label selector `!`"):
        check_selector(["!"])


@given(
    labels=st.dictionaries(st.sampled_from("abc"), st.sampled_from("xy"), max_size=3),
    terms=st.lists(
        st.one_of(
            st.builds(lambda k, v: f"{k}={v}", st.sampled_from("abc"), st.sampled_from("xy")),
            st.builds(lambda k, v: f"{k}!={v}", st.sampled_from("abc"), st.sampled_from("xy")),
            st.sampled_from("abc"),
            st.builds(lambda k: f"!{k}", st.sampled_from("abc")),
        ),
        max_size=3,
    ),
)
def test_a_selector_matches_labels_as_its_terms_say(labels: dict[str, str], terms: list[str]) -> None:
    """Written out term by term (job list's query reads them alike: e2e/test_cli). Two
    values for one key's `=` could never both hold: refused."""
    values: dict[str, set[str]] = {}
    for key, value in (term.split("=") for term in terms if "=" in term and "!=" not in term):
        values.setdefault(key, set()).add(value)
    if any(len(given) > 1 for given in values.values()):
        with pytest.raises(InvalidInput, match="cannot also be"):
            LabelSelector.of(terms)
        return
    expected = True
    for term in terms:
        if "!=" in term:
            key, value = term.split("!=")
            expected &= labels.get(key) != value
        elif "=" in term:
            key, value = term.split("=")
            expected &= labels.get(key) == value
        elif term.startswith("!"):
            expected &= term[1:] not in labels
        else:
            expected &= term in labels
    assert LabelSelector.of(terms).matches(labels) is expected


def test_a_webhooks_url_and_secret_enter_the_log_only_sealed(store: HodeiStore, webhooks: Webhooks) -> None:
    defined, secret = webhooks.set("chat", URL, ["failed"], ["team=data"], "root")
    assert secret.startswith("whsec_") and len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    assert (defined.url, defined.row.states, defined.row.label_selector) == (URL, ["FAILED"], ["team=data"])
    logged = " ".join(str(text) for (text,) in query(conninfo(store.pool), "SELECT payload::text FROM domain_events"))
    assert "hooks.example.com" in logged  # its origin, for audits
    for hidden in ("tok3n-in-the-path", "k3y-in-the-query", secret, secret.removeprefix("whsec_")):
        assert hidden not in logged
    target = webhooks.target("chat")
    assert target is not None and (target.url, target.secrets) == (URL, (secret,))


def test_set_again_keeps_the_secret_and_writes_nothing_unless_it_changed(store: HodeiStore, webhooks: Webhooks) -> None:
    _, secret = webhooks.set("chat", URL, [], [], "root")
    count = "SELECT count(*) FROM domain_events WHERE aggregate_type = 'Webhook'"
    assert webhooks.set("chat", URL, [], [], "root")[1] == ""
    assert query(conninfo(store.pool), count) == [(1,)]
    moved, again = webhooks.set("chat", "http://127.0.0.1:1/other", ["SUCCEEDED"], [], "ops")
    assert again == "" and query(conninfo(store.pool), count) == [(2,)]
    assert (moved.url, moved.row.states, moved.row.changed_by) == ("http://127.0.0.1:1/other", ["SUCCEEDED"], "ops")
    target = webhooks.target("chat")
    assert target is not None and target.secrets == (secret,)


def test_delete_shreds_the_url_and_secret_and_a_new_one_gets_a_new_secret(webhooks: Webhooks) -> None:
    _, first = webhooks.set("chat", URL, [], [], "root")
    webhooks.delete("chat", "root")
    assert webhooks.target("chat") is None and webhooks.all() == []
    with pytest.raises(NotFound, match="webhook 'chat' not found"):
        webhooks.get("chat")
    with pytest.raises(NotFound):
        webhooks.delete("chat", "root")
    _, second = webhooks.set("chat", URL, [], [], "root")
    assert second.startswith("whsec_") and second != first
    assert [found.row.name for found in webhooks.all()] == ["chat"]


def test_a_rotated_secret_signs_beside_its_successor_until_its_overlap_ends(
    store: HodeiStore, webhooks: Webhooks
) -> None:
    _, first = webhooks.set("chat", URL, [], [], "root")
    rotated, second = webhooks.rotate("chat", 3600, "ops")
    assert second.startswith("whsec_") and second != first
    assert rotated.previous_until is not None
    assert timedelta(minutes=59) < rotated.previous_until - datetime.now(UTC) <= timedelta(hours=1)
    assert (rotated.url, rotated.row.changed_by) == (URL, "ops")
    assert webhooks.target("chat") == Target(URL, (second, first))
    logged = " ".join(str(text) for (text,) in query(conninfo(store.pool), "SELECT payload::text FROM domain_events"))
    assert first not in logged and second not in logged
    # Rotated again: two secrets sign at most, the one just replaced beside the new one.
    _, third = webhooks.rotate("chat", 60, "ops")
    assert webhooks.target("chat") == Target(URL, (third, second))
    # An overlap that has run out: the old secret signs no more, and none is said to.
    sealed = webhooks.secrets.seal(
        webhook_id("chat"),
        {"url": URL, "secret": third, "previous": second, "previous_until": "2026-01-01T00:00:00+00:00"},
    )
    store.command(Meta(actor="ops"), lambda: (None, [_rotated(store, sealed)]))
    assert webhooks.target("chat") == Target(URL, (third,))
    assert webhooks.get("chat").previous_until is None
    _, fourth = webhooks.rotate("chat", 0, "ops")
    assert webhooks.target("chat") == Target(URL, (fourth,))
    events = "SELECT count(*) FROM domain_events WHERE aggregate_type = 'Webhook'"
    (before,) = query(conninfo(store.pool), events)
    for name, overlap, error in (
        ("chat", -1.0, InvalidInput),
        ("chat", 8 * 86400.0, InvalidInput),
        ("chat", math.nan, InvalidInput),
        ("nobody", 60.0, NotFound),
    ):
        with pytest.raises(error):
            webhooks.rotate(name, overlap, "ops")
    webhooks.delete("chat", "root")
    with pytest.raises(NotFound):
        webhooks.rotate("chat", 60, "ops")
    assert query(conninfo(store.pool), events) == [(before[0] + 1,)]  # the deletion only


def _rotated(store: HodeiStore, sealed: dict[str, str]) -> Webhook:
    hook = store.load(Webhook, webhook_id("chat"))
    hook.rotate(sealed, "2026-01-01T00:00:00+00:00")
    return hook


def test_a_bad_definition_writes_nothing(store: HodeiStore, webhooks: Webhooks) -> None:
    for name, url, states in (("no/slash", URL, []), ("chat", "file:///etc/passwd", []), ("chat", URL, ["DONE"])):
        with pytest.raises(InvalidInput):
            webhooks.set(name, url, states, [], "root")
    assert query(conninfo(store.pool), "SELECT count(*) FROM domain_events WHERE aggregate_type = 'Webhook'") == [(0,)]


def test_each_job_that_ends_is_told_to_the_webhooks_that_match_it_as_they_were_then(
    store: HodeiStore, webhooks: Webhooks
) -> None:
    before = ended(store, team="data")  # before any webhook: nobody's
    webhooks.set("failures", URL, ["FAILED"], ["team=data"], "root")
    webhooks.set("all", "http://127.0.0.1:1/all", [], [], "root")
    failed = ended(store, team="data")
    other_team = ended(store, team="web")
    cancelled = ended(store, "CANCELLED", team="data")
    webhooks.delete("all", "root")
    after_delete = ended(store, team="web")
    assert webhooks.enqueue() == 4
    assert messages(store) == [
        ("failures", failed, "FAILED"),
        ("all", failed, "FAILED"),
        ("all", other_team, "FAILED"),
        ("all", cancelled, "CANCELLED"),
    ]
    assert before not in {job for _, job, _ in messages(store)} and after_delete not in str(messages(store))
    assert webhooks.enqueue() == 0  # read once
    later = ended(store, team="data")
    assert webhooks.enqueue() == 1 and messages(store)[-1] == ("failures", later, "FAILED")


def test_a_message_is_the_job_as_job_get_prints_it(store: HodeiStore, webhooks: Webhooks) -> None:
    webhooks.set("chat", URL, [], [], "root")
    job_id = ended(store, team="data")
    webhooks.enqueue()
    ((body,),) = query(conninfo(store.pool), "SELECT body::jsonb FROM hodei.webhook_deliveries")
    assert body["type"] == FINISHED and body["timestamp"].endswith("Z")
    data = body["data"]
    assert (data["id"], data["state"], data["exit_code"], data["error_message"]) == (
        job_id,
        "FAILED",
        None,
        "no worker could be made",
    )
    assert data["spec"]["labels"] == {"team": "data"} and [p["name"] for p in data["phases"]][-1] == "finished"


def test_one_server_reads_the_log_at_a_time(store: HodeiStore, webhooks: Webhooks) -> None:
    webhooks.set("chat", URL, [], [], "root")
    ended(store)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with command_transaction(store.pool):
            fetch_value(store.pool, "lock_webhook_cursor")
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(10)
    try:
        assert webhooks.enqueue() == 0  # skipped, not waiting
    finally:
        release.set()
        holder.join()
    assert webhooks.enqueue() == 1


def test_an_attempt_not_answered_2xx_is_tried_again_later_then_given_up_on(
    store: HodeiStore, webhooks: Webhooks
) -> None:
    webhooks.set("chat", URL, [], [], "root")
    ended(store)
    webhooks.enqueue()
    url = conninfo(store.pool)
    for attempt in range(1, MAX_ATTEMPTS + 1):
        query(url, "UPDATE hodei.webhook_deliveries SET next_at = now() - interval '1 second'")
        (due,) = webhooks.claim(10)
        assert due.attempts == attempt and webhooks.claim(10) == []  # leased
        state = webhooks.record(due, 503, "answered 503 Service Unavailable")
        ((next_at, status, error),) = query(
            url, "SELECT next_at, last_status, last_error FROM hodei.webhook_deliveries"
        )
        assert (status, error) == (503, "answered 503 Service Unavailable")
        if attempt < MAX_ATTEMPTS:
            assert state == "PENDING"
            wait = (next_at - datetime.now(UTC)).total_seconds()
            assert RETRY_AFTER[attempt - 1] - 5 < wait <= RETRY_AFTER[attempt - 1]
        else:
            assert state == "FAILED"
    assert webhooks.all()[0].row.failed == 1
    metrics = PlatformMetrics(
        ReadModels(store.pool),
        CronJobs(store, JobSecrets(store.pool), kill_grace=1.0),
        Pools(store),
        Limits(store),
        webhooks,
        Admission(store, dict.fromkeys(ProviderType, 16)),
    )
    scraped = generate_latest(metrics.registry).decode()
    assert 'hodei_webhook_messages{state="failed",webhook="chat"} 1.0' in scraped
    assert 'hodei_webhook_messages{state="pending",webhook="chat"} 0.0' in scraped
    (failed,) = webhooks.deliveries("chat")
    again = webhooks.redeliver(str(failed.id))
    assert (again.state, again.attempts) == ("PENDING", 0)
    (due,) = webhooks.claim(10)
    assert webhooks.record(due, 204, "") == "DELIVERED" and webhooks.delivery(due.id).last_status == 204


def test_a_lease_that_ran_out_leaves_the_message_due_again(store: HodeiStore, webhooks: Webhooks) -> None:
    webhooks.set("chat", URL, [], [], "root")
    message_id = webhooks.test("chat")
    (first,) = webhooks.claim(10)
    assert first.id == message_id and webhooks.claim(10) == []
    query(conninfo(store.pool), "UPDATE hodei.webhook_deliveries SET lease_until = now() - interval '1 second'")
    (second,) = webhooks.claim(10)
    assert (second.id, second.attempts) == (message_id, 2)


def test_a_deleted_webhooks_messages_are_given_up_on_and_cannot_be_sent_again(webhooks: Webhooks) -> None:
    webhooks.set("chat", URL, [], [], "root")
    message_id = webhooks.test("chat")
    webhooks.delete("chat", "root")
    (due,) = webhooks.claim(10)
    assert webhooks.target(due.webhook) is None
    webhooks.give_up(due, "webhook chat was deleted")
    found = webhooks.delivery(message_id)
    assert (found.state, found.last_error) == ("FAILED", "webhook chat was deleted")
    with pytest.raises(InvalidTransition, match="was deleted"):
        webhooks.redeliver(str(message_id))
    with pytest.raises(InvalidInput, match="is a UUID"):
        webhooks.delivery("nope")
    with pytest.raises(NotFound):
        webhooks.delivery(str(uuid4()))


def test_messages_delivered_or_given_up_on_are_pruned_after_their_week(store: HodeiStore, webhooks: Webhooks) -> None:
    webhooks.set("chat", URL, [], [], "root")
    old, fresh, pending = webhooks.test("chat"), webhooks.test("chat"), webhooks.test("chat")
    for due in webhooks.claim(10):
        if due.id != pending:
            webhooks.record(due, 200, "")
    week_ago = datetime.now(UTC) - timedelta(days=8)
    query(conninfo(store.pool), "UPDATE hodei.webhook_deliveries SET updated_at = %s WHERE id <> %s", (week_ago, fresh))
    assert webhooks.prune() == 1
    assert {row.id for row in webhooks.deliveries("chat")} == {fresh, pending}
    assert old not in {row.id for row in webhooks.deliveries("chat")}


def test_a_version_1_definition_is_told_of_jobs_and_a_change_of_subject_is_one_event(
    store: HodeiStore, webhooks: Webhooks
) -> None:
    """WebhookSet version 1 had no `pipelines` (nor WebhookChanged, WebhookSecretRotated):
    read back (the upcaster, and the query that reads the log by name) it is told of jobs.
    Set again with --pipelines, one WebhookChanged says so; RUNNING is no pipeline's."""
    from hodei.store.events import event_id

    url = conninfo(store.pool)
    hook = webhook_id("chat")
    sealed = JobSecrets(store.pool).seal(hook, {"secret": "whsec_" + base64.b64encode(b"k" * 32).decode(), "url": URL})
    payload = {
        "name": "chat",
        "origin": origin_of(URL),
        "sealed": sealed,
        "states": ["FAILED"],
        "label_selector": [],
        "originator_topic": "hodei.domain.webhook:Webhook",
    }
    query(
        url,
        "INSERT INTO domain_events (id, occurred_at, event_type, aggregate_id, payload, aggregate_type, "
        "aggregate_version, topic) VALUES (%s, now(), 'WebhookSet', %s, %s, 'Webhook', 1, "
        "'hodei.domain.webhook:Webhook.WebhookSet')",
        (event_id(str(hook), 1), str(hook), json.dumps(payload)),
    )
    assert store.load(Webhook, hook).pipelines is False
    assert webhooks.get("chat").row.pipelines is False
    count = "SELECT count(*) FROM domain_events WHERE aggregate_type = 'Webhook'"
    assert webhooks.set("chat", URL, ["failed"], [], "root")[0].row.pipelines is False  # unchanged: nothing written
    assert query(url, count) == [(1,)]
    assert webhooks.set("chat", URL, ["failed"], [], "root", pipelines=True)[0].row.pipelines is True
    assert query(url, count) == [(2,)] and store.load(Webhook, hook).pipelines is True
    with pytest.raises(InvalidInput, match="told of how they end, not RUNNING"):
        webhooks.set("starts", URL, ["RUNNING"], [], "root", pipelines=True)
    assert query(url, count) == [(2,)]
