"""The local provider's agent template: workers forked from one started agent."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from hodei.devdb import free_port
from hodei.providers.agent_template import CODE_LOST, AgentTemplate, agent_python, alive
from hodei.testing import eventually


@pytest.fixture
def template() -> Iterator[AgentTemplate]:
    # Something the template has that its children must not: they get only their own.
    started = AgentTemplate.of_this_python({"HODEI_WORKER_TOKEN": "the-templates"})
    yield started
    started.close()


def settings(job: str, **extra: str) -> dict[str, str]:
    """An agent's settings for a server nobody listens on: it keeps trying to register."""
    _, env = agent_python()
    return {
        **env,
        "PATH": "/usr/bin:/bin",
        "HODEI_SERVER_ADDRESS": f"127.0.0.1:{free_port()}",
        "HODEI_JOB_ID": job,
        "HODEI_WORKER_ID": f"worker-of-{job}",
        "HODEI_WORKER_TOKEN": "token",
        "HODEI_WORKER_ORPHAN_TIMEOUT": "60",
        **extra,
    }


def test_a_forked_agent_has_only_its_own_environment_and_its_exit_code_is_reported(
    template: AgentTemplate, tmp_path: Path
) -> None:
    env = settings("j1")
    del env["HODEI_WORKER_TOKEN"]
    agent = template.fork("w1", env, tmp_path / "w1.log", [])
    assert agent.wait(timeout=30) == 2
    assert "missing environment: HODEI_WORKER_TOKEN" in (tmp_path / "w1.log").read_text()


def test_a_forked_agent_runs_in_its_own_session_named_after_its_job_and_outlives_the_template(
    template: AgentTemplate, tmp_path: Path
) -> None:
    output = tmp_path / "w2.log"
    agent = template.fork("w2", settings("j2"), output, [])
    try:
        eventually(lambda: output.exists() and "cannot register" in output.read_text(), 30, what="the agent to try")
        assert Path(f"/proc/{agent.pid}/cmdline").read_bytes().startswith(b"hodei-worker job=j2 worker=w2")
        assert os.getsid(agent.pid) == agent.pid
        assert agent.poll() is None
        template.close()
        assert alive(agent.pid)
    finally:
        os.kill(agent.pid, signal.SIGKILL)
    # Its exit went to no one who could report it: the provider still learns it is gone.
    assert eventually(agent.poll, 10, what="the agent's end to be seen") == CODE_LOST


def test_a_template_that_died_is_started_again_for_the_next_worker(template: AgentTemplate, tmp_path: Path) -> None:
    first = template.fork("w3", settings("j3", HODEI_WORKER_ORPHAN_TIMEOUT="0.2"), tmp_path / "w3.log", [])
    assert first.wait(timeout=30) == 4
    pid = template.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: template.pid is None, 10, what="the template's end to be seen")
    second = template.fork("w4", settings("j4", HODEI_WORKER_ORPHAN_TIMEOUT="0.2"), tmp_path / "w4.log", [])
    assert template.pid not in (None, pid)
    assert second.wait(timeout=30) == 4


def test_a_forked_agent_enters_its_cgroups_before_it_runs_anything(template: AgentTemplate, tmp_path: Path) -> None:
    # Files in the place of the groups' cgroup.procs (its v2 group, its v1 memory group):
    # the child writes its own pid to each (writing to a real one moves it) before it
    # reads its settings.
    procs = [tmp_path / "cgroup.procs", tmp_path / "memory.procs"]
    for path in procs:
        path.write_text("")
    env = settings("j5")
    del env["HODEI_WORKER_ID"]
    agent = template.fork("w5", env, tmp_path / "w5.log", procs)
    assert agent.wait(timeout=30) == 2
    assert [path.read_text() for path in procs] == [str(agent.pid)] * 2


def test_a_fork_that_cannot_enter_its_cgroup_never_runs_the_agent(template: AgentTemplate, tmp_path: Path) -> None:
    agent = template.fork("w6", settings("j6"), tmp_path / "w6.log", [tmp_path / "no-such-group" / "cgroup.procs"])
    assert agent.wait(timeout=30) == 127
    # The worker's log says why: the provider shows its last lines with the failure.
    output = (tmp_path / "w6.log").read_text()
    assert "no-such-group" in output and "[hodei-worker]" not in output
