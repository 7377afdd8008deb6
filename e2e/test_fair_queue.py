"""HODEI_QUEUE_ORDER=fair: within a priority, submitters take turns at the slots as they free,
instead of the first to submit taking them all (hodei.admission)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests

from e2e.test_access import create_token
from hodei.testing import ServerProcess, query, wait_running, wait_settled

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tokens(database_url: str) -> dict[str, str]:
    return {name: create_token(database_url, name, "submit") for name in ("alice", "bob")}


@pytest.fixture(scope="module")
def server(
    database_url: str, tokens: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    env = {
        "HODEI_SIM_ENABLED": "1",
        "HODEI_SIM_MAX_WORKERS": "1",
        "HODEI_LOCAL_ENABLED": "0",
        "HODEI_QUEUE_ORDER": "fair",
    }
    with ServerProcess(database_url, tmp_path_factory.mktemp("fair"), env, http=True) as process:
        yield process
    print(process.logs()[-5000:])


def test_submitters_take_turns_at_a_freed_slot_in_the_order_the_queue_shows(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """One slot, held by alice's job while her three and then bob's two join the queue:
    bob's first goes before hers (she holds the slot), then they alternate while both
    have jobs; `queue` says that order before any of them starts."""

    def submit(who: str, seconds: str) -> str:
        ran = server.cli(
            "--token",
            tokens[who],
            "job",
            "run",
            "-p",
            "sim",
            "-c",
            "simulated",
            "--env",
            f"HODEI_SIM_SECONDS={seconds}",
        )
        assert ran.returncode == 0, ran.stderr
        return ran.stdout.strip()

    url = server.database_url
    holder = submit("alice", "600")
    wait_running(url, holder)
    alice = [submit("alice", "0.2") for _ in range(3)]
    bob = [submit("bob", "0.2") for _ in range(2)]
    turns = [bob[0], alice[0], bob[1], alice[1], alice[2]]
    status = json.loads(server.cli("--token", tokens["bob"], "-o", "json", "queue", check=True).stdout)
    listed = status["queued"]
    assert [(job["job_id"], int(job["position"])) for job in listed] == list(zip(turns, range(1, 6), strict=True))
    assert status["order"] == "fair"
    full = "provider sim is full: 1 of 1 workers; "
    assert listed[0]["reason"] == (
        full
        + "its turn 1: bob's use 0 (jobs running, or ended in the last 600s) and its place 1 among bob's jobs in line"
    )
    assert listed[1]["reason"] == (
        full + "its turn 2: alice's use 1 (jobs running, or ended in the last 600s) and its place 1 among alice's "
        "jobs in line"
    )
    table = server.cli("--token", tokens["bob"], "queue", check=True).stdout
    assert "In line by priority, then by submitters' turns (HODEI_QUEUE_ORDER=fair):" in table
    page = requests.get(f"{server.http_url}/queue", headers={"Authorization": f"Bearer {tokens['bob']}"}, timeout=30)
    assert page.ok and 'id="order"' in page.text and "its turn 2: alice" in page.text

    server.cli("--token", tokens["alice"], "job", "cancel", holder, check=True)
    for job_id in turns:
        wait_settled(url, job_id, 60)
    started = query(url, "SELECT id::text FROM jobs WHERE id = ANY(%s::uuid[]) ORDER BY admitted_at", ([*alice, *bob],))
    assert [job_id for (job_id,) in started] == turns
    assert query(url, "SELECT DISTINCT state FROM jobs WHERE id = ANY(%s::uuid[])", (turns,)) == [("SUCCEEDED",)]
