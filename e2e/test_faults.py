"""Faults that must not kill healthy jobs, end to end with real processes: a server
killed with kill -9 beside a second one, a server stopped longer than the heartbeat
timeout, PostgreSQL restarted (and away for over a minute), a crash between a registration's commit and its reply,
a killed worker whose job fled its session, and output that would have broken the
log stream (megabyte lines, a log past its cap, a full log disk)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from e2e.test_console import samples
from e2e.test_local import agent_title
from hodei._proto import common_pb2, jobs_pb2, jobs_pb2_grpc, logs_pb2, logs_pb2_grpc
from hodei.devdb import FAST_OPTIONS, Cluster, create_database, free_port
from hodei.domain.job import TERMINAL_STATES
from hodei.store.instances import HEARTBEAT
from hodei.testing import (
    ServerProcess,
    children,
    eventually,
    hodei_server,
    job_states,
    query,
    wait_all,
    wait_settled,
    wait_terminal,
)

pytestmark = pytest.mark.e2e


def submit(server: ServerProcess, command: str, count: int, timeout: float = 120, provider: str = "local") -> list[str]:
    spec = common_pb2.JobSpec(name="fault", command=command, timeout_seconds=timeout, provider=provider)
    with server.channel() as channel, ThreadPoolExecutor(8) as pool:
        stub = jobs_pb2_grpc.JobExecutionServiceStub(channel)
        return list(
            pool.map(lambda _: stub.QueueJob(jobs_pb2.QueueJobRequest(spec=spec), timeout=60).job_id, range(count))
        )


def running(url: str, job_ids: list[str], at_least: int) -> None:
    eventually(lambda: list(job_states(url, job_ids).values()).count("RUNNING") >= at_least, 120, 0.2, "jobs to run")


def test_kill_9_of_one_of_two_servers_fails_none_of_its_jobs(
    fresh_database_url: str, tmp_path: Path, shared_dir: Path
) -> None:
    url = fresh_database_url
    logs = tmp_path / "logs"  # servers sharing a database share the log directory
    # A lease far longer than the test: a saga that went on before it could have expired was
    # taken over, not waited out.
    lease = 600
    env = {
        "HODEI_LOCAL_MAX_WORKERS": "40",
        "HODEI_HEARTBEAT_INTERVAL": "0.5",
        "HODEI_HEARTBEAT_TIMEOUT": "5",
        "HODEI_RELAY_LEASE": str(lease),
    }
    survivor = ServerProcess(url, logs, env).start()
    victim = ServerProcess(url, logs, env).start()
    try:
        ran = shared_dir / "ran"
        command = f"echo $HODEI_JOB_ID >> {ran}; sleep 4; echo done"
        job_ids = submit(victim, command, 20) + submit(survivor, command, 20)
        running(url, job_ids, 20)
        victim.kill()
        ended = wait_all(url, job_ids, 240)
        assert set(ended.values()) == {"SUCCEEDED"}, ended
        for job_id in job_ids:
            wait_settled(url, job_id)
        # Each command ran exactly once: no job ran twice for the crash.
        ran_ids = Counter(ran.read_text().split())
        unlike = {
            job_id: (ran_ids[job_id], survivor.cli("job", "logs", "--id", job_id).stdout[-500:])
            for job_id in job_ids
            if ran_ids[job_id] != 1
        }
        assert not unlike and ran_ids.total() == len(job_ids), (unlike, ran_ids.total())  # times it ran, its log
        # The dead server's sagas went on at once (its claims taken over), not at lease expiry.
        lags = query(
            url,
            "SELECT max(extract(epoch FROM s.completed_at - j.completed_at)) FROM sagas s JOIN jobs j "
            "ON j.id::text = s.correlation_id WHERE j.id = ANY(%s::uuid[])",
            (job_ids,),
        )[0][0]
        assert lags < lease, lags
        assert "is gone: took over" in survivor.logs()
        for job_id in job_ids:
            assert survivor.cli("job", "logs", "--id", job_id, check=True).stdout.split() == ["done"]
    finally:
        survivor.stop()
        victim.stop()


def test_jobs_waiting_for_a_time_or_for_another_job_outlive_a_kill_9_of_their_server(
    fresh_database_url: str, tmp_path: Path
) -> None:
    """Nothing of --begin or --after is kept in a server's memory: killed while every job
    waits, a new server lets each start when its time or its job comes, and cancels the
    one whose job ended otherwise than asked."""
    url = fresh_database_url
    server = ServerProcess(url, tmp_path / "logs", {"HODEI_LOCAL_MAX_WORKERS": "4"}).start()
    try:

        def run(*flags: str) -> str:
            return server.cli("job", "run", "-p", "local", "-c", "true", *flags, check=True).stdout.strip()

        first = run("--begin", "10s")  # long enough to kill the server before it begins, under load too
        then = run("--after", first)
        never = run("--after", f"{first}:notok")
        server.kill()
        assert job_states(url, [first, then, never]) == {first: "PENDING", then: "PENDING", never: "PENDING"}
        server.start()
        ended = wait_all(url, [first, then, never], 120)
        assert ended == {first: "SUCCEEDED", then: "SUCCEEDED", never: "CANCELLED"}
        (begin_at,) = query(url, "SELECT (spec->>'begin_at')::timestamptz FROM jobs WHERE id = %s", (first,))[0]
        times = dict(query(url, "SELECT id::text, started_at FROM jobs WHERE id = ANY(%s::uuid[])", ([first, then],)))
        (first_done,) = query(url, "SELECT completed_at FROM jobs WHERE id = %s", (first,))[0]
        assert times[first] >= begin_at and times[then] >= first_done
        for job_id in (first, then, never):
            wait_settled(url, job_id)
    finally:
        server.stop()


def test_a_server_stopped_longer_than_the_heartbeat_timeout_kills_no_job(
    fresh_database_url: str, tmp_path: Path
) -> None:
    url = fresh_database_url
    env = {"HODEI_HEARTBEAT_INTERVAL": "1", "HODEI_HEARTBEAT_TIMEOUT": "10"}
    server = ServerProcess(url, tmp_path, env).start()
    try:
        job_ids = submit(server, "sleep 20; echo done", 10)
        running(url, job_ids, 10)
        server.stop()
        time.sleep(45)  # more than four times the heartbeat timeout
        server.start()
        ended = wait_all(url, job_ids, 120)
        failed = query(url, "SELECT error_message FROM jobs WHERE state <> 'SUCCEEDED'")
        assert set(ended.values()) == {"SUCCEEDED"}, (failed, server.logs()[-20000:])
        for job_id in job_ids:
            wait_settled(url, job_id)
            assert server.cli("job", "logs", "--id", job_id, check=True).stdout.split() == ["done"]
    finally:
        server.stop()


def test_a_server_killed_mid_upload_loses_no_artifact_and_no_job(fresh_database_url: str, tmp_path: Path) -> None:
    """kill -9 while a worker uploads a 512 MiB artifact, then a new server: the agent sends
    the file again from its start once a server answers, and the job ends as it would have."""
    url, logs = fresh_database_url, tmp_path / "logs"
    server = ServerProcess(url, logs, {"HODEI_HEARTBEAT_INTERVAL": "1", "HODEI_HEARTBEAT_TIMEOUT": "10"}).start()
    size = 512 * 1024 * 1024
    try:
        command = f"head -c {size} /dev/zero > big.bin"
        ran = server.cli("job", "run", "-p", "local", "-c", command, "--artifact", "big.bin", check=True)
        job_id = ran.stdout.strip()
        attempt_dir = logs / "artifacts" / job_id / "1"
        eventually(lambda: next(attempt_dir.glob(".big.bin.*.part"), None), 60, 0.01, what="the upload to begin")
        server.kill()
        server.start()
        assert wait_terminal(url, job_id, 120) == "SUCCEEDED"
        wait_settled(url, job_id)
        (artifact,) = json.loads(server.cli("job", "artifacts", job_id, "-o", "json", check=True).stdout)["artifacts"]
        zeros, digest = bytes(1 << 20), hashlib.sha256()
        for _ in range(size >> 20):
            digest.update(zeros)
        assert (artifact["size_bytes"], artifact["sha256"]) == (size, digest.hexdigest())
        assert (attempt_dir / "big.bin").stat().st_size == size
        assert f"[hodei] stored 1 artifact, {size} bytes" in server.cli("job", "logs", job_id, check=True).stderr
    finally:
        server.stop()


@pytest.fixture
def own_cluster(template_database: str, pg_server: str) -> Iterator[tuple[Cluster, str]]:
    """A PostgreSQL cluster of the test's own, so it can restart it: holds a copy of
    the template database (made with pg_dump, the clusters being different)."""
    root = Path(tempfile.mkdtemp(prefix="hodei-pg-own-"))
    cluster = Cluster(root, free_port())
    cluster.init()
    cluster.start(FAST_OPTIONS)
    try:
        create_database(cluster.url, "hodei_jobs")
        url = cluster.database_url("hodei_jobs")
        source = pg_server.rpartition("/")[0] + f"/{template_database}"
        dump = subprocess.run([pg_tool("pg_dump"), source], capture_output=True, check=True).stdout
        subprocess.run(
            [pg_tool("psql"), "-q", "-v", "ON_ERROR_STOP=1", url], input=dump, capture_output=True, check=True
        )
        query(url, "UPDATE hodei.secrets SET value = gen_random_uuid()::text WHERE name = 'installation_id'")
        yield cluster, url
    finally:
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


def test_a_database_whose_clock_is_ahead_of_the_servers_kills_no_job(
    own_cluster: tuple[Cluster, str], tmp_path: Path
) -> None:
    """PostgreSQL's host 30 s ahead of the server's (no NTP on one of them): workers' signs of
    life were written in the server's time and judged in PostgreSQL's, so every worker was
    lost 10 s after it registered (HODEI_HEARTBEAT_TIMEOUT) and its job failed; a retry's
    backoff was over before it began. The server says how far apart the clocks are, and
    sets its deadlines in PostgreSQL's time (hodei.clock)."""
    cluster, url = own_cluster
    cluster.stop()
    cluster.start(FAST_OPTIONS, clock="+30s")
    with ServerProcess(url, tmp_path) as server:
        ran = server.cli("job", "run", "-p", "local", "-c", "sleep 15; echo still here", "--follow", timeout=120)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout == "still here\n"
        job_id = ran.stderr.split("Job ID: ")[1].split()[0]
        wait_settled(url, job_id)  # `--follow` ends with the job; its worker is released after
        assert query(url, "SELECT state, error_message FROM workers WHERE job_id = %s", (job_id,)) == [
            ("TERMINATED", None)
        ]
        logged = server.logs()
        assert "this host's clock is 30" in logged and "s behind PostgreSQL's" in logged, logged
        assert "deadlines go by PostgreSQL's clock: this host's +30." in logged, logged
        # A retry's backoff, set by the server and judged by the queue's query in PostgreSQL's
        # time, was over before it began: the second attempt started at once.
        second_succeeds = ("-c", '[ "$HODEI_ATTEMPT" = 2 ]', "--retry", "1", "--retry-backoff", "8")
        retried = server.cli("job", "run", "-p", "local", *second_succeeds, "--wait", timeout=120)
        assert retried.returncode == 0, retried.stderr
        job_id = retried.stdout.strip()
        (waited,) = query(
            url,
            "SELECT extract(epoch FROM max(occurred_at) FILTER (WHERE event_type = 'JobAccepted') - "
            "min(occurred_at) FILTER (WHERE payload->>'new_state' = 'PENDING')) FROM domain_events "
            "WHERE aggregate_id = %s",
            (job_id,),
        )[0]
        assert waited >= 8, waited  # both times the server's


