"""The web console and /metrics over real HTTP: who may see and do what, what the
metrics count, the job list's filters and the timeline's marks (the browser test in
test_console_browser.py drives the pages themselves)."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote
from uuid import uuid4

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from e2e.test_access import create_token
from hodei.domain.phases import seconds_text
from hodei.testing import (
    ServerProcess,
    allow_new_sagas,
    eventually,
    every_race_lost,
    query,
    refuse_new_sagas,
    wait_running,
    wait_settled,
)
from tests.test_deploy import alerted_metrics, charted_metrics

pytestmark = pytest.mark.e2e

PAGES = [
    "/jobs",
    "/jobs/new",
    "/providers",
    "/queue",
    "/workers",
    "/sagas",
    "/cron",
    "/dead-letters",
    "/audit",
    "/report",
    "/webhooks",
]


def browser(server: ServerProcess, token: str | None = None) -> requests.Session:
    session = requests.Session()
    session.headers["Accept"] = "text/html"
    if token is not None:
        response = session.post(f"{server.http_url}/login", data={"token": token, "next": "/jobs"})
        assert response.ok and "signed-in" in response.text, response.text
    return session


def run(server: ServerProcess, *args: str) -> str:
    return server.cli("job", "run", "--provider", "sim", "--command", "true", *args, check=True).stdout.strip()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


@pytest.fixture(scope="module")
def tokens(pg_server: str, template_database: str) -> dict[str, str]:
    from conftest import new_database

    url = new_database(pg_server, template_database)
    made = {role: create_token(url, f"{role}-person", role) for role in ("read", "submit", "operate")}
    made["other"] = create_token(url, "other-submitter", "submit")
    made["url"] = url
    return made


@pytest.fixture(scope="module")
def guarded(tokens: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"HODEI_LOCAL_ENABLED": "0", "HODEI_SIM_ENABLED": "1", "HODEI_K8S_JOB_SERVICE_ACCOUNTS": "s3-reader"}
    with ServerProcess(tokens["url"], tmp_path_factory.mktemp("logs"), env, token=tokens["operate"], http=True) as s:
        yield s


def test_without_a_token_every_page_and_the_metrics_are_refused(guarded: ServerProcess) -> None:
    anonymous = browser(guarded)
    for page in PAGES:
        response = anonymous.get(guarded.http_url + page, allow_redirects=False)
        assert response.status_code == 303 and response.headers["Location"] == f"/login?next={page}", page
    assert requests.get(f"{guarded.http_url}/metrics").status_code == 401
    assert requests.get(f"{guarded.http_url}/jobs/rows", allow_redirects=False).status_code == 303
    assert anonymous.post(f"{guarded.http_url}/dead-letters/redrive", data={"all": "1"}).status_code == 401
    # Probes stay open: an orchestrator checks them without credentials.
    assert requests.get(f"{guarded.http_url}/healthz").text == "ok\n"
    assert requests.get(f"{guarded.http_url}/readyz").text == "ready\n"
    wrong = anonymous.post(f"{guarded.http_url}/login", data={"token": "hodei_not-a-token", "next": "/jobs"})
    assert wrong.status_code == 401 and "login-error" in wrong.text
    # Every answer, a redirect, a refusal and a file among them, may be framed by no other
    # site and runs the console's own script only (e2e/test_console_browser.py: in Chromium).
    site = guarded.http_url
    answers = [wrong, requests.get(f"{site}/metrics"), requests.get(f"{site}/nowhere")]
    answers += [anonymous.get(f"{site}/jobs", allow_redirects=False), anonymous.get(f"{site}/login")]
    answers.append(anonymous.get(site + re.findall(r'src="(/static/[^"]+)"', answers[-1].text)[0]))
    assert [answer.status_code for answer in answers] == [401, 401, 404, 303, 200, 200]
    for answer in answers:
        assert answer.headers["X-Frame-Options"] == "DENY", answer.url
        assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"], answer.url
        assert answer.headers["X-Content-Type-Options"] == "nosniff", answer.url


def test_a_read_token_sees_no_cancel_and_its_forged_cancel_is_refused(
    guarded: ServerProcess, tokens: dict[str, str]
) -> None:
    job_id = run(guarded, "--env", "HODEI_SIM_SECONDS=120,HODEI_SIM_HANDLES=HUP", "--timeout", "300")
    url = guarded.database_url
    eventually(lambda: query(url, "SELECT state FROM jobs WHERE id = %s", (job_id,)) == [("RUNNING",)], 30)
    page = f"{guarded.http_url}/jobs/{job_id}"

    reader = browser(guarded, tokens["read"])
    shown = reader.get(page)
    assert shown.ok and 'id="job-state"' in shown.text and 'id="cancel"' not in shown.text
    assert 'id="signal"' not in shown.text
    assert reader.post(f"{page}/signal", data={"signal": "USR1"}, allow_redirects=False).status_code == 403
    assert 'id="exec"' not in shown.text
    assert reader.post(f"{page}/exec", data={"command": "id"}, allow_redirects=False).status_code == 403
    forged = reader.post(f"{page}/cancel", allow_redirects=False)
    assert forged.status_code == 403 and "needs submit" in forged.text, forged.text
    # Someone else's job: a submitter may not cancel it either.
    other = browser(guarded, tokens["other"])
    assert 'id="cancel"' not in other.get(page).text and 'id="exec"' not in other.get(page).text
    assert other.post(f"{page}/exec", data={"command": "id"}, allow_redirects=False).status_code == 403
    assert other.post(f"{page}/cancel", allow_redirects=False).status_code == 403
    assert query(url, "SELECT state FROM jobs WHERE id = %s", (job_id,)) == [("RUNNING",)]

    operator = browser(guarded, tokens["operate"])
    assert 'id="cancel"' in operator.get(page).text and 'id="kill"' in operator.get(page).text
    assert 'id="hold"' not in operator.get(page).text  # it left the queue: nothing to hold
    assert 'id="signal"' in operator.get(page).text
    sent = operator.post(f"{page}/signal", data={"signal": "HUP"}, allow_redirects=False)  # `job signal`
    assert sent.status_code == 303 and sent.headers["Location"] == f"/jobs/{job_id}"
    signalled = (
        "SELECT actor, payload->>'signal' FROM domain_events WHERE aggregate_id = %s AND event_type = 'JobSignalled'"
    )
    assert query(url, signalled, (job_id,)) == [("operate-person", "HUP")]
    # `job exec`: a shell line, its answer on a page of its own (a sim worker runs none).
    assert 'id="exec"' in operator.get(page).text
    ran = operator.post(f"{page}/exec", data={"command": "echo '<b>'"}, allow_redirects=False)
    assert ran.status_code == 200
    assert '<code id="exec-line">echo &#39;&lt;b&gt;&#39;</code>' in ran.text
    assert "not started: a sim worker runs no commands (exit code 126)" in ran.text
    requested = (
        "SELECT actor, payload->'argv' FROM domain_events WHERE aggregate_id = %s AND event_type = 'JobExecRequested'"
    )
    assert query(url, requested, (job_id,)) == [("operate-person", ["sh", "-c", "echo '<b>'"])]
    blank = operator.post(f"{page}/exec", data={"command": " "}, allow_redirects=False)
    assert blank.status_code == 400 and "give the command to run in the job" in blank.text
    elsewhere = operator.post(f"{page}/exec", data={"command": "id"}, headers={"Origin": "http://elsewhere.example"})
    assert elsewhere.status_code == 403
    bad = operator.post(f"{page}/signal", data={"signal": "SEGV"}, allow_redirects=False)
    assert bad.status_code == 400 and "a signal is one of HUP" in bad.text
    cross_site = operator.post(f"{page}/cancel", headers={"Origin": "http://elsewhere.example"}, allow_redirects=False)
    assert cross_site.status_code == 403
    done = operator.post(f"{page}/cancel", data={"force": "1"}, allow_redirects=False)  # Kill
    assert done.status_code == 303 and done.headers["Location"] == f"/jobs/{job_id}"
    wait_settled(url, job_id)
    assert query(url, "SELECT state, cancelled_by FROM jobs WHERE id = %s", (job_id,)) == [
        ("CANCELLED", "operate-person")
    ]
    # Kill pressed again, on a page shown before the job ended: refused as a conflict, not a failure.
    again = operator.post(f"{page}/cancel", data={"force": "1"}, allow_redirects=False)
    assert again.status_code == 409 and "already ended CANCELLED" in again.text, again.text
    # Kill asked for no grace: SIGKILL by the cancel's own time (Cancel: HODEI_KILL_GRACE, 5 s, later).
    (grace,) = query(
        url,
        "SELECT extract(epoch FROM (payload->>'stop_by')::timestamptz - occurred_at) FROM domain_events "
        "WHERE aggregate_id = %s AND payload->>'new_state' = 'CANCELLED'",
        (job_id,),
    )[0]
    assert abs(grace) < 1
    # It keeps no exit code; how its processes ended once killed is said beside it.
    said = '<td id="exit-code">- (cancelled; its processes exited with code 137)</td>'
    eventually(lambda: said in reader.get(page).text, 30)


def test_a_submitter_runs_a_job_from_the_form_and_bad_input_shows_the_form_again(
    guarded: ServerProcess, tokens: dict[str, str]
) -> None:
    url = guarded.database_url
    submitter = browser(guarded, tokens["submit"])
    assert 'id="new-job"' in submitter.get(f"{guarded.http_url}/jobs").text
    form = {
        "command": "echo from the form",
        "name": "formed",
        "provider": "sim",
        "image": "",
        "timeout": "1m",
        "env": "HODEI_SIM_LINES=2\n# a comment\nGREETING=a=b, c\n",
        "labels": "team=data\n",
    }
    made = submitter.post(f"{guarded.http_url}/jobs", data=form, allow_redirects=False)
    assert made.status_code == 303, made.text
    job_id = made.headers["Location"].removeprefix("/jobs/")
    wait_settled(url, job_id)
    ((name, state, actor, spec),) = query(url, "SELECT name, state, actor, spec FROM jobs WHERE id = %s", (job_id,))
    assert (name, state, actor) == ("formed", "SUCCEEDED", "submit-person")
    assert (spec["env"], spec["labels"], spec["timeout_seconds"]) == (
        {"HODEI_SIM_LINES": "2", "GREETING": "a=b, c"},
        {"team": "data"},
        60.0,
    )

    jobs = query(url, "SELECT count(*) FROM jobs")
    for change, said in [
        ({"command": "  "}, "command must not be empty"),
        ({"env": "not a pair"}, "environment, line 1: expected KEY=VALUE"),
        ({"timeout": "soon"}, "timeout takes seconds or a duration such as 90s, 10m or 2h, got `soon`"),
        ({"provider": "local", "image": "app:1"}, "provider local cannot run a job in an image of its own"),
    ]:
        refused = submitter.post(f"{guarded.http_url}/jobs", data={**form, **change}, allow_redirects=False)
        assert refused.status_code == 400 and said in refused.text, refused.text
        assert 'id="submit-error"' in refused.text and "formed" in refused.text  # what was typed stays
    assert query(url, "SELECT count(*) FROM jobs") == jobs

    # The page's form carries a key of its own: posted twice (a double click, a reload), one job.
    page = submitter.get(f"{guarded.http_url}/jobs/new").text
    assert 'name="timeout" id="timeout" size="8" value="600"' in page  # `job run`'s default
    (key,) = re.findall(r'<input type="hidden" name="key" value="([0-9a-f-]{36})">', page)
    keyed = {**form, "key": key}
    posted = [submitter.post(f"{guarded.http_url}/jobs", data=keyed, allow_redirects=False) for _ in range(2)]
    assert [response.status_code for response in posted] == [303, 303]
    assert posted[0].headers["Location"] == posted[1].headers["Location"]
    jobs = query(url, "SELECT count(*) FROM jobs")
    # Back to the form, changed, posted with its old key: said, and a new key to run it with.
    changed = submitter.post(f"{guarded.http_url}/jobs", data={**keyed, "name": "changed"}, allow_redirects=False)
    assert changed.status_code == 409 and "This form ran a job already, with other values" in changed.text
    (new_key,) = re.findall(r'name="key" value="([0-9a-f-]{36})"', changed.text)
    assert new_key != key and 'value="changed"' in changed.text
    assert query(url, "SELECT count(*) FROM jobs") == jobs

    reader = browser(guarded, tokens["read"])
    assert 'id="new-job"' not in reader.get(f"{guarded.http_url}/jobs").text
    assert reader.post(f"{guarded.http_url}/jobs", data=form, allow_redirects=False).status_code == 403
    cross_site = submitter.post(f"{guarded.http_url}/jobs", data=form, headers={"Origin": "http://elsewhere.example"})
    assert cross_site.status_code == 403
    assert query(url, "SELECT count(*) FROM jobs") == jobs


def test_the_retry_button_pressed_twice_makes_one_copy(guarded: ServerProcess, tokens: dict[str, str]) -> None:
    url = guarded.database_url
    original = guarded.cli("--token", tokens["submit"], "job", "run", "-p", "sim", "-c", "true", "--wait", check=True)
    job_id = original.stdout.split()[0]
    submitter = browser(guarded, tokens["submit"])
    (key,) = re.findall(r'name="key" value="([0-9a-f-]{36})"', submitter.get(f"{guarded.http_url}/jobs/{job_id}").text)
    pressed = [
        submitter.post(f"{guarded.http_url}/jobs/{job_id}/retry", data={"key": key}, allow_redirects=False)
        for _ in range(2)
    ]
    assert [response.status_code for response in pressed] == [303, 303]
    assert pressed[0].headers["Location"] == pressed[1].headers["Location"] != f"/jobs/{job_id}"
    copies = query(url, "SELECT id::text FROM jobs WHERE retry_of = %s", (job_id,))
    assert copies == [(pressed[0].headers["Location"].removeprefix("/jobs/"),)]


def test_cron_jobs_are_listed_and_their_owner_pauses_resumes_and_runs_them(
    guarded: ServerProcess, tokens: dict[str, str]
) -> None:
    owner, other = browser(guarded, tokens["submit"]), browser(guarded, tokens["other"])
    guarded.cli(
        *("--token", tokens["submit"], "cron", "create", "console-nightly", "--schedule", "0 3 * * *"),
        *("--tz", "Europe/Madrid", "-p", "sim", "-c", "true"),
        check=True,
    )
    page = owner.get(f"{guarded.http_url}/cron").text
    row = re.search(r'<tr data-cron="console-nightly">(.*?)</tr>', page, re.S)
    assert row is not None
    assert "At 03:00 every day (Europe/Madrid)" in row.group(1) and "submit-person" in row.group(1)
    assert 'href="/jobs?label=hodei.io/cron%3Dconsole-nightly"' in row.group(1)
    assert "/cron/console-nightly/pause" in row.group(1)
    assert "/cron/console-nightly/pause" not in other.get(f"{guarded.http_url}/cron").text  # not theirs
    assert other.post(f"{guarded.http_url}/cron/console-nightly/pause", allow_redirects=False).status_code == 403

    paused = owner.post(f"{guarded.http_url}/cron/console-nightly/pause", allow_redirects=False)
    assert paused.status_code == 303 and paused.headers["Location"] == "/cron"
    assert "PAUSED" in owner.get(f"{guarded.http_url}/cron").text
    (key,) = re.findall(r'name="key" value="([0-9a-f-]{36})"', row.group(1))
    ran, again = (
        owner.post(f"{guarded.http_url}/cron/console-nightly/run", data={"key": key}, allow_redirects=False)
        for _ in range(2)
    )
    job_id = ran.headers["Location"].removeprefix("/jobs/")
    assert ran.status_code == 303 and len(job_id) == 36
    assert again.headers["Location"] == ran.headers["Location"]  # Run now pressed twice: one job
    wait_settled(guarded.database_url, job_id)
    job_page = owner.get(f"{guarded.http_url}/jobs/{job_id}").text
    assert "hodei.io/cron=console-nightly" in job_page
    its_jobs = owner.get(f"{guarded.http_url}/jobs?label=hodei.io/cron%3Dconsole-nightly").text
    assert job_id in its_jobs
    owner.post(f"{guarded.http_url}/cron/console-nightly/resume")
    assert "PAUSED" not in owner.get(f"{guarded.http_url}/cron").text

    # Backfill (`cron backfill`): the last two days' times, then to its jobs; a bad box, or
    # another's cron job, writes nothing.
    assert 'action="/cron/console-nightly/backfill"' in row.group(1)
    filled = owner.post(
        f"{guarded.http_url}/cron/console-nightly/backfill", data={"since": "2d", "until": ""}, allow_redirects=False
    )
    assert filled.status_code == 303 and filled.headers["Location"] == "/jobs?label=hodei.io/cron%3Dconsole-nightly"
    backfilled = query(
        guarded.database_url,
        "SELECT spec -> 'env' ->> 'HODEI_CRON_TIME' FROM jobs WHERE spec -> 'labels' ->> 'hodei.io/cron' = %s"
        " AND spec -> 'env' ? 'HODEI_CRON_TIME' AND actor = 'submit-person' AND id <> %s",
        ("console-nightly", job_id),
    )
    assert len(set(backfilled)) == 2, backfilled  # 03:00 in Madrid, each of the last two days
    bad = owner.post(f"{guarded.http_url}/cron/console-nightly/backfill", data={"since": "soon"})
    assert bad.status_code == 400 and "since takes a duration" in bad.text
    theirs = other.post(
        f"{guarded.http_url}/cron/console-nightly/backfill", data={"since": "9d"}, allow_redirects=False
    )
    assert theirs.status_code == 403
    assert len(query(guarded.database_url, "SELECT 1 FROM jobs WHERE spec -> 'labels' ->> 'hodei.io/cron' = %s",
                     ("console-nightly",))) == 3  # fmt: skip
    guarded.cli("--token", tokens["submit"], "cron", "delete", "console-nightly", check=True)
    assert "No cron jobs" in owner.get(f"{guarded.http_url}/cron").text


def test_a_pipelines_cron_job_says_its_jobs_and_its_run_goes_to_its_page(
    guarded: ServerProcess, tokens: dict[str, str]
) -> None:
    owner = browser(guarded, tokens["submit"])
    pipeline = guarded.log_dir / "console-pipeline.yaml"
    pipeline.write_text(
        "name: build\nprovider: sim\ncommand: 'true'\n---\n"
        "name: test\nprovider: sim\ncommand: 'true'\nafter: {build: ok}\n"
    )
    create = ("cron", "create", "console-release", "--schedule", "@daily", "--file", str(pipeline))
    guarded.cli("--token", tokens["submit"], *create, check=True)
    row = re.search(r'<tr data-cron="console-release">(.*?)</tr>', owner.get(f"{guarded.http_url}/cron").text, re.S)
    assert row is not None and 'title="build, test">2 jobs a run</span>' in row.group(1)
    (key,) = re.findall(r'name="key" value="([0-9a-f-]{36})"', row.group(1))
    ran, again = (
        owner.post(f"{guarded.http_url}/cron/console-release/run", data={"key": key}, allow_redirects=False)
        for _ in range(2)
    )
    assert ran.status_code == 303 and again.headers["Location"] == ran.headers["Location"]
    run_id = ran.headers["Location"].removeprefix("/workflows/")
    assert len(run_id) == 36
    run_ids = [row[0] for row in query(guarded.database_url, WORKFLOW_JOBS, (run_id,))]
    assert len(run_ids) == 2 and str(run_ids[0]) == run_id
    for job_id in run_ids:
        wait_settled(guarded.database_url, str(job_id))
    shown = owner.get(f"{guarded.http_url}{ran.headers['Location']}").text
    assert '<span class="state succeeded" id="workflow-state">SUCCEEDED</span>' in shown
    assert all(f'<a href="/jobs/{job_id}">' in shown for job_id in run_ids)
    row = re.search(r'<tr data-cron="console-release">(.*?)</tr>', owner.get(f"{guarded.http_url}/cron").text, re.S)
    assert row is not None
    assert f'<a href="/workflows/{run_id}">{run_id[:8]}</a>' in row.group(1)
    assert '<span class="state succeeded">SUCCEEDED</span>' in row.group(1)
    guarded.cli("--token", tokens["submit"], "cron", "delete", "console-release", check=True)


WORKFLOW_JOBS = "SELECT id FROM jobs WHERE spec -> 'labels' ->> 'hodei.io/workflow' = %s ORDER BY created_at"


def test_a_pipelines_page_shows_its_stages_and_retries_or_cancels_it(
    guarded: ServerProcess, tokens: dict[str, str]
) -> None:
    """`/workflows/ID` (GitLab's pipeline graph, `job workflow`): its jobs by stage, a branch
    not taken said skipped; Retry runs again those that did not succeed, once however often
    it is posted; Cancel cancels those not ended; a `read` token sees neither and is refused
    both."""
    owner, reader = browser(guarded, tokens["submit"]), browser(guarded, tokens["read"])
    pipeline = guarded.log_dir / "console-failing.yaml"
    pipeline.write_text(
        "name: build\nprovider: sim\ncommand: 'false'\nenv: {HODEI_SIM_EXIT_CODE: '2'}\n---\n"
        "name: test\nprovider: sim\ncommand: 'true'\nafter: {build: ok}\n---\n"
        "name: report\nprovider: sim\ncommand: 'true'\nafter: {build: notok}\n"
    )
    submitted = guarded.cli("--token", tokens["submit"], "job", "run", "--file", str(pipeline), "--wait")
    build, test, report = submitted.stdout.split()
    page = owner.get(f"{guarded.http_url}/workflows/{report}").text  # named by any of its jobs
    assert '<span class="state failed" id="workflow-state">FAILED</span>' in page
    stages = re.findall(r'<section class="stage" data-stage="(\d)">(.*?)</section>', page, re.S)
    assert [(stage, re.findall(r'data-name="(\w+)"', jobs)) for stage, jobs in stages] == [
        ("1", ["build"]),
        ("2", ["test", "report"]),
    ]
    assert '<span class="state cancelled skipped">CANCELLED (skipped)</span>' in stages[1][1]
    assert "after build:ok" in stages[1][1] and "exit 2" in stages[0][1]
    job_page = owner.get(f"{guarded.http_url}/jobs/{test}").text
    assert f'<td id="workflow"><a href="/workflows/{build}"' in job_page
    listed = owner.get(f"{guarded.http_url}/jobs?label={quote(f'hodei.io/workflow={build}')}").text
    assert listed.count(f'<a class="note" href="/workflows/{build}" title="its pipeline, by stage">pipeline</a>') == 3
    read_page = reader.get(f"{guarded.http_url}/workflows/{build}").text
    assert "retry-workflow" not in read_page and '<span class="state failed" id="workflow-state">' in read_page
    forged = reader.post(f"{guarded.http_url}/workflows/{build}/retry", data={"key": "k"}, allow_redirects=False)
    assert forged.status_code == 403

    (key,) = re.findall(r'name="key" value="([0-9a-f-]{36})"', page)
    assert 'id="retry-workflow" title="its 2 jobs that did not succeed' in page
    posted = [
        owner.post(f"{guarded.http_url}/workflows/{build}/retry", data={"key": key}, allow_redirects=False)
        for _ in range(2)
    ]
    assert [answer.status_code for answer in posted] == [303, 303]
    assert posted[0].headers["Location"] == f"/workflows/{build}"
    copies = query(guarded.database_url, "SELECT id::text, retry_of::text FROM jobs WHERE retry_of = ANY(%s::uuid[])",
                   ([build, test],))  # fmt: skip
    assert sorted(original for _, original in copies) == sorted([build, test])  # one copy each
    for copy, _ in copies:
        wait_settled(guarded.database_url, copy)
    again = owner.get(f"{guarded.http_url}/workflows/{build}").text
    assert again.count("try 2") == 2 and 'id="retry-workflow"' in again  # the copied build failed again

    held = guarded.cli("--token", tokens["submit"], "job", "run", "--file", str(pipeline), "--hold", check=True)
    first = held.stdout.split()[0]
    assert 'id="cancel-workflow"' not in reader.get(f"{guarded.http_url}/workflows/{first}").text
    assert reader.post(f"{guarded.http_url}/workflows/{first}/cancel", allow_redirects=False).status_code == 403
    cancelled = owner.post(f"{guarded.http_url}/workflows/{first}/cancel", allow_redirects=False)
    assert cancelled.status_code == 303
    states = query(guarded.database_url, "SELECT DISTINCT state FROM jobs WHERE id = ANY(%s::uuid[])",
                   (held.stdout.split(),))  # fmt: skip
    assert states == [("CANCELLED",)]
    assert (
        '<span class="state cancelled" id="workflow-state">CANCELLED</span>'
        in owner.get(f"{guarded.http_url}/workflows/{first}").text
    )
    lone = run(guarded)
    assert owner.get(f"{guarded.http_url}/workflows/{lone}").status_code == 400


def test_the_queue_page_shows_each_waiting_job_and_why(guarded: ServerProcess, tokens: dict[str, str]) -> None:
    later = run(guarded, "--begin", "1h")
    reader = browser(guarded, tokens["read"])

    def shown() -> str | None:
        page = reader.get(f"{guarded.http_url}/queue").text
        return page if f'data-job="{later}"' in page else None

    page = eventually(shown, what="the waiting job on the queue page")
    row = re.search(rf'<tr data-job="{later}">(.*?)</tr>', page, re.S)
    assert row is not None
    assert f'href="/jobs/{later}"' in row.group(1) and "(--begin)" in row.group(1) and "<td>-</td>" in row.group(1)
    assert re.search(r'<a href="/jobs\?state=PENDING">PENDING</a> [1-9]', page)
    guarded.cli("job", "cancel", later, check=True)
    wait_settled(guarded.database_url, later)
    assert f'data-job="{later}"' not in reader.get(f"{guarded.http_url}/queue").text

    # A pool with no room: its job waits, and the page lists the pool.
    guarded.cli("pool", "set", "gpu", "0", check=True)
    pooled = run(guarded, "--pool", "gpu")

    def pool_shown() -> str | None:
        page = reader.get(f"{guarded.http_url}/queue").text
        return page if "its pool gpu" in page else None

    page = eventually(pool_shown, what="the pool's job on the queue page")
    row = re.search(rf'<tr data-job="{pooled}">(.*?)</tr>', page, re.S)
    assert row is not None and "its pool gpu runs at most 0 jobs at once: 0 running" in row.group(1)
    assert '<tr data-pool="gpu"><td>gpu</td><td>0</td><td>0</td><td>1</td></tr>' in page
    assert '<td id="pool"><a href="/queue#pools">gpu</a></td>' in reader.get(f"{guarded.http_url}/jobs/{pooled}").text
    guarded.cli("job", "cancel", pooled, check=True)
    guarded.cli("pool", "delete", "gpu", check=True)


def test_a_jobs_page_says_what_it_was_given_to_run_with(
    guarded: ServerProcess, tokens: dict[str, str], tmp_path: Path
) -> None:
    """Its limits, as `job get` says them (the page showed none); a job given none has no such row."""
    reader = browser(guarded, tokens["read"])
    given = tmp_path / "given.txt"
    given.write_text("a file for the job")
    limited = run(
        guarded, "--cpu", "0.5", "--memory", "64Mi", "--disk", "2G", "--retry", "2", "--retry-on", "75,!2",
        "--retry-backoff", "10s", "--retry-backoff-max", "6m", "--input", str(given),
    )  # fmt: skip
    shown = reader.get(f"{guarded.http_url}/jobs/{limited}").text
    assert '<td id="resources">0.5 CPU, 64.0 MiB memory, 1.9 GiB disk</td>' in shown
    assert 'retries 2 (<span id="retry-on">--retry-on 75,!2</span>)' in shown
    assert '<span id="retry-backoff">backoff 10.0 s doubling up to 6.0 min</span>' in shown
    sha256 = json.loads(guarded.cli("-o", "json", "job", "get", limited, check=True).stdout)["spec"]["input_sha256"]
    row = rf'<td id="input">[\d.]+ (bytes|KiB) archive of files \(--input\), sha256 <code>{sha256[:12]}…'
    assert re.search(row, shown)
    plain = reader.get(f"{guarded.http_url}/jobs/{run(guarded)}").text
    for row in ("resources", "nodes", "service-account", "retry-on", "retry-backoff", "input", "api-token"):
        assert f'id="{row}"' not in plain
    # Its nodes and service account (Kubernetes' part; this server has none, so it fails to
    # start, and shows them all the same).
    placed = guarded.cli(
        "job",
        "run",
        "-c",
        "true",
        "--node-selector",
        "disktype=ssd,zone=a",
        "--toleration",
        "gpu:NoSchedule",
        "--service-account",
        "s3-reader",
        check=True,
    ).stdout.strip()
    shown = reader.get(f"{guarded.http_url}/jobs/{placed}").text
    assert (
        '<td id="nodes"><code>disktype=ssd</code> <code>zone=a</code> tolerating <code>gpu:NoSchedule</code> </td>'
        in shown
    )
    assert '<td id="service-account"><code>s3-reader</code></td>' in shown


def test_a_queued_jobs_owner_holds_and_releases_it_from_its_page(
    guarded: ServerProcess, tokens: dict[str, str]
) -> None:
    """Hold and Release for whoever may (its submitter, operators); the queue page says who
    held it. Others see neither button, and their forged post is refused."""
    submitted = guarded.cli(
        "--token", tokens["submit"], "job", "run", "-p", "sim", "-c", "true", "--begin", "1h", check=True
    )
    job_id = submitted.stdout.strip()
    page = f"{guarded.http_url}/jobs/{job_id}"
    other = browser(guarded, tokens["other"])
    assert 'id="hold"' not in other.get(page).text
    assert other.post(f"{page}/hold", allow_redirects=False).status_code == 403
    owner = browser(guarded, tokens["submit"])
    assert 'id="hold"' in owner.get(page).text and 'id="release"' not in owner.get(page).text
    held = owner.post(f"{page}/hold", allow_redirects=False)
    assert held.status_code == 303 and held.headers["Location"] == f"/jobs/{job_id}"
    shown = owner.get(page).text
    assert 'id="release"' in shown and re.search(r'<td id="held">by submit-person; it waits out of its line', shown)
    listed = owner.get(f"{guarded.http_url}/jobs?state=PENDING").text
    row = re.search(rf'<tr data-job="{job_id}"[^>]*>(.*?)</tr>', listed, re.S)
    assert row is not None
    assert '<span class="note" title="held by submit-person: job release">held</span>' in row.group(1)
    queue = browser(guarded, tokens["read"]).get(f"{guarded.http_url}/queue").text
    row = re.search(rf'<tr data-job="{job_id}">(.*?)</tr>', queue, re.S)
    assert row is not None and "held by submit-person (job release)" in row.group(1)
    assert other.post(f"{page}/release", allow_redirects=False).status_code == 403
    assert owner.post(f"{page}/release", allow_redirects=False).status_code == 303
    assert 'id="held"' not in owner.get(page).text
    assert query(
        guarded.database_url,
        "SELECT event_type, actor FROM domain_events WHERE aggregate_id = %s "
        "AND event_type IN ('JobHeld', 'JobReleased') ORDER BY position",
        (job_id,),
    ) == [("JobHeld", "submit-person"), ("JobReleased", "submit-person")]
    # Another writer that always came first: 409, the page's words say to press it again.
    with every_race_lost(guarded.database_url, job_id, "NEW.held_by IS NOT NULL"):
        lost = owner.post(f"{page}/hold", allow_redirects=False)
    assert lost.status_code == 409 and "other writers changed it first" in lost.text, lost.text
    assert 'id="held"' not in owner.get(page).text
    guarded.cli("job", "cancel", job_id, check=True)


def test_a_jobs_page_lists_its_artifacts_and_a_reader_downloads_them(fresh_database_url: str, tmp_path: Path) -> None:
    operate = create_token(fresh_database_url, "operator", "operate")
    read = create_token(fresh_database_url, "reader", "read")
    with ServerProcess(fresh_database_url, tmp_path, {}, token=operate, http=True) as server:
        command = "mkdir -p 'my out' && printf 'a,b\\n' > 'my out/table 1.csv'"
        ran = server.cli("job", "run", "-p", "local", "-c", command, "--artifact", "my out", "--wait", check=True)
        job_id = ran.stdout.strip()
        wait_settled(server.database_url, job_id)
        reader = browser(server, read)
        page = reader.get(f"{server.http_url}/jobs/{job_id}").text
        link = f"/jobs/{job_id}/artifacts/1/my%20out/table%201.csv"
        assert f'<a href="{link}" download>my out/table 1.csv</a>' in page
        assert '<td title="4 bytes">4 bytes</td>' in page
        got = reader.get(server.http_url + link)
        assert got.status_code == 200 and got.content == b"a,b\n"
        assert got.headers["Content-Disposition"] == "attachment; filename*=UTF-8''table%201.csv"
        assert reader.get(f"{server.http_url}/jobs/{job_id}/artifacts/1/nothing.csv").status_code == 404
        assert reader.get(f"{server.http_url}/jobs/{job_id}/artifacts/2/my%20out/table%201.csv").status_code == 404
        anonymous = browser(server).get(server.http_url + link, allow_redirects=False)
        assert anonymous.status_code == 303 and anonymous.headers["Location"].startswith("/login")


def test_an_operator_sizes_pools_and_an_owner_updates_its_waiting_job_from_the_console(
    guarded: ServerProcess, tokens: dict[str, str]
) -> None:
    """`pool set|delete` and `job update --priority` with their rules: pools are the operate
    role's; a submitter lowers its own job's priority, raising it is the operate role's."""
    operator, reader = browser(guarded, tokens["operate"]), browser(guarded, tokens["read"])
    assert 'id="new-pool"' in operator.get(f"{guarded.http_url}/queue").text
    assert 'id="new-pool"' not in reader.get(f"{guarded.http_url}/queue").text
    assert reader.post(f"{guarded.http_url}/pools", data={"name": "console-db", "size": "2"}).status_code == 403
    made = operator.post(f"{guarded.http_url}/pools", data={"name": "console-db", "size": "2"}, allow_redirects=False)
    assert made.status_code == 303 and made.headers["Location"] == "/queue#pools"
    assert operator.post(f"{guarded.http_url}/pools", data={"name": "console-db", "size": "3"}).ok
    bad = operator.post(f"{guarded.http_url}/pools", data={"name": "console-db", "size": "three"})
    assert bad.status_code == 400 and "size must be a whole number, got `three`" in bad.text
    shown = operator.get(f"{guarded.http_url}/queue").text
    row = re.search(r'<tr data-pool="console-db"><td>console-db</td><td>(\d+)</td>', shown)
    assert row is not None and row.group(1) == "3"
    assert operator.post(f"{guarded.http_url}/pools/console-db/delete").ok
    assert 'data-pool="console-db"' not in operator.get(f"{guarded.http_url}/queue").text

    job_id = guarded.cli(
        "--token", tokens["submit"], "job", "run", "-p", "sim", "-c", "true", "--begin", "1h", check=True
    ).stdout.strip()
    page = f"{guarded.http_url}/jobs/{job_id}"
    owner = browser(guarded, tokens["submit"])
    shown = owner.get(page).text
    assert 'id="update"' in shown and 'name="was_timeout" value="600"' in shown
    assert 'id="update"' not in browser(guarded, tokens["other"]).get(page).text
    was = {"was_priority": "0", "was_timeout": "600", "was_cpu": "", "was_memory": ""}
    unchanged = {"priority": "0", "timeout": "600", "cpu": "", "memory": ""}

    def update(who: requests.Session, **changed: str) -> requests.Response:
        return who.post(f"{page}/update", data={**was, **unchanged, **changed}, allow_redirects=False)

    assert update(owner, priority="-5").status_code == 303
    was["was_priority"] = unchanged["priority"] = "-5"
    assert update(owner, priority="10").status_code == 403
    assert update(operator, priority="10").status_code == 303
    assert query(guarded.database_url, "SELECT priority FROM jobs WHERE id = %s", (job_id,)) == [(10,)]
    was["was_priority"] = unchanged["priority"] = "10"
    # Only what the form changed is sent: a priority it shows as it was is not raised again.
    assert update(owner, timeout="2h", cpu="0.5", memory="64Mi").status_code == 303
    limits = "SELECT spec -> 'timeout_seconds', spec -> 'resources', priority FROM jobs WHERE id = %s"
    assert query(guarded.database_url, limits, (job_id,)) == [
        (7200, {"cpu_cores": 0.5, "memory_bytes": 64 * 2**20, "disk_bytes": 0}, 10)
    ]
    for typed, said in (({"timeout": "soon"}, "timeout takes seconds"), ({"cpu": "lots"}, "cpu must be a number")):
        refused = update(owner, **typed)
        assert refused.status_code == 400 and said in refused.text, refused.text
    guarded.cli("job", "cancel", job_id, check=True)


def test_an_operator_limits_a_submitter_from_the_console_and_its_job_waits_saying_why(
    guarded: ServerProcess, tokens: dict[str, str]
) -> None:
    """`limit set|delete` with their rules (the operate role's; a reader sees them): a limit
    of 0 keeps the submitter's job waiting, the queue says why, deleting it lets it run."""
    operator, reader = browser(guarded, tokens["operate"]), browser(guarded, tokens["read"])
    assert 'id="new-limit"' in operator.get(f"{guarded.http_url}/queue").text
    assert 'id="new-limit"' not in reader.get(f"{guarded.http_url}/queue").text
    limit = {"submitter": "other-submitter", "jobs": "0"}
    assert reader.post(f"{guarded.http_url}/limits", data=limit).status_code == 403
    made = operator.post(f"{guarded.http_url}/limits", data=limit, allow_redirects=False)
    assert made.status_code == 303 and made.headers["Location"] == "/queue#submitters"
    bad = operator.post(f"{guarded.http_url}/limits", data={"submitter": "other-submitter", "jobs": "few"})
    assert bad.status_code == 400 and "the limit of jobs at once takes a number, none (no limit) or *" in bad.text
    bad = operator.post(f"{guarded.http_url}/limits", data={"submitter": "other-submitter", "submitted": "-1"})
    assert bad.status_code == 400 and "the most jobs not ended takes a number" in bad.text
    # A field left empty stays as it was: the limit at once is still 0.
    kept = {"submitter": "other-submitter", "jobs": "", "submitted": "1"}
    assert operator.post(f"{guarded.http_url}/limits", data=kept, allow_redirects=False).status_code == 303
    job_id = guarded.cli("--token", tokens["other"], "job", "run", "-p", "sim", "-c", "true", check=True).stdout.strip()

    def waiting() -> str | None:
        shown = reader.get(f"{guarded.http_url}/queue").text
        row = re.search(rf'<tr data-job="{job_id}">.*?</tr>', shown, re.S)
        return row.group(0) if row and "its submitter other-submitter runs at most 0 jobs" in row.group(0) else None

    eventually(waiting, what="the queue page to say the job waits for its submitter's limit")
    shown = reader.get(f"{guarded.http_url}/queue").text
    link = '<a href="/jobs?submitter=other-submitter">other-submitter</a>'
    assert f'<tr data-submitter="other-submitter"><td>{link}</td><td>0</td><td>1</td><td>0</td><td>1</td></tr>' in shown
    # Its one job not ended is its most: another is refused, the form shown again as typed.
    typed = {"command": "echo later", "provider": "sim", "timeout": "60", "key": "room-made-later"}
    full = browser(guarded, tokens["other"]).post(f"{guarded.http_url}/jobs", data=typed, allow_redirects=False)
    assert full.status_code == 429 and "submitter other-submitter has 1 jobs not ended, 1 at most" in full.text
    assert "echo later" in full.text
    listed = reader.get(f"{guarded.http_url}/jobs?submitter=other-submitter").text
    assert f'data-job="{job_id}"' in listed
    assert f'data-job="{job_id}"' not in reader.get(f"{guarded.http_url}/jobs?submitter=submit-person").text
    assert operator.post(f"{guarded.http_url}/limits/other-submitter/delete").ok
    wait_settled(guarded.database_url, job_id)
    assert query(guarded.database_url, "SELECT state FROM jobs WHERE id = %s", (job_id,)) == [("SUCCEEDED",)]
    assert 'data-submitter="other-submitter"' not in operator.get(f"{guarded.http_url}/queue").text


def test_metrics_are_public_only_when_configured(tokens: dict[str, str], tmp_path: Path) -> None:
    env = {"HODEI_LOCAL_ENABLED": "0", "HODEI_SIM_ENABLED": "1", "HODEI_METRICS_PUBLIC": "1"}
    with ServerProcess(tokens["url"], tmp_path, env, token=tokens["read"], http=True) as server:
        assert requests.get(f"{server.http_url}/metrics").status_code == 200
        assert requests.get(f"{server.http_url}/jobs", allow_redirects=False).status_code == 303


def test_metrics_count_every_job_by_state_with_a_sample_each(fresh_database_url: str, tmp_path: Path) -> None:
    env = {"HODEI_LOCAL_ENABLED": "0", "HODEI_SIM_ENABLED": "1"}
    with ServerProcess(fresh_database_url, tmp_path, env, http=True) as server:
        ok = [run(server, "--env", "HODEI_SIM_LINES=3") for _ in range(4)]
        failed = [run(server, "--env", "HODEI_SIM_EXIT_CODE=2") for _ in range(2)]
        cron = ("cron", "create", "--schedule", "@hourly", "-p", "sim", "-c", "true", "hourly")
        server.cli(*cron, "--env", "HODEI_SIM_EXIT_CODE=3", check=True)
        failed.append(server.cli("cron", "run", "hourly", check=True).stdout.strip())
        server.cli(*cron[:-1], "daily", check=True)
        server.cli("cron", "pause", "daily", check=True)
        for job_id in ok + failed:
            wait_settled(fresh_database_url, job_id)
        scraped = requests.get(f"{server.http_url}/metrics")
        assert scraped.ok and scraped.headers["Content-Type"].startswith("text/plain")
        found = samples(scraped.text)
        ours = server.cli("--version", check=True).stdout.split()[1]  # the CLI and server ship together
        assert found["hodei_build_info", (("version", ours),)] == 1
        assert found["hodei_jobs_finished_total", (("state", "SUCCEEDED"),)] == 4
        assert found["hodei_jobs_finished_total", (("state", "FAILED"),)] == 3
        for histogram in ("hodei_job_queued_seconds", "hodei_job_run_seconds", "hodei_job_seconds"):
            assert found[f"{histogram}_count", ()] == 7, histogram
            assert found[f"{histogram}_bucket", (("le", "+Inf"),)] == 7, histogram
        step = (
            "hodei_saga_step_seconds_count",
            (("outcome", "completed"), ("saga_type", "PROVISIONING"), ("step", "create_worker")),
        )
        assert found[step] == 7
        # A cron job's gauges, as kube-state-metrics has them for a CronJob.
        assert found["hodei_cron_job_last_run_state", (("cron", "hourly"), ("state", "FAILED"))] == 1
        assert found["hodei_cron_job_last_run_timestamp_seconds", (("cron", "hourly"),)] > 0
        assert ("hodei_cron_job_last_run_timestamp_seconds", (("cron", "daily"),)) not in found
        assert found["hodei_cron_job_next_run_timestamp_seconds", (("cron", "hourly"),)] % 3600 == 0
        assert ("hodei_cron_job_next_run_timestamp_seconds", (("cron", "daily"),)) not in found
        assert (
            found["hodei_cron_job_paused", (("cron", "hourly"),)],
            found["hodei_cron_job_paused", (("cron", "daily"),)],
        ) == (0, 1)
        assert found["hodei_log_bytes_total", ()] >= 4 * 3
        assert found["hodei_provider_healthy", (("provider", "sim"),)] == 1
        # No server runs kubernetes here: never probed, it has no sample to alert on.
        assert ("hodei_provider_healthy", (("provider", "kubernetes"),)) not in found
        # Every metric deploy/prometheus-rules.yml alerts on and deploy/grafana-dashboard.json
        # charts is one this server exports.
        exported = set(re.findall(r"^# TYPE (\w+) ", scraped.text, re.MULTILINE))
        read = alerted_metrics() | charted_metrics()
        assert read <= exported, read - exported
        assert found["hodei_outbox_dead_letters", ()] == 0
        assert ("hodei_workers_connected", ()) in found and ("hodei_relay_lag_seconds_count", ()) in found
        assert found["hodei_database_up", ()] == 1


def test_metrics_say_how_long_a_providers_line_has_not_moved(fresh_database_url: str, tmp_path: Path) -> None:
    """A job waiting for the provider's one slot is in its line and ages there; a held job
    and one waiting for its --begin are not (they wait for someone, not for capacity)."""
    env = {"HODEI_LOCAL_ENABLED": "0", "HODEI_SIM_ENABLED": "1", "HODEI_SIM_MAX_WORKERS": "1"}
    with ServerProcess(fresh_database_url, tmp_path, env, http=True) as server:

        def line() -> tuple[float, float]:
            found = samples(requests.get(f"{server.http_url}/metrics", timeout=10).text)
            sim = (("provider", "sim"),)
            return found["hodei_provider_jobs_waiting", sim], found["hodei_provider_oldest_waiting_seconds", sim]

        assert line() == (0, 0)
        running = run(server, "--env", "HODEI_SIM_SECONDS=600")
        wait_running(fresh_database_url, running)
        run(server, "--hold")
        run(server, "--begin", "1h")
        assert line() == (0, 0)
        waiting = run(server)
        time.sleep(1.5)
        jobs, oldest = line()
        assert jobs == 1 and 1.5 <= oldest < 60, (jobs, oldest)
        server.cli("job", "cancel", running, check=True)
        wait_settled(fresh_database_url, waiting)
        assert line() == (0, 0)


def test_the_job_list_filters_and_the_timeline_marks_the_failing_step(fresh_database_url: str, tmp_path: Path) -> None:
    env = {"HODEI_LOCAL_ENABLED": "0", "HODEI_SIM_ENABLED": "1", "HODEI_SIM_MAX_WORKERS": "1"}
    with ServerProcess(fresh_database_url, tmp_path, env, http=True) as server:
        holder = run(server, "--name", "slot-holder", "--label", "team=blue", "--env", "HODEI_SIM_SECONDS=60")
        url = fresh_database_url
        eventually(lambda: query(url, "SELECT state FROM jobs WHERE id = %s", (holder,)) == [("RUNNING",)], 30)
        starved = run(server, "--name", "starved", "--label", "team=red", "--queue-timeout", "1")
        wait_settled(url, starved, 30)
        listed = browser(server)

        def names(query_string: str) -> list[str]:
            page = listed.get(f"{server.http_url}/jobs/rows?{query_string}")
            assert page.ok, page.text
            return re.findall(r"<td>(slot-holder|starved)</td>", page.text)

        assert sorted(names("")) == ["slot-holder", "starved"]
        assert names("label=team%3Dred") == ["starved"]
        assert names("name=SLOT") == ["slot-holder"]
        assert names("state=failed") == ["starved"]
        assert names("provider=sim&state=RUNNING") == ["slot-holder"]
        assert names("provider=docker") == []
        assert names("label=team%21%3Dred") == ["slot-holder"]  # kubectl's terms, as `job list -l`
        assert names("label=%21team") == [] and sorted(names("label=team")) == ["slot-holder", "starved"]
        assert listed.get(f"{server.http_url}/jobs?label=%3Dblue").status_code == 400
        assert sorted(names("since=1h")) == ["slot-holder", "starved"] and names("since=2099-01-01") == []
        refused = listed.get(f"{server.http_url}/jobs?since=soon")
        assert refused.status_code == 400 and "since takes a duration such as 10m or 2h" in refused.text
        refused = listed.get(f"{server.http_url}/jobs?since=99999999999999999999")  # a date's overflow: 500
        assert (
            refused.status_code == 400
            and "since takes a duration that stays within the years 1 to 9999" in refused.text
        )
        assert listed.get(f"{server.http_url}/jobs?provider=nomad").status_code == 400
        # A page past the API's offset (an int32) was an internal error (500).
        past = ("/jobs?page=999999999", "/jobs/rows?page=99999999999999999999")
        for wrong in ("/jobs?page=abc", "/jobs?page=0", f"/jobs/{holder}/logs?from=two", *past):
            refused = listed.get(server.http_url + wrong)
            assert refused.status_code == 400 and "must be a whole number from 1" in refused.text, wrong
        refused = listed.get(f"{server.http_url}/jobs/{holder}/artifacts/{2**31}/x")  # past an int32: 500
        assert refused.status_code == 400 and "attempt must be a whole number" in refused.text
        for wrong, field in (("name=a%00b", "name"), ("label=team%3Da%00b", "label_selector[0]")):
            refused = listed.get(f"{server.http_url}/jobs?{wrong}")  # PostgreSQL's refusal was a 500
            assert refused.status_code == 400 and f"{field} must not contain NUL" in refused.text, wrong

        page = listed.get(f"{server.http_url}/jobs/{starved}").text
        assert '<a class="label" href="/jobs?label=team%3Dred"' in page  # its label lists its like
        steps = re.findall(
            r'<g class="step([^"]*)" data-step="([^"]+)" data-state="([^"]+)" data-duration="([^"]+)"', page
        )
        assert ("wait_for_slot", "FAILED") in [(name, state) for _, name, state, _ in steps]
        assert [name for marks, name, _, _ in steps if "failing" in marks] == ["wait_for_slot"]
        assert all(float(duration) >= 0 for *_, duration in steps)
        server.cli("job", "cancel", holder, check=True)


def test_a_long_logs_page_shows_its_last_lines(fresh_database_url: str, tmp_path: Path) -> None:
    """What one debugs is the end of a log: a page shows the last 10,000 lines and says so."""
    env = {"HODEI_LOCAL_ENABLED": "0", "HODEI_SIM_ENABLED": "1"}
    with ServerProcess(fresh_database_url, tmp_path, env, http=True) as server:
        long = run(server, "--env", "HODEI_SIM_LINES=10050")
        short = run(server, "--env", "HODEI_SIM_LINES=3", "--after", f"{long}:any")
        for job_id in (long, short):
            wait_settled(fresh_database_url, job_id)
        page = browser(server).get(f"{server.http_url}/jobs/{long}").text
        shown = re.findall(r'<span class="stdout">sim line (\d+)</span>', page)
        assert shown == [str(n) for n in range(51, 10051)]
        assert "The last lines are shown, from line 51;" in page
        page = browser(server).get(f"{server.http_url}/jobs/{short}").text
        assert re.findall(r'<span class="stdout">sim line (\d+)</span>', page) == ["1", "2", "3"]
        assert 'id="log-cut"' not in page
        # It ran after the long one (--after): its page links to it.
        assert f'<td id="after"><a href="/jobs/{long}">{long[:8]}</a> once it has ended </td>' in page


def test_under_tls_the_console_answers_https_only(fresh_database_url: str, tmp_path: Path) -> None:
    """The gRPC port's TLS rules hold for HTTP: its certificate, and no plain text."""
    from e2e.test_tls import tls_env
    from hodei.testing import make_pki

    pki = make_pki(tmp_path / "pki")
    with ServerProcess(fresh_database_url, tmp_path, tls_env(pki, mutual=False), tls=pki, http=True) as server:
        assert server.http_url.startswith("https://")
        assert requests.get(f"{server.http_url}/healthz", verify=str(pki.ca)).text == "ok\n"
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{server.http_url}/healthz")  # a certificate nobody vouched for
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://127.0.0.1:{server.http_port}/healthz", timeout=5)
        jobs = requests.get(f"{server.http_url}/jobs", verify=str(pki.ca))
        assert jobs.ok and "authentication off" in jobs.text


def test_a_dead_letter_is_redriven_from_its_page(fresh_database_url: str, tmp_path: Path) -> None:
    url = fresh_database_url
    refuse_new_sagas(url)
    env = {"HODEI_RELAY_MAX_ATTEMPTS": "2", "HODEI_LOCAL_ENABLED": "0", "HODEI_SIM_ENABLED": "1"}
    with ServerProcess(url, tmp_path, env, http=True) as server:
        job_id = run(server)
        page = browser(server)

        def listed() -> list[str]:
            return re.findall(r'name="id" value="([0-9a-f-]{36})"', page.get(f"{server.http_url}/dead-letters").text)

        (letter,) = eventually(listed, 60, what="the JobCreated delivery to give up")
        assert "sagas are refused by the test" in page.get(f"{server.http_url}/dead-letters").text
        allow_new_sagas(url)
        redriven = page.post(f"{server.http_url}/dead-letters/redrive", data={"id": letter}, allow_redirects=False)
        assert redriven.status_code == 303
        wait_settled(url, job_id)
        assert query(url, "SELECT state FROM jobs WHERE id = %s", (job_id,)) == [("SUCCEEDED",)]
        assert listed() == []
        nothing = page.post(f"{server.http_url}/dead-letters/redrive", data={})
        assert nothing.status_code == 400 and "choose the dead letters to redrive" in nothing.text


def test_a_stopping_server_ends_the_consoles_log_streams_and_stops_at_once(
    fresh_database_url: str, tmp_path: Path
) -> None:
    """A job's page open in a browser (its log's server-sent events) held the console's
    stop until the job ended, or aiohttp's minute: such a server stopped only once killed.
    Its stream now ends with the stop (the page reloads) and the job runs on. (The page
    says what the running job uses now.)"""
    with ServerProcess(fresh_database_url, tmp_path, http=True) as server:
        command = "echo started; sleep 120"
        job_id = server.cli("job", "run", "--provider", "local", "--command", command, check=True).stdout.strip()
        wait_running(fresh_database_url, job_id)

        def using() -> str | None:  # what its worker's heartbeats say it uses (`job top`)
            found = re.search(r'<td id="using">([^<]*)</td>', requests.get(f"{server.http_url}/jobs/{job_id}").text)
            return found.group(1) if found else None

        assert re.fullmatch(r"(\d+\.\d\d CPU, )?\d+\.\d (KiB|MiB) memory \(\d+ s ago\)", eventually(using, 20))
        follow = requests.get(f"{server.http_url}/jobs/{job_id}/logs", stream=True, timeout=60)
        lines = follow.iter_lines()
        assert next(line for line in lines if line.startswith(b"data:")).endswith(b'"text": "started", "attempt": 1}')
        assert server.stop() == 0  # by itself, within the helper's 20 s (not SIGKILLed)
        rest: list[bytes] = []
        with contextlib.suppress(requests.exceptions.ChunkedEncodingError):
            rest += lines
        assert b"event: end" not in rest  # cut, not ended: the job has not
        server.start()
        assert query(fresh_database_url, "SELECT state FROM jobs WHERE id = %s", (job_id,)) == [("RUNNING",)]
        server.cli("job", "cancel", job_id, check=True)


def test_the_report_page_sums_what_ended_jobs_used_for_readers(guarded: ServerProcess, tokens: dict[str, str]) -> None:
    label = f"console-report-{uuid4().hex[:8]}"
    ended = [run(guarded, "-l", f"team={label}", "-e", "HODEI_SIM_SECONDS=0.2", "--wait") for _ in range(2)]
    reader = browser(guarded, tokens["read"])
    shown = reader.get(f"{guarded.http_url}/report", params={"by": "submitter", "label": f"team={label}"})
    assert shown.ok and 'href="/report" class="here"' in shown.text, shown.text
    assert "Report <small>2 jobs</small>" in shown.text
    rows = [
        re.findall(r"<td>(.*?)</td>", row)
        for row in re.findall(r"<tr(?: class=\"total\")?>(.*?)</tr>", shown.text, re.S)
        if "<td>" in row
    ]
    # One submitter's two sim jobs, an attempt each, their run time the jobs' own, CPU used
    # measured by no worker (-), and the total.
    run_seconds = query(tokens["url"], "SELECT sum(run_seconds) FROM jobs WHERE id = ANY(%s::uuid[])", (ended,))[0][0]
    assert run_seconds >= 0.4
    assert [row[:9] for row in rows] == [
        [key, "2", "2", "0", "0", "0", "2", seconds_text(run_seconds), "-"] for key in ("operate-person", "(all)")
    ]
    wrong = reader.get(f"{guarded.http_url}/report", params={"by": "colour"})
    assert wrong.status_code == 400 and "report by `colour`: expected one of" in wrong.text
    late = reader.get(f"{guarded.http_url}/report", params={"since": "tomorrow"})
    assert late.status_code == 400 and "since" in late.text


def test_the_audit_page_shows_who_changed_what_to_operators_only(
    guarded: ServerProcess, tokens: dict[str, str]
) -> None:
    guarded.cli("pool", "set", "console-audit", "3", check=True)  # as operate-person
    operator = browser(guarded, tokens["operate"])
    shown = operator.get(f"{guarded.http_url}/audit", params={"kind": "pool", "actor": "operate-person"})
    assert shown.ok and 'href="/audit" class="here"' in shown.text
    (row,) = [r for r in re.findall(r"<tr><td>(.*?)</tr>", shown.text) if "console-audit" in r]
    assert "<td>operate-person</td><td>pool console-audit</td><td>created, size 3</td>" in row
    none = operator.get(f"{guarded.http_url}/audit", params={"actor": "nobody-at-all"})
    assert "No change." in none.text
    reader = browser(guarded, tokens["read"])
    assert 'href="/audit"' not in reader.get(f"{guarded.http_url}/jobs").text
    refused = reader.get(f"{guarded.http_url}/audit")
    assert refused.status_code == 403 and "needs operate" in refused.text
    wrong = operator.get(f"{guarded.http_url}/audit", params={"kind": "jobs"})
    assert wrong.status_code == 400 and "unknown kind jobs" in wrong.text
    guarded.cli("pool", "delete", "console-audit", check=True)
    # Webhooks are the admin role's (a URL may hold a credential): an operator sees no link, and is refused.
    assert 'href="/webhooks"' not in shown.text
    for page in ("/webhooks", "/webhooks/any"):
        refused = operator.get(guarded.http_url + page)
        assert refused.status_code == 403 and "needs admin" in refused.text, refused.text
    assert operator.post(f"{guarded.http_url}/webhooks/any/test").status_code == 403
