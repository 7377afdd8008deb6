"""A job's API token (`job run --api-token`, GitLab's CI_JOB_TOKEN): HODEI_TOKEN and
HODEI_SERVER in the job's environment, acting as its submitter with the submit role at most,
good only while the attempt it was given to runs, masked in the job's output, and never
written anywhere (an HMAC of the job and its worker: hodei.tokens.TokenSigner.job_token)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from e2e.test_access import create_token
from hodei.domain.spec import PARENT_LABEL
from hodei.testing import ServerProcess, eventually, query, wait_settled, wait_terminal

pytestmark = pytest.mark.e2e

# The job hands its token and server to the test, then waits for the test to say it is done.
HANDS_OVER = (
    'echo "$HODEI_TOKEN" > {dir}/token; echo "$HODEI_SERVER" > {dir}/server; '
    'while [ ! -e {dir}/done ]; do sleep 0.1; done; echo "token is $HODEI_TOKEN"'
)


def test_a_jobs_token_acts_as_its_submitter_while_it_runs_and_no_longer(
    fresh_database_url: str, tmp_path: Path, shared_dir: Path
) -> None:
    url = fresh_database_url
    admin = create_token(url, "ops", "admin")
    alice = create_token(url, "alice", "operate")
    bob = create_token(url, "bob", "submit")
    with ServerProcess(url, tmp_path, {"HODEI_LOCAL_ENABLED": "1"}, token=admin, http=True) as server:
        command = HANDS_OVER.format(dir=shared_dir)
        parent = server.cli("--token", alice, "job", "run", "-p", "local", "--api-token", "-c", command, check=True)
        parent_id = parent.stdout.strip()
        token_file = shared_dir / "token"
        eventually(lambda: token_file.exists() and token_file.read_text().strip(), 60, what="the job's token")
        token = token_file.read_text().strip()
        assert (shared_dir / "server").read_text().strip() == server.address
        assert "API token: HODEI_TOKEN while it runs" in server.cli("job", "get", parent_id, check=True).stdout

        # It is alice, with the submit role (hers is operate): it submits, and its jobs say whose.
        me = json.loads(server.cli("--token", token, "-o", "json", "whoami", check=True).stdout)
        assert (me["name"], me["role"], me["job_id"]) == ("alice", "submit", parent_id)
        child = server.cli("--token", token, "job", "run", "-p", "local", "-c", "echo child", "--wait", check=True)
        child_id = child.stdout.strip()
        rows = query(url, "SELECT actor, spec -> 'labels' ->> %s FROM jobs WHERE id = %s", (PARENT_LABEL, child_id))
        assert rows == [("alice", parent_id)]
        assert f"Submitted from job: {parent_id} (with its API token)" in server.cli("job", "get", child_id).stdout
        listed = server.cli("job", "list", "-l", f"{PARENT_LABEL}={parent_id}", "-o", "json", check=True).stdout
        assert [job["id"] for job in json.loads(listed)["jobs"]] == [child_id]
        watched = server.cli("--token", token, "job", "watch", "-l", f"{PARENT_LABEL}={parent_id}", check=True)
        assert watched.stdout == f"{child_id} SUCCEEDED (Status Code: 4)\n", watched.stdout
        page = requests.get(
            f"{server.http_url}/jobs/{parent_id}", headers={"Authorization": f"Bearer {admin}"}, timeout=30
        )
        assert f'<a href="/jobs?label=hodei.io/parent%3D{parent_id}">the jobs it submitted</a>' in page.text
        refused = server.cli("--token", token, "token", "list")
        assert refused.returncode != 0 and "has the submit role" in refused.stderr, refused.stderr
        raised = server.cli("--token", token, "job", "update", child_id, "--priority", "5")
        assert raised.returncode != 0  # raising a priority is the operate role's
        forged = token[:-1] + ("0" if token[-1] != "0" else "1")
        unknown = server.cli("--token", forged, "whoami")
        assert unknown.returncode != 0 and "job's API token was not recognised" in unknown.stderr, unknown.stderr

        # A stream it opened (a watch of a job that outlives it) ends with it.
        sleeper = server.cli("--token", token, "job", "run", "-p", "local", "-c", "sleep 60", check=True).stdout.strip()
        watcher = server.spawn("--token", token, "job", "watch", sleeper)

        (shared_dir / "done").touch()
        wait_settled(url, parent_id)
        assert server.cli("job", "logs", parent_id, check=True).stdout.strip() == "token is ***"
        _, said = watcher.communicate(timeout=60)
        assert watcher.returncode != 0 and f"the API token of job {parent_id} ended with its attempt" in said, said
        server.cli("job", "cancel", sleeper, check=True)
        ended = server.cli("--token", token, "whoami")
        assert ended.returncode != 0 and f"the API token of job {parent_id} ended with its attempt" in ended.stderr
        events = query(url, "SELECT count(*) FROM domain_events WHERE payload::text LIKE %s", (f"%{token[-20:]}%",))
        assert events == [(0,)]

        # Bob's job: his token revoked, his job's token goes with it.
        for name in ("token", "done"):
            (shared_dir / name).unlink()
        bobs = server.cli("--token", bob, "job", "run", "-p", "local", "--api-token", "-c", command, check=True)
        eventually(lambda: token_file.exists() and token_file.read_text().strip(), 60, what="bob's job's token")
        bobs_token = token_file.read_text().strip()
        assert server.cli("--token", bobs_token, "whoami", check=True).stdout.startswith("bob (submit), by the API")
        server.cli("token", "revoke", "bob", check=True)
        revoked = server.cli("--token", bobs_token, "whoami")
        assert revoked.returncode != 0 and "whose token was revoked or expired" in revoked.stderr, revoked.stderr
        (shared_dir / "done").touch()
        wait_settled(url, bobs.stdout.strip())

        # Without --api-token a job has none; and it cannot be set by hand beside it.
        plain = server.cli("job", "run", "-p", "local", "-c", 'echo "${HODEI_TOKEN-none}"', "--wait", check=True)
        assert server.cli("job", "logs", plain.stdout.strip(), check=True).stdout.strip() == "none"
        before = query(url, "SELECT count(*) FROM jobs")
        both = server.cli("job", "run", "-p", "local", "--api-token", "-e", "HODEI_SERVER=elsewhere", "-c", "true")
        assert both.returncode == 2 and "HODEI_SERVER is given to the job by --api-token" in both.stderr, both.stderr
        assert query(url, "SELECT count(*) FROM jobs") == before


def test_cancelling_a_job_cancels_the_jobs_it_submitted_and_theirs(
    fresh_database_url: str, tmp_path: Path, shared_dir: Path
) -> None:
    """A job fans out with its token: a job that fans out again, a held one, one that ended.
    Its cancel takes each not ended with it — the grandchild with its own parent, a sweep
    later — and leaves the one that ended as it was."""
    url = fresh_database_url
    admin = create_token(url, "ops", "admin")
    alice = create_token(url, "alice", "submit")
    with ServerProcess(url, tmp_path, {"HODEI_LOCAL_ENABLED": "1"}, token=admin) as server:

        def handing_over(name: str, *token: str) -> tuple[str, str]:
            """A job with a token of its own, running, and that token."""
            place = shared_dir / name
            place.mkdir(mode=0o1777)
            place.chmod(0o1777)
            command = HANDS_OVER.format(dir=place)
            ran = server.cli(*token, "job", "run", "-p", "local", "--api-token", "-c", command, check=True)
            given = place / "token"
            eventually(lambda: given.exists() and given.read_text().strip(), 60, what=f"{name}'s token")
            return ran.stdout.strip(), given.read_text().strip()

        parent_id, token = handing_over("parent", "--token", alice)
        child_id, child_token = handing_over("child", "--token", token)
        grandchild = server.cli("--token", child_token, "job", "run", "-p", "local", "-c", "sleep 300", check=True)
        held = server.cli("--token", token, "job", "run", "-p", "local", "-c", "true", "--hold", check=True)
        ended = server.cli("--token", token, "job", "run", "-p", "local", "-c", "true", "--wait", check=True)
        server.cli("--token", alice, "cron", "create", "fan", "--schedule", "@yearly", "-p", "local", "-c", "sleep 300")
        from_cron = server.cli("--token", token, "cron", "run", "fan", check=True)  # alice's cron job, run by the job
        said = server.cli("--token", alice, "job", "cancel", parent_id, check=True).stderr
        assert f"Job {parent_id} CANCELLED" in said, said
        assert ", and with it the 3 jobs it submitted with its API token that had not ended" in said, said
        for job_id, submitter in (
            (child_id, parent_id),
            (held.stdout.strip(), parent_id),
            (from_cron.stdout.strip(), parent_id),
            (grandchild.stdout.strip(), child_id),
        ):
            assert wait_terminal(url, job_id, 60) == "CANCELLED"
            reason = f"job {submitter}, which submitted it with its API token, was cancelled"
            assert query(url, "SELECT cancelled_by, error_message FROM jobs WHERE id = %s", (job_id,)) == [
                ("system", reason)
            ]
            wait_settled(url, job_id)
        assert query(url, "SELECT state FROM jobs WHERE id = %s", (ended.stdout.strip(),)) == [("SUCCEEDED",)]
        wait_settled(url, parent_id)

        # Retried by alice, the child is hers to run: its copy says no parent, and the sweep
        # leaves it running (kept, the cancelled parent's label had it cancelled at once).
        (shared_dir / "child" / "token").unlink()
        copy = server.cli("--token", alice, "job", "retry", child_id, check=True).stdout.strip()
        copied_token = shared_dir / "child" / "token"
        eventually(lambda: copied_token.exists() and copied_token.read_text().strip(), 60, what="the copy running")
        time.sleep(3)  # three sweeps
        assert query(url, "SELECT state, spec -> 'labels' FROM jobs WHERE id = %s", (copy,)) == [("RUNNING", {})]
        server.cli("--token", alice, "job", "cancel", copy, check=True)
        wait_settled(url, copy)