def test_a_server_keeps_to_its_share_of_the_databases_connections(
    own_cluster: tuple[Cluster, str], tmp_path: Path
) -> None:
    """PostgreSQL's max_connections is shared by the installation's servers and tools: a server
    says at start when fewer are left than it may open (HODEI_DB_MAX_CONNECTIONS and 4 of its
    own), and in a burst opens no more, every job done and connections left for others (with the
    pool's old fixed 60 it took all of them: others were refused, `too many clients`)."""
    cluster, url = own_cluster
    cluster.stop()
    cluster.start(f"{FAST_OPTIONS} -c max_connections=40")  # 37 once 3 are reserved for superusers
    with ServerProcess(url, tmp_path / "default", {"HODEI_SIM_ENABLED": "1"}) as server:
        logged = server.logs()
        assert "this server may open 64 (HODEI_DB_MAX_CONNECTIONS=60, and 4 of its own)" in logged, logged
    eventually(lambda: not query(url, "SELECT 1 FROM pg_stat_activity WHERE application_name LIKE 'hodei-%'"), 30)
    env = {"HODEI_SIM_ENABLED": "1", "HODEI_DB_MAX_CONNECTIONS": "16"}
    with ServerProcess(url, tmp_path / "share", env) as server, ThreadPoolExecutor(1) as background:
        assert "HODEI_DB_MAX_CONNECTIONS" not in server.logs()
        burst = background.submit(submit, server, "true", 300, provider="sim")

        def connections() -> int:
            """Counted on a connection of its own: one is left for others all along."""
            ((opened,),) = query(url, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'hodei-%'")
            return int(opened)

        peak, deadline = 0, time.monotonic() + 180
        while not burst.done():
            peak = max(peak, connections())
        job_ids = burst.result()
        ended = job_states(url, job_ids)
        while not all(state in TERMINAL_STATES for state in ended.values()):
            assert time.monotonic() < deadline, Counter(ended.values())
            peak = max(peak, connections())
            ended = job_states(url, job_ids)
        assert set(ended.values()) == {"SUCCEEDED"}, Counter(ended.values())
        assert 0 < peak <= 16 + 4, peak


def pg_tool(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    assert found, f"{name} is not installed"
    return str(found[-1])


@pytest.mark.parametrize("away", [2, 25])
def test_a_postgresql_restart_kills_no_job(own_cluster: tuple[Cluster, str], tmp_path: Path, away: int) -> None:
    """Away 2 s: a restart, a failover, unnoticed by calls. Away 25 s: past
    WAIT_FOR_CONNECTION, a known outage, where every call is answered UNAVAILABLE within a
    second; the jobs end meanwhile, and their workers' reports wait for PostgreSQL."""
    cluster, url = own_cluster
    server = ServerProcess(url, tmp_path, {"HODEI_HEARTBEAT_INTERVAL": "0.5", "HODEI_HEARTBEAT_TIMEOUT": "5"}).start()
    try:
        job_ids = submit(server, "sleep 4; echo done", 20)
        running(url, job_ids, 10)
        cluster.stop("fast")
        time.sleep(away)
        cluster.start(FAST_OPTIONS)
        # The outage is over: the first calls get no connection PostgreSQL ended meanwhile.
        for _ in range(5):
            listed = server.cli("-o", "json", "job", "list", "--limit", "1")
            assert listed.returncode == 0, listed.stderr
        wait_all(url, job_ids, 180)
        failed = query(url, "SELECT error_message FROM jobs WHERE state <> 'SUCCEEDED'")
        assert failed == [], (failed, server.logs()[-30000:])
        for job_id in job_ids:
            wait_settled(url, job_id)
        assert server.process is not None and server.process.poll() is None  # no restart needed
        # The outage's start and end are both in the server's log, in that order.
        logged = server.logs()
        lost = logged.index("signal listener lost its connection")
        assert logged.index("signal listener connected again: PostgreSQL answers", lost) > lost
        verify = hodei_server(url, "replay", "--verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
        events = query(url, "SELECT count(*), count(DISTINCT (aggregate_id, aggregate_version)) FROM domain_events")[0]
        assert events[0] == events[1]  # no event doubled
    finally:
        server.stop()


def test_a_frozen_postgresql_kills_no_job(own_cluster: tuple[Cluster, str], tmp_path: Path) -> None:
    """PostgreSQL stopped (SIGSTOP: a hung host, a stalled disk) rather than down: its
    connections stay open and answer nothing, so nothing fails and every call, heartbeat
    and sweep waits. Once it thaws the silence is not counted against the workers (their
    heartbeats could not be written), and no job is lost or repeated."""
    cluster, url = own_cluster
    server = ServerProcess(url, tmp_path, {"HODEI_HEARTBEAT_INTERVAL": "0.5", "HODEI_HEARTBEAT_TIMEOUT": "5"}).start()
    try:
        job_ids = submit(server, "for i in $(seq 1 12); do echo tick $i; sleep 1; done", 4)
        running(url, job_ids, 4)
        postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
        frozen = [postmaster, *children(postmaster)]
        signal_each(frozen, signal.SIGSTOP)
        try:
            time.sleep(15)  # three heartbeat timeouts
        finally:
            signal_each(frozen, signal.SIGCONT)
        wait_all(url, job_ids, 180)
        failed = query(url, "SELECT error_message FROM jobs WHERE state <> 'SUCCEEDED'")
        assert failed == [], (failed, server.logs()[-30000:])
        for job_id in job_ids:
            wait_settled(url, job_id)
            assert server.cli("job", "logs", job_id, check=True).stdout.split("\n")[:-1] == [
                f"tick {i}" for i in range(1, 13)
            ]
        assert query(url, "SELECT count(*) FROM sagas WHERE saga_type = 'RECOVERY'") == [(0,)]
    finally:
        server.stop()


CUT_OFF = "127.0.0.2"  # loopback too: the address one server reaches PostgreSQL by, to cut
RUN_ECHO = ("job", "run", "-p", "local", "-c", "echo hi", "--wait")


@contextlib.contextmanager
def network_cut(port: int) -> Iterator[None]:
    """Drops every packet to and from PostgreSQL's ``port`` at CUT_OFF (iptables): a
    partition, or a host gone, where no reset ever comes, unlike a stopped server's."""
    rules = [["-d", CUT_OFF, "--dport", str(port)], ["-s", CUT_OFF, "--sport", str(port)]]
    for rule in rules:
        subprocess.run(["iptables", "-I", "INPUT", "-p", "tcp", *rule, "-j", "DROP"], check=True)
    try:
        yield
    finally:
        for rule in rules:
            subprocess.run(["iptables", "-D", "INPUT", "-p", "tcp", *rule, "-j", "DROP"], check=True)


def test_a_server_cut_off_from_postgresql_says_so_and_the_other_takes_it_over(
    own_cluster: tuple[Cluster, str], tmp_path: Path
) -> None:
    """A network partition between one of two servers and PostgreSQL: the cut-off server's
    calls are told PostgreSQL is unavailable and since when, as in an outage (its attempts
    to connect waited for the kernel's retries, none ever failed, so each call waited 10 s
    to hear "couldn't get a connection", for as long as the cut lasted); PostgreSQL ends
    its backends, so the other server takes it over (it waited two hours for the kernel's
    keepalive: the lock that says a server lives stayed held) and runs the jobs submitted
    to it meanwhile; once the network is back the cut-off server serves again."""
    cluster, url = own_cluster
    cluster.stop("fast")
    cluster.start(f"{FAST_OPTIONS} -c listen_addresses=127.0.0.1,{CUT_OFF}")
    env = {"HODEI_LOCAL_ENABLED": "1", "HODEI_DOCKER_ENABLED": "0"}
    cut_off = ServerProcess(url.replace("@127.0.0.1:", f"@{CUT_OFF}:"), tmp_path / "cut", env).start()
    other = ServerProcess(url, tmp_path / "other", env).start()
    try:
        assert cut_off.cli(*RUN_ECHO).returncode == 0
        with network_cut(cluster.port):

            def told_since_when() -> str | None:
                listed = cut_off.cli("job", "list", "--limit", "1")
                assert listed.returncode == 1, listed.stdout
                known = "PostgreSQL is unavailable: no connection to it could be made since" in listed.stderr
                return listed.stderr if known else None

            told = eventually(told_since_when, 180, 1, "the cut-off server to know PostgreSQL is away")
            # Its attempts gave up (libpq's connect_timeout), rather than wait for the kernel.
            assert "(the last try: connection timeout expired)" in told, told
            eventually(lambda: "is gone: took over" in other.logs(), 120, 1, "the other server to take it over")
            assert query(url, "SELECT count(*) FROM hodei.server_instances") == [(1,)]
            during = [other.cli(*RUN_ECHO) for _ in range(3)]
            assert [run.returncode for run in during] == [0, 0, 0], [run.stderr for run in during]
        eventually(lambda: cut_off.cli(*RUN_ECHO).returncode == 0, 120, 1, "the cut-off server to serve again")
        eventually(lambda: query(url, "SELECT count(*) FROM hodei.server_instances") == [(2,)], 60, 1, "its row")
        assert set(query(url, "SELECT state FROM jobs")) == {("SUCCEEDED",)}
        verify = hodei_server(url, "replay", "--verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        cut_off.stop()
        other.stop()


def test_workers_cut_off_from_their_server_go_on_with_another(fresh_database_url: str, tmp_path: Path) -> None:
    """The network between a server and its workers is cut (its host's link to them lost),
    the server itself alive: no reset comes, but a worker's heartbeats and pings go
    unanswered, and its stream ends within seconds (`Connection timed out`: gRPC's keepalive,
    hodei_worker.agent.KEEPALIVE), so each worker leaves for the other server inside the
    heartbeat timeout (10 s) and its job goes on there with every line, none lost or
    recovered. (New coverage: nothing needed a change for it.)"""
    url = fresh_database_url
    reached_by = {"HODEI_GRPC_BIND": "0.0.0.0", "HODEI_SERVER_HOST": CUT_OFF, "HODEI_ALLOW_INSECURE": "1"}
    logs = tmp_path / "logs"  # servers sharing a database share the log directory
    cut_off = ServerProcess(url, logs, reached_by).start()
    other = ServerProcess(url, logs).start()
    try:
        time.sleep(HEARTBEAT)  # the cut-off server's list of its peers is read at most this long ago
        job_ids = submit(cut_off, "for i in $(seq 1 20); do echo tick $i; sleep 1; done", 4)
        running(url, job_ids, 4)
        ((server_id,),) = query(
            url, "SELECT server_id FROM hodei.server_instances WHERE api_address LIKE %s", (f"%:{cut_off.port}",)
        )
        on_it = "SELECT count(*) FROM hodei.worker_liveness WHERE server_id = %s AND connected"
        # Its relay moved the jobs it was given, so their workers dial it first (a cut that
        # left every worker on the other would prove nothing).
        eventually(lambda: query(url, on_it, (server_id,))[0][0] >= 1, 30, 0.2, "a worker on the cut-off server")
        with network_cut(cut_off.port):
            ended = wait_all(url, job_ids, 120)
        failed = query(url, "SELECT error_message FROM jobs WHERE state <> 'SUCCEEDED'")
        assert set(ended.values()) == {"SUCCEEDED"}, failed
        for job_id in job_ids:
            wait_settled(url, job_id)
            lines = other.cli("job", "logs", job_id, check=True).stdout.split("\n")[:-1]
            assert lines == [f"tick {i}" for i in range(1, 21)], lines
        assert query(url, "SELECT count(*) FROM sagas WHERE saga_type = 'RECOVERY'") == [(0,)]
    finally:
        cut_off.stop()
        other.stop()


def signal_each(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # a backend that ended meanwhile
            os.kill(pid, sig)


def test_a_log_follower_keeps_streaming_through_a_postgresql_outage(
    own_cluster: tuple[Cluster, str], tmp_path: Path
) -> None:
    """The lines come from the log file, which the server writes without PostgreSQL: a
    follower (here the API's own stream, without the CLI's reconnection) gets the lines
    printed while the database is away and ends with the job, not with UNAVAILABLE."""
    cluster, url = own_cluster
    server = ServerProcess(url, tmp_path, {"HODEI_HEARTBEAT_INTERVAL": "0.5", "HODEI_HEARTBEAT_TIMEOUT": "30"})
    server.start()
    try:
        (job_id,) = submit(server, "for i in $(seq 1 24); do echo line $i; sleep 0.5; done", 1)
        received: list[tuple[float, str]] = []
        with server.channel() as channel, ThreadPoolExecutor(1) as pool:
            stub = logs_pb2_grpc.LogStreamServiceStub(channel)

            def follow() -> None:
                request = logs_pb2.SubscribeLogsRequest(job_id=job_id, follow=True)
                for batch in stub.SubscribeLogs(request, timeout=120):
                    received.extend((time.monotonic(), entry.line) for entry in batch.entries)

            followed = pool.submit(follow)
            eventually(lambda: len(received) >= 3, 30, what="the first lines")
            cluster.stop("fast")
            stopped = time.monotonic()
            time.sleep(6)
            during = [line for at, line in received if at > stopped + 1]
            cluster.start(FAST_OPTIONS)
            followed.result(timeout=120)  # ends with the job, without an error
        assert during, "no line reached the follower while PostgreSQL was away"
        assert [line for _, line in received] == [f"line {i}" for i in range(1, 25)]
    finally:
        server.stop()


RUN_DURING = ("job", "run", "-p", "local", "-c", "echo during", "--wait")


def test_the_first_job_after_a_long_postgresql_outage_is_taken(
    own_cluster: tuple[Cluster, str], tmp_path: Path
) -> None:
    """A server idle through an outage of over a minute answers calls UNAVAILABLE, with the
    reason, and takes the first submission once PostgreSQL is back; a `job run` during the
    outage says why and sends its request again until it is taken, once. Its connection pool
    retries 1, 2, 4 s apart and starts afresh every 10 s (``hodei.store.db.RECONNECT_FOR``);
    with psycopg_pool's own delays, doubling up to minutes, the pool's next try after a 70 s
    outage came about a minute after PostgreSQL returned, and this submission ran into the
    CLI's 30 s deadline; and a call during the outage waited 30 s for a connection, its
    whole deadline, then failed UNKNOWN, or DEADLINE_EXCEEDED, without the reason; and once
    no connection could be made for 10 s, every call still waited 10 s to be told so."""
    cluster, url = own_cluster
    env = {"HODEI_DOCKER_ENABLED": "0", "HODEI_LOCAL_ENABLED": "1", "HODEI_METRICS_PUBLIC": "1"}
    with ServerProcess(url, tmp_path, env, http=True) as server:
        before = server.cli("job", "run", "--provider", "local", "--command", "echo before", "--wait")
        assert before.returncode == 0, before.stderr
        cluster.stop("fast")
        stopped = time.monotonic()
        # Meanwhile a call is told why it cannot be served, inside the CLI's deadline (by now
        # the sweeps have found every pooled connection broken, so the call waits for one);
        # `job run` says so and sends its request again until PostgreSQL is back.
        time.sleep(15)
        during = server.spawn(*RUN_DURING)
        assert during.stderr is not None
        said = during.stderr.readline()
        assert said.startswith("[hodei] no answer to the submission (PostgreSQL is unavailable"), said
        assert "sending it again (idempotency key" in said, said
        # An outage known for 10 s: a call is told since when at once, not after 10 s more.
        listed = server.cli("job", "list")
        assert listed.returncode == 1, listed.stdout
        assert "PostgreSQL is unavailable: no connection to it could be made since" in listed.stderr, listed.stderr
        assert "the last try: connection failed" in listed.stderr, listed.stderr
        # A scrape says PostgreSQL is away, and keeps what the server knows without it (public
        # metrics: a scraper's token could not be checked without PostgreSQL).
        scraped = requests.get(f"{server.http_url}/metrics", timeout=30)
        assert scraped.status_code == 200, scraped.text
        found = samples(scraped.text)
        assert found["hodei_database_up", ()] == 0
        assert found["hodei_jobs_finished_total", (("state", "SUCCEEDED"),)] == 1
        assert ("hodei_outbox_backlog", ()) not in found and ("hodei_workers_connected", ()) in found
        time.sleep(max(0.0, 70 - (time.monotonic() - stopped)))
        cluster.start(FAST_OPTIONS)
        out, errors = during.communicate(timeout=120)
        assert during.returncode == 0, (errors, server.logs()[-5000:])
        assert query(url, "SELECT id::text FROM jobs WHERE spec->>'command' = 'echo during'") == [(out.strip(),)]
        after = server.cli("job", "run", "--provider", "local", "--command", "echo after", "--wait")
        assert after.returncode == 0, (after.stderr, server.logs()[-5000:])
        job_id = after.stdout.strip()
        assert wait_terminal(url, job_id, 60) == "SUCCEEDED"
        wait_settled(url, job_id)
        assert server.cli("job", "logs", "--id", job_id, check=True).stdout.strip() == "after"
        assert samples(requests.get(f"{server.http_url}/metrics", timeout=30).text)["hodei_database_up", ()] == 1


def test_a_crash_between_registration_and_its_reply_fails_no_job(fresh_database_url: str, tmp_path: Path) -> None:
    url = fresh_database_url
    crashing = ServerProcess(url, tmp_path, {"HODEI_FAULT": "register-committed"}).start()
    (job_id,) = submit(crashing, "echo registered once", 1)
    assert crashing.process is not None
    assert crashing.process.wait(timeout=60) == -signal.SIGKILL  # it died right after the commit
    # The registration's commit also handed it the job (its sagas moved in that commit).
    assert query(url, "SELECT state FROM workers WHERE job_id = %s", (job_id,)) == [("BUSY",)]
    healthy = ServerProcess(url, tmp_path, {"HODEI_GRPC_PORT": str(crashing.port)})
    healthy.port, healthy.address = crashing.port, crashing.address  # the address the worker dials
    with healthy:
        assert wait_terminal(url, job_id, 60) == "SUCCEEDED"
        wait_settled(url, job_id)
        assert healthy.cli("job", "logs", "--id", job_id, check=True).stdout.strip() == "registered once"


def test_a_killed_worker_leaves_nothing_running_even_what_fled_its_session(
    fresh_database_url: str, tmp_path: Path
) -> None:
    from hodei.providers.cgroups import WorkerCgroups, cgroup2_root

    root = cgroup2_root()
    if root is None:
        pytest.skip("no writable cgroup v2 hierarchy here")
    url = fresh_database_url
    env = {"HODEI_HEARTBEAT_INTERVAL": "0.5", "HODEI_HEARTBEAT_TIMEOUT": "3", "HODEI_KILL_GRACE": "1"}
    with ServerProcess(url, tmp_path, env) as server:
        (job_id,) = submit(server, "env -i setsid sleep 300 & sleep 300", 1, timeout=600)
        running(url, [job_id], 1)
        (worker_id, installation) = query(
            url,
            "SELECT w.id::text, s.value FROM workers w, hodei.secrets s "
            "WHERE w.job_id = %s AND s.name = 'installation_id'",
            (job_id,),
        )[0]
        group = WorkerCgroups(root, installation)
        pids = eventually(lambda: group.pids(worker_id) if len(group.pids(worker_id)) >= 4 else None, 10)
        (agent,) = [pid for pid in pids if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(agent_title(job_id))]
        os.kill(agent, signal.SIGKILL)
        assert wait_terminal(url, job_id, 30) == "FAILED"  # long before its own 600 s
        (reason,) = query(url, "SELECT error_message FROM jobs WHERE id = %s", (job_id,))[0]
        assert "was lost" in reason, reason
        wait_settled(url, job_id)
        eventually(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids), 10, what="every process to go")
        assert not group.path(worker_id).exists()


def test_huge_lines_are_stored_whole_and_a_log_past_its_cap_is_cut_with_a_notice(
    fresh_database_url: str, tmp_path: Path
) -> None:
    url = fresh_database_url
    megabyte = 1024 * 1024
    with ServerProcess(url, tmp_path, {"HODEI_MAX_LOG_BYTES": str(40 * megabyte)}) as server:
        command = (
            f"python3 -c \"import sys; [sys.stdout.write('a' * {megabyte} + chr(10)) for _ in range(5)]; "
            f"sys.stdout.write('b' * {20 * megabyte} + chr(10)); print('done')\""
        )
        result = server.cli("job", "run", "--provider", "local", "--command", command, "--timeout", "120", "--wait")
        assert result.returncode == 0, result.stderr
        job_id = result.stdout.strip()
        wait_settled(url, job_id)
        logs = server.cli("job", "logs", "--id", job_id, check=True, timeout=300).stdout
        assert logs == ("a" * megabyte + "\n") * 5 + "b" * (20 * megabyte) + "\ndone\n"

        lines = 50 * megabyte // 1000
        flood_command = f"python3 -c \"import sys; [sys.stdout.write('c' * 1000 + chr(10)) for _ in range({lines})]\""
        flood = server.cli(
            "job", "run", "--provider", "local", "--command", flood_command, "--timeout", "120", "--wait"
        )
        assert flood.returncode == 0, flood.stderr
        flood_id = flood.stdout.strip()
        wait_settled(url, flood_id)
        (size,) = query(url, "SELECT size_bytes FROM job_log_files WHERE job_id = %s", (flood_id,))[0]
        assert size <= 40 * megabyte + 1024  # the cap, and the notice
        stored = server.cli("job", "logs", "--id", flood_id, check=True, timeout=300)
        notice = stored.stderr.splitlines()[-1]  # the notice is written as a line of stderr
        assert "the log was truncated here" in notice and "HODEI_MAX_LOG_BYTES" in notice
        assert set(stored.stdout.splitlines()) == {"c" * 1000}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB filesystem of its own (tmpfs), to fill up."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=1777", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_log_disk_costs_output_not_the_job_and_the_log_says_so(
    fresh_database_url: str, tmp_path: Path, small_disk: Path, shared_dir: Path
) -> None:
    """The log directory's disk fills up while a job prints: the job goes on and ends as
    it would, the lines that could not be written are counted, and once there is room
    again the log says how many are missing where they were. Before, the worker's stream
    failed at each batch and the job could not end (its log batch was never acknowledged)."""
    url = fresh_database_url
    filler = small_disk / "filler"
    with filler.open("wb") as handle:  # leave about 16 KiB
        handle.write(b"x" * (240 * 1024))
    go = shared_dir / "go"
    command = f"seq 1 20000; while [ ! -e {go} ]; do sleep 0.1; done; echo after"
    with ServerProcess(url, tmp_path, {"HODEI_LOG_DIR": str(small_disk)}, http=True) as server:
        job_id = server.cli("job", "run", "-p", "local", "-c", command, check=True).stdout.strip()
        eventually(lambda: "its output cannot be stored" in server.logs(), 60, what="the disk to be full")
        filler.unlink()
        go.touch()
        assert wait_terminal(url, job_id, 60) == "SUCCEEDED"
        wait_settled(url, job_id)
        shown = server.cli("-o", "json", "job", "logs", job_id, check=True).stdout.splitlines()
        entries = [(entry["stream"], entry["line"]) for entry in map(json.loads, shown)]
        (at,) = [i for i, (stream, _) in enumerate(entries) if stream == "LOG_STREAM_STDERR"]
        assert entries[-1] == ("LOG_STREAM_STDOUT", "after")
        stored = [int(line) for _, line in entries[:at] + entries[at + 1 : -1]]
        lost = sorted(set(range(1, 20001)) - set(stored))
        assert lost and stored == sorted(stored)
        assert lost == list(range(at + 1, at + 1 + len(lost)))  # one gap, where the notice is
        assert (
            entries[at][1] == f"[hodei] {len(lost)} lines of output could not be stored here (No space left on device)"
        )
        metrics = requests.get(f"{server.http_url}/metrics", timeout=10).text
        assert f"hodei_log_lines_lost_total {len(lost)}.0" in metrics


def test_a_job_that_ends_while_the_log_disk_is_full_ends_as_it_would(
    fresh_database_url: str, tmp_path: Path, small_disk: Path, shared_dir: Path
) -> None:
    """The disk is still full when the job ends, and when the next one runs. A local agent's
    own output is a file in the log directory: its last word about the job failed there,
    took the job's report with it, and the job stayed RUNNING until its timeout."""
    url = fresh_database_url
    go = shared_dir / "go"
    command = f"seq 1 20000; while [ ! -e {go} ]; do sleep 0.1; done; exit 3"
    with ServerProcess(url, tmp_path, {"HODEI_LOG_DIR": str(small_disk)}) as server:
        (small_disk / "filler").write_bytes(b"x" * (240 * 1024))
        job_id = server.cli("job", "run", "-p", "local", "-c", command, check=True).stdout.strip()
        eventually(lambda: "its output cannot be stored" in server.logs(), 60, what="the disk to be full")
        descriptor = os.open(small_disk / "rest", os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):  # not a byte left
            while True:
                os.write(descriptor, b"x" * 4096)
        os.close(descriptor)
        go.touch()
        assert wait_terminal(url, job_id, 60) == "FAILED"
        assert query(url, "SELECT exit_code FROM jobs WHERE id = %s", (job_id,)) == [(3,)]
        after = server.cli("job", "run", "-p", "local", "-c", "echo lost; exit 4", "--wait")
        assert after.returncode == 4, after.stderr


def test_a_full_artifacts_disk_costs_the_file_not_the_job_and_the_log_says_so(
    fresh_database_url: str, tmp_path: Path, small_disk: Path
) -> None:
    """A file too large for what is left of the disk is refused, its part removed, the next
    file stored, and the job ends as it would have."""
    command = "head -c 400000 /dev/zero > big.bin && echo small > small.txt"
    with ServerProcess(fresh_database_url, tmp_path, {"HODEI_LOG_DIR": str(small_disk)}) as server:
        ran = server.cli("job", "run", "-p", "local", "-c", command, "--artifact", "big.bin", "--artifact", "small.txt")
        job_id = ran.stdout.strip()
        assert wait_terminal(fresh_database_url, job_id, 60) == "SUCCEEDED"
        wait_settled(fresh_database_url, job_id)
        log = server.cli("job", "logs", job_id, check=True).stderr
        assert "[hodei] artifact big.bin not stored: the server could not store it (No space left on device)" in log
        assert "[hodei] stored 1 artifact, 6 bytes" in log
        listed = json.loads(server.cli("job", "artifacts", job_id, "-o", "json", check=True).stdout)["artifacts"]
        assert [a["name"] for a in listed] == ["small.txt"]
        assert not list(small_disk.rglob("*.part"))
        assert "could not store an artifact of job" in server.logs()


def test_reading_a_million_line_log_holds_a_page_at_a_time(fresh_database_url: str, tmp_path: Path) -> None:
    from hodei._proto import logs_pb2, logs_pb2_grpc

    def rss_kb(pid: int) -> int:
        line = next(s for s in Path(f"/proc/{pid}/status").read_text().splitlines() if s.startswith("VmRSS:"))
        return int(line.split()[1])

    with ServerProcess(fresh_database_url, tmp_path) as server:
        result = server.cli(
            "job", "run", "--provider", "local", "--command", "seq 1 1000000", "--timeout", "300", "--wait"
        )
        assert result.returncode == 0, result.stderr
        job_id = result.stdout.strip()
        wait_settled(fresh_database_url, job_id)
        assert server.process is not None
        before = rss_kb(server.process.pid)
        with server.channel() as channel:
            logs = logs_pb2_grpc.LogStreamServiceStub(channel)
            first = logs.GetLogs(logs_pb2.GetLogsRequest(job_id=job_id), timeout=60)
            second = logs.GetLogs(logs_pb2.GetLogsRequest(job_id=job_id, page_token=first.next_page_token), timeout=60)
            last = logs.GetLogs(logs_pb2.GetLogsRequest(job_id=job_id, from_line=999_999), timeout=60)
            streamed = sum(
                len(batch.entries)
                for batch in logs.SubscribeLogs(logs_pb2.SubscribeLogsRequest(job_id=job_id), timeout=300)
            )
        growth_mb = (rss_kb(server.process.pid) - before) / 1024
    assert [e.line for e in first.entries[:2]] == ["1", "2"] and first.has_more
    assert second.entries[0].line == str(len(first.entries) + 1)
    assert [e.line for e in last.entries] == ["999999", "1000000"] and not last.has_more
    assert streamed == 1_000_000
    assert growth_mb < 50, growth_mb
