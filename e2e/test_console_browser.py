"""The web console in a real headless Chromium (Debian's package, driven by Playwright):
sign in with a token, watch a job started by the CLI appear and its log stream in (a
retried job's with a marker where each attempt begins), read its timeline, see a
provisioning failure highlighted, cancel a running job.

Screenshots go to ``$HODEI_ARTIFACTS/console`` (default ``artifacts/console``), where CI
keeps them and the README links them.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e.test_access import create_token
from hodei.testing import ServerProcess, eventually, query, wait_settled

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("HODEI_ARTIFACTS", Path(__file__).parent.parent / "artifacts")) / "console"


@pytest.fixture
def chromium() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("HODEI_REQUIRE_DOCKER") == "1":  # CI: every test runs
            pytest.fail(f"no Chromium at {CHROMIUM}: `bash tools/bootstrap.sh` installs Debian's chromium")
        pytest.skip(f"no Chromium at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def started_steps(server: ServerProcess, job_id: str) -> list[str]:
    described = json.loads(server.cli("job", "describe", job_id, "-o", "json", check=True).stdout)
    return [step["name"] for saga in described["sagas"] for step in saga["steps"] if step["started_at"]]


def test_the_console_in_a_browser(chromium: Any, fresh_database_url: str, tmp_path: Path, shared_dir: Path) -> None:
    url = fresh_database_url
    token = create_token(url, "console-operator", "operate")
    env = {"HODEI_LOCAL_MAX_WORKERS": "1"}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with ServerProcess(url, tmp_path, env, token=token, http=True) as server:
        page = chromium.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(30_000)
        refusals: list[str] = []  # what the pages' Content-Security-Policy would have stopped

        def said(message: Any) -> None:
            if "Content Security Policy" in message.text:
                refusals.append(message.text)

        page.on("console", said)

        # Sign in: the console sends a browser without a token to the sign-in page.
        page.goto(f"{server.http_url}/jobs")
        assert "/login" in page.url
        page.fill("#token", token)
        page.click("#sign-in")
        page.wait_for_url(f"{server.http_url}/jobs")
        assert page.inner_text("#signed-in") == "console-operator (operate)"

        # A job started by the CLI appears in the open list without a reload.
        command = "for i in 1 2 3 4 5 6; do echo line $i; sleep 1; done"
        job_id = server.cli("job", "run", "--provider", "local", "--name", "counting", "--command", command).stdout
        job_id = job_id.strip()
        page.wait_for_selector(f'tr[data-job="{job_id}"]')

        # Its log streams in while it runs, and the page shows the end.
        eventually(lambda: query(url, "SELECT state FROM jobs WHERE id = %s", (job_id,)) == [("RUNNING",)], 30)
        page.click(f'tr[data-job="{job_id}"] a')
        page.wait_for_url(f"**/jobs/{job_id}")
        assert "line 6" not in page.inner_text("#log")
        page.wait_for_function("() => document.getElementById('log').textContent.includes('line 6')")
        page.wait_for_function("() => document.getElementById('job-state').textContent === 'SUCCEEDED'")
        wait_settled(url, job_id)
        page.reload()
        assert page.inner_text("#log").split() == [word for i in range(1, 7) for word in ("line", str(i))]

        # A retried job's log marks where each attempt's output begins, live and when loaded.
        tries = shared_dir / "tries"
        # Attempt 2 runs on 4 s after its line: the live checks see the page before it ends.
        count = f"n=$(( $(cat {tries} 2>/dev/null || echo 0) + 1 )); echo $n > {tries}"
        flaky = f"{count}; echo try $n; sleep $((n * 2)); [ $n -ge 2 ]"
        retried = server.cli("job", "run", "-p", "local", "-c", flaky, "--retry", "1", "--retry-backoff", "0.1").stdout
        page.goto(f"{server.http_url}/jobs/{retried.strip()}")
        page.wait_for_function("() => document.getElementById('log').textContent.includes('try 1')")
        page.evaluate("() => { window.notReloaded = true; }")
        page.wait_for_function("() => document.getElementById('log').textContent.includes('try 2')")
        assert page.evaluate("() => window.notReloaded") is True  # the marker came with the live lines
        assert page.inner_text("#log").splitlines() == ["try 1", "[hodei] attempt 2", "try 2"]
        # At its end the page reloads itself: the log is then the server's rendering.
        page.wait_for_function("() => document.getElementById('job-state').textContent === 'SUCCEEDED'")
        assert page.evaluate("() => window.notReloaded") is None
        assert page.inner_text("#log").splitlines() == ["try 1", "[hodei] attempt 2", "try 2"]
        assert page.inner_text("#log .attempt") == "[hodei] attempt 2"
        page.goto(f"{server.http_url}/jobs/{job_id}")

        # The timeline draws every step that ran, each with its duration.
        drawn = page.eval_on_selector_all(
            "#timeline g.step", "bars => bars.map(b => [b.dataset.step, parseFloat(b.dataset.duration)])"
        )
        assert sorted(name for name, _ in drawn) == sorted(started_steps(server, job_id))
        assert all(duration >= 0 for _, duration in drawn)
        page.screenshot(path=str(ARTIFACTS / "job.png"), full_page=True)
        page.locator("#timeline").screenshot(path=str(ARTIFACTS / "timeline.png"))

        # A job that failed in provisioning (no slot within its queue timeout): its step is marked.
        holder = server.cli("job", "run", "--provider", "local", "--command", "sleep 120", check=True).stdout.strip()
        eventually(lambda: query(url, "SELECT state FROM jobs WHERE id = %s", (holder,)) == [("RUNNING",)], 30)
        starved = server.cli(
            "job", "run", "--provider", "local", "--command", "true", "--queue-timeout", "1", check=True
        ).stdout.strip()
        wait_settled(url, starved)
        page.goto(f"{server.http_url}/jobs/{starved}")
        failing = page.eval_on_selector_all("#timeline g.step.failing", "bars => bars.map(b => b.dataset.step)")
        assert failing == ["wait_for_slot"]
        assert page.inner_text("#job-state") == "FAILED"
        page.locator("#timeline").screenshot(path=str(ARTIFACTS / "timeline-failed.png"))

        # A waiting job asks for less, or longer, from its page (`job update`): only what was changed.
        waiting = server.cli("job", "run", "-p", "local", "-c", "true", "--begin", "1h", check=True).stdout.strip()
        page.goto(f"{server.http_url}/jobs/{waiting}")
        page.fill("#cpu-value", "0.5")
        page.fill("#timeout-value", "20m")
        page.click("#update")
        page.wait_for_url(f"**/jobs/{waiting}")
        assert page.inner_text("#resources") == "0.5 CPU"
        changed = "SELECT spec -> 'timeout_seconds', priority FROM jobs WHERE id = %s"
        assert query(url, changed, (waiting,)) == [(1200, 0)]
        server.cli("job", "cancel", waiting, check=True)

        # Cancel the running job from its page.
        page.goto(f"{server.http_url}/jobs/{holder}")
        page.click("#cancel")
        page.wait_for_url(f"**/jobs/{holder}")
        page.wait_for_function("() => document.getElementById('job-state').textContent === 'CANCELLED'")
        wait_settled(url, holder)
        assert query(url, "SELECT state, cancelled_by FROM jobs WHERE id = %s", (holder,)) == [
            ("CANCELLED", "console-operator")
        ]

        # A pipeline whose build fails the first time: its page, then Retry runs build and test again.
        pipeline = tmp_path / "pipeline.yaml"
        builds, go = shared_dir / "builds", shared_dir / "go"
        pipeline.write_text(
            "name: build\nprovider: local\n"
            f"command: n=$(( $(cat {builds} 2>/dev/null || echo 0) + 1 )); echo $n > {builds}; [ $n -ge 2 ] || exit 3; "
            f"while [ ! -e {go} ]; do sleep 0.1; done\n"
            "---\nname: test\nprovider: local\ncommand: 'true'\nafter: {build: ok}\n"
        )
        build = server.cli("job", "run", "--file", str(pipeline), "--wait").stdout.split()[0]
        page.goto(f"{server.http_url}/jobs/{build}")
        page.click("#workflow a")
        page.wait_for_url(f"**/workflows/{build}")
        assert page.inner_text("#workflow-state") == "FAILED"
        assert page.inner_text('[data-name="test"] .state') == "CANCELLED (skipped)"
        page.screenshot(path=str(ARTIFACTS / "workflow.png"), full_page=True)
        page.click("#retry-workflow")
        page.wait_for_url(f"**/workflows/{build}")
        # Its copies run: the page follows them by itself (no reload) until the pipeline ends.
        assert page.inner_text("#workflow-state") in ("PENDING", "ASSIGNED", "RUNNING")
        assert page.locator("#cancel-workflow").count() == 1 and page.locator("#retry-workflow").count() == 0
        go.touch()
        page.wait_for_function("() => document.getElementById('workflow-state').textContent === 'SUCCEEDED'")
        assert [page.inner_text(f'[data-name="{name}"] .state') for name in ("build", "test")] == ["SUCCEEDED"] * 2
        assert page.locator("text=try 2").count() == 2 and page.locator("#retry-workflow").count() == 0

        page.goto(f"{server.http_url}/sagas")
        page.screenshot(path=str(ARTIFACTS / "sagas.png"), full_page=True)
        assert refusals == []  # the console runs its own script and styles only, and all of them

        # Another site cannot frame it: its buttons would take a visitor's clicks.
        framing = chromium.new_page()
        framing.set_content(f'<iframe id="console" src="{server.http_url}/jobs"></iframe>')
        framing.wait_for_load_state()
        (framed,) = framing.main_frame.child_frames
        assert framed.url.startswith("chrome-error://"), framed.url  # refused, not the sign-in page
        framing.close()


def test_a_followed_log_keeps_its_last_lines_as_the_page_first_shows_them(
    chromium: Any, fresh_database_url: str, tmp_path: Path, shared_dir: Path
) -> None:
    """A job page following a job that prints without end appended every line: a flood
    left open in a tab grew it until the browser gave up. It keeps the last 10,000 lines
    (LOG_LINES_SHOWN, what the page shows at first) and says where the rest is."""
    go = shared_dir / "go-flood"
    command = f"echo first; while [ ! -e {go} ]; do sleep 0.1; done; seq 1 25000; sleep 120"
    with ServerProcess(fresh_database_url, tmp_path, http=True) as server:
        job_id = server.cli("job", "run", "-p", "local", "-c", command, check=True).stdout.strip()
        page = chromium.new_page()
        page.set_default_timeout(60_000)
        page.goto(f"{server.http_url}/jobs/{job_id}")
        page.wait_for_function("() => document.getElementById('log').textContent.includes('first')")
        assert page.locator("#log-cut").count() == 0
        go.touch()
        page.wait_for_function("() => document.getElementById('log').textContent.endsWith('\\n25000\\n')")
        lines = page.inner_text("#log").splitlines()
        assert lines == [str(n) for n in range(15001, 25001)]
        note = page.inner_text("#log-cut")
        assert note == f"The last 10000 lines are shown; hodei-jobs-cli job logs --id {job_id} prints them all."
        page.close()
        server.cli("job", "cancel", job_id, check=True)


def test_a_log_page_refused_its_stream_tries_again_less_and_less_often(
    chromium: Any, fresh_database_url: str, tmp_path: Path
) -> None:
    """A server out of room for streams (HODEI_MAX_STREAMS) refuses a job page's live log:
    the page reloads to try again, each time after twice the wait of the last (it
    reloaded every 2 s, each reload a whole page's reads), and once the stream opens the
    log comes in and the wait starts again from the first."""
    with ServerProcess(fresh_database_url, tmp_path, {"HODEI_MAX_STREAMS": "1"}, http=True) as server:
        job_id = server.cli(
            "job", "run", "-p", "local", "-c", "echo first; while sleep 1; do echo tick; done", check=True
        ).stdout
        job_id = job_id.strip()
        holder = server.spawn("job", "logs", job_id, "--follow")  # the one stream there is room for
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "first\n"
            page = chromium.new_page()
            page.set_default_timeout(30_000)
            page.goto(f"{server.http_url}/jobs/{job_id}")
            waits = "() => Number(sessionStorage.getItem('hodei-log-retry'))"
            page.wait_for_function(f"() => ({waits})() >= 4000")  # refused, reloaded, refused again
            holder.kill()
            holder.communicate()
            # Room again: the stream opens at the next try, and the waits start over.
            page.wait_for_function("() => sessionStorage.getItem('hodei-log-retry') === null")
            ticks = page.inner_text("#log").count("tick")
            page.wait_for_function(
                f"() => document.getElementById('log').textContent.split('tick').length > {ticks + 1}"
            )
            server.cli("job", "cancel", job_id, check=True)
        finally:
            holder.kill()
            holder.communicate()
