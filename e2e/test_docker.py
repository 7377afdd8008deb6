"""The seed, executable, on the Docker provider: Phase 5 (5.1-5.5) with exactly the
seed's flags, Phase 6 with exactly its queries, Phase 8, and a concurrency run."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from e2e.registry import Registry
from e2e.seed import check_job_get, check_phase6, phase5_jobs, submit
from hodei.testing import (
    BARE_IMAGE,
    BARE_MARKER,
    BARE_USER,
    Link,
    ServerProcess,
    eventually,
    query,
    wait_running,
    wait_settled,
    wait_terminal,
    worker_ended_because,
)

DOCKER_ID = "11111111-1111-1111-1111-111111111111"
pytestmark = [pytest.mark.e2e, pytest.mark.docker]


def hodei_containers(docker_client: Any, database_url: str) -> list[Any]:
    """The containers of this database's installation (tests of other modules may run
    their own beside it)."""
    (installation,) = query(database_url, "SELECT value FROM hodei.secrets WHERE name = 'installation_id'")[0]
    # sparse: no inspect of each listed container, which fails for one removed meanwhile.
    found: list[Any] = docker_client.containers.list(
        all=True, sparse=True, filters={"label": ["hodei.managed", f"hodei.installation={installation}"]}
    )
    return found


def _job_containers(docker_client: Any, job_id: str) -> list[Any]:
    found: list[Any] = docker_client.containers.list(all=True, sparse=True, filters={"label": f"hodei.job-id={job_id}"})
    return found


@pytest.fixture(scope="module")
def server(
    database_url: str, tmp_path_factory: pytest.TempPathFactory, worker_image: str, docker_client: Any
) -> Iterator[ServerProcess]:
    log_dir = tmp_path_factory.mktemp("logs")
    env = {
        "HODEI_DOCKER_ENABLED": "1",
        "HODEI_LOCAL_ENABLED": "0",
        "HODEI_WORKER_IMAGE": worker_image,
        "HODEI_HEARTBEAT_INTERVAL": "0.5",
        "HODEI_HEARTBEAT_TIMEOUT": "3",
        "HODEI_KILL_GRACE": "1",
    }
    with ServerProcess(database_url, log_dir, env, http=True) as process:
        yield process
    print(process.logs()[-4000:])


def test_seed_phase5_and_phase6_on_docker(server: ServerProcess, database_url: str, docker_client: Any) -> None:
    jobs = [(job, submit(server, job)) for job in phase5_jobs("docker")]
    for job, job_id in jobs:
        wait_settled(database_url, job_id, timeout=120)
        check_job_get(server, job_id)
        check_phase6(database_url, job_id, "docker", DOCKER_ID, job)
        (resource,) = query(database_url, "SELECT provider_resource_id FROM workers WHERE job_id = %s", (job_id,))[0]
        assert len(resource) == 64 and int(resource, 16) >= 0, f"not a container id: {resource}"
    # 6.5: a Docker job creates no pod (this server has no Kubernetes provider at all).
    assert query(database_url, "SELECT count(*) FROM workers WHERE provider_type = 'kubernetes'") == [(0,)]
    eventually(
        lambda: hodei_containers(docker_client, database_url) == [], 30, what="every worker container to be removed"
    )


def test_seed_phase8_batch_jobs_all_succeed(server: ServerProcess, database_url: str) -> None:
    job_ids = []
    for i in range(1, 6):
        result = server.cli(
            "job",
            "run",
            "--name",
            f"batch-test-{i}-{int(time.time())}",
            "--provider",
            "docker",
            "--command",
            f"echo 'Batch test {i}'",
            "--timeout",
            "30",
            check=True,
        )
        job_ids.append(result.stdout.strip())
    for job_id in job_ids:
        wait_settled(database_url, job_id, timeout=60)
    states = query(
        database_url, "SELECT state, COUNT(*) as count FROM jobs WHERE id = ANY(%s::uuid[]) GROUP BY state", (job_ids,)
    )
    assert states == [("SUCCEEDED", 5)]


def test_twenty_concurrent_jobs(server: ServerProcess, database_url: str, docker_client: Any) -> None:
    job_ids = [
        server.cli(
            "job", "run", "--provider", "docker", "--command", f"echo job {i}; sleep 1", "--timeout", "60", check=True
        ).stdout.strip()
        for i in range(20)
    ]
    for job_id in job_ids:
        wait_settled(database_url, job_id, timeout=180)
    assert query(
        database_url, "SELECT state, count(*) FROM jobs WHERE id = ANY(%s::uuid[]) GROUP BY state", (job_ids,)
    ) == [("SUCCEEDED", 20)]
    eventually(
        lambda: hodei_containers(docker_client, database_url) == [], 30, what="every worker container to be removed"
    )


def test_a_killed_container_fails_the_job_and_leaves_nothing(
    server: ServerProcess, database_url: str, docker_client: Any
) -> None:
    job_id = server.cli(
        "job", "run", "--provider", "docker", "--command", "sleep 300", "--timeout", "600", check=True
    ).stdout.strip()
    eventually(lambda: query(database_url, "SELECT state FROM jobs WHERE id = %s", (job_id,)) == [("RUNNING",)], 60)
    (container,) = docker_client.containers.list(filters={"label": f"hodei.job-id={job_id}"})
    container.kill()
    assert wait_terminal(database_url, job_id, timeout=30) == "FAILED"
    wait_settled(database_url, job_id)
    (reason,) = query(database_url, "SELECT error_message FROM jobs WHERE id = %s", (job_id,))[0]
    assert "was lost" in reason and "exited with code 137" in reason, reason
    eventually(
        lambda: docker_client.containers.list(all=True, sparse=True, filters={"label": f"hodei.job-id={job_id}"}) == [],
        30,
    )
    assert query(database_url, "SELECT state FROM workers WHERE job_id = %s", (job_id,)) == [("TERMINATED",)]


def test_container_limits_and_labels_come_from_the_job(
    server: ServerProcess, database_url: str, docker_client: Any
) -> None:
    job_id = server.cli(
        "job",
        "run",
        "--provider",
        "docker",
        "--command",
        "sleep 30",
        "--timeout",
        "60",
        "--cpu",
        "0.5",
        "--memory",
        "256Mi",
        check=True,
    ).stdout.strip()
    eventually(lambda: query(database_url, "SELECT state FROM jobs WHERE id = %s", (job_id,)) == [("RUNNING",)], 60)
    (container,) = docker_client.containers.list(filters={"label": f"hodei.job-id={job_id}"})
    (worker_id,) = query(database_url, "SELECT id::text FROM workers WHERE job_id = %s", (job_id,))[0]
    assert container.name == f"hodei-worker-{worker_id}"
    assert container.labels["hodei.worker-id"] == worker_id
    assert container.labels["hodei.managed"] == "hodei-jobs"
    host = container.attrs["HostConfig"]
    assert (host["NetworkMode"], host["NanoCpus"], host["Memory"], host.get("Init")) == (
        "host",
        500_000_000,
        256 * 1024**2,
        None,  # the agent is PID 1: no init process whose environment a job could read
    )
    server.cli("job", "cancel", "--id", job_id, check=True)
    wait_settled(database_url, job_id)


def test_a_cpu_below_what_the_kernel_can_limit_gets_the_least_it_can(server: ServerProcess, docker_client: Any) -> None:
    """`--cpu 0.001` (Kubernetes' 1m) was passed on as is: the engine refused to start the
    container (runc: `cpu.cfs_quota_us: invalid argument`) and the job failed to provision."""
    result = server.cli("job", "run", "-p", "docker", "-c", "echo ran", "--cpu", "0.001", "--wait")
    assert result.returncode == 0, result.stderr
    assert server.cli("job", "logs", result.stdout.strip(), check=True).stdout == "ran\n"


def test_a_cpu_past_the_engines_host_gets_all_of_its_cpus(server: ServerProcess, docker_client: Any) -> None:
    """`--cpu 64` on a host of 2: the engine refused to create the container ("Range of
    CPUs is from 0.01 to 2.00, as there are only 2 CPUs"); a local job ran with it."""
    job_id = server.cli("job", "run", "-p", "docker", "-c", "sleep 30", "--cpu", "64", check=True).stdout.strip()
    running = [("RUNNING",)]
    eventually(lambda: query(server.database_url, "SELECT state FROM jobs WHERE id = %s", (job_id,)) == running, 60)
    (container,) = docker_client.containers.list(filters={"label": f"hodei.job-id={job_id}"})
    assert container.attrs["HostConfig"]["NanoCpus"] == docker_client.info()["NCPU"] * 1_000_000_000
    server.cli("job", "cancel", job_id, "--force", check=True)
    wait_settled(server.database_url, job_id)


def test_a_containers_own_log_holds_the_first_16_mib_of_a_jobs_output(
    server: ServerProcess, docker_client: Any
) -> None:
    """The engine keeps what the agent writes (`docker logs`) on its host's disk, without a
    limit by default: the agent copies the job's first 16 MiB there and says where the
    rest is; the stored log has all of it."""
    lines = 300_000  # 100 characters a line: 30 MB
    command = f"yes $(printf '%099d' 0) | head -n {lines}; echo last; sleep 60"
    job_id = server.cli("job", "run", "-p", "docker", "-c", command, "--timeout", "300", check=True).stdout.strip()
    note = f"up to 16 MiB and no further: all of it is in its stored log (`hodei-jobs-cli job logs {job_id}`)"

    def copied() -> bytes | None:
        """Once the note (on stderr) and the copy (on stdout) are both in: the engine reads
        the container's two pipes apart, so the note may be logged before the copy's last lines."""
        containers = docker_client.containers.list(filters={"label": f"hodei.job-id={job_id}"})
        output: bytes = containers[0].logs() if containers else b""
        return output if note.encode() in output and len(output) >= 16 * 2**20 else None

    output = eventually(copied, 120, interval=0.5, what="the agent's note in the container's log")
    assert 16 * 2**20 <= len(output) < 16 * 2**20 + 2_000_000  # its own lines besides
    assert b"\nlast\n" not in output
    stored = eventually(
        lambda: (text := server.cli("job", "logs", job_id, check=True).stdout).endswith("last\n") and text, 60
    )
    assert stored == ("0" * 99 + "\n") * lines + "last\n"
    server.cli("job", "cancel", job_id, "--force", check=True)
    wait_settled(server.database_url, job_id)


def test_a_containers_files_are_kept_as_artifacts_before_it_goes(server: ServerProcess, tmp_path: Path) -> None:
    """The agent in the container (not root: the image's user 1000) uploads the files its job
    left in its working directory; the container is removed after, the files stay."""
    command = "mkdir -p out && id -u > out/uid.txt && head -c 3000000 /dev/urandom > out/blob.bin"
    result = server.cli("job", "run", "--provider", "docker", "--command", command, "--artifact", "out", "--wait")
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    wait_settled(server.database_url, job_id)
    listed = json.loads(server.cli("job", "artifacts", job_id, "-o", "json", check=True).stdout)["artifacts"]
    assert sorted((a["name"], a["size_bytes"]) for a in listed) == [("out/blob.bin", 3_000_000), ("out/uid.txt", 5)]
    saved = server.cli("job", "artifacts", job_id, "--save", str(tmp_path), check=True)
    assert "out/blob.bin (2.9 MiB)" in saved.stdout
    assert (tmp_path / "out/uid.txt").read_text() == "1000\n"
    blob = (tmp_path / "out/blob.bin").read_bytes()
    assert hashlib.sha256(blob).hexdigest() == next(a["sha256"] for a in listed if a["name"] == "out/blob.bin")


# A job that submits a job of its own through the API with its token (`--api-token`): the
# worker image has Python, grpcio and the API's messages (in /opt/hodei-worker; no CLI).
SUBMITS_A_CHILD = """
import os, grpc
from hodei._proto import common_pb2, jobs_pb2, jobs_pb2_grpc
stub = jobs_pb2_grpc.JobExecutionServiceStub(grpc.insecure_channel(os.environ["HODEI_SERVER"]))
spec = common_pb2.JobSpec(command="echo child", provider="docker", timeout_seconds=60)
token = [("authorization", "Bearer " + os.environ["HODEI_TOKEN"])]
print(stub.QueueJob(jobs_pb2.QueueJobRequest(spec=spec), metadata=token).job_id)
"""


def test_a_job_in_a_container_submits_a_job_of_its_own_with_its_token(server: ServerProcess) -> None:
    run = ["job", "run", "-p", "docker", "--api-token", "-e", "PYTHONPATH=/opt/hodei-worker", "-c", "python3"]
    parent = server.cli(*run, "--args", f"-c '{SUBMITS_A_CHILD}'")
    assert parent.returncode == 0, parent.stderr
    parent_id = parent.stdout.strip()
    wait_settled(server.database_url, parent_id)
    logged = server.cli("job", "logs", parent_id, check=True)
    printed = logged.stdout.strip()
    assert printed, logged.stderr
    child = json.loads(server.cli("job", "get", printed, "-o", "json", check=True).stdout)
    assert child["spec"]["labels"] == {"hodei.io/parent": parent_id}, child
    wait_settled(server.database_url, printed)
    assert server.cli("job", "logs", printed, check=True).stdout == "child\n"


def test_a_job_runs_in_an_image_of_its_own_with_its_environment_directory_and_user(
    server: ServerProcess, database_url: str, docker_client: Any, bare_image: str, tmp_path: Path
) -> None:
    """`--image`: an image with nothing but busybox (no Python, nothing of ours); the command
    sees the image's files, its ENV under the job's own variables, its WORKDIR and USER, as
    `docker run` of it would; artifacts and outputs are kept from there."""
    agents = "env | grep -cE '^(HODEI_WORKER_TOKEN|HODEI_SERVER_ADDRESS|PYTHONHOME|HODEI_AGENT_VARIABLES)='"
    command = (
        f'cat /marker; echo "$GREETING $MINE $PATH"; pwd; id -u; {agents}; echo kept > out.txt; '
        'echo "made-in=$(cat /marker)" >> "$HODEI_OUTPUT"; exit 3'
    )
    result = server.cli(
        "job", "run", "--image", bare_image, "-c", command, "-e", "MINE=mine", "--artifact", "out.txt", "--wait"
    )
    assert result.returncode == 3, result.stderr
    job_id = result.stdout.strip()
    wait_settled(database_url, job_id)
    logs = server.cli("job", "logs", job_id, check=True).stdout
    assert logs == f"{BARE_MARKER}\nfrom-the-image mine /bin\n/data\n{BARE_USER}\n0\n"  # none of the agent's
    assert query(database_url, "SELECT state, exit_code, provider_type FROM jobs WHERE id = %s", (job_id,)) == [
        ("FAILED", 3, "docker")
    ]
    assert f"Image: {bare_image}" in server.cli("job", "get", job_id, check=True).stdout
    page = requests.get(f"{server.http_url}/jobs/{job_id}", timeout=30).text
    assert f'<td id="image">{bare_image}</td>' in page
    server.cli("job", "artifacts", job_id, "--save", str(tmp_path), check=True)
    assert (tmp_path / "out.txt").read_text() == "kept\n"
    # Its outputs, read by the agent brought into the image, as the image's user could.
    assert server.cli("job", "output", job_id, "made-in", check=True).stdout == f"{BARE_MARKER}\n"
    bundles = docker_client.volumes.list(filters={"label": "hodei.agent-bundle"})
    assert [volume.name for volume in bundles if volume.name.startswith("hodei-agent-")], "the agent's volume"
    # Its pull had HODEI_IMAGE_PULL_TIMEOUT (600 s) more than the step's own 90 s: in the
    # provisioning saga's context (select_provider's output, in its moves' row of the log).
    ((pulled,),) = query(
        database_url,
        "SELECT count(*) FROM domain_events e JOIN sagas s ON s.id::text = e.aggregate_id "
        "WHERE s.correlation_id = %s AND e.payload::text LIKE '%%\"image_pull_timeout\": 600.0%%'",
        (job_id,),
    )
    assert pulled >= 1


@pytest.mark.parametrize("own_image", [False, True], ids=["worker-image", "own-image"])
def test_input_files_are_unpacked_in_the_container_as_its_user(
    server: ServerProcess, bare_image: str, tmp_path: Path, own_image: bool
) -> None:
    """`--input`: the agent in the container fetches and unpacks them (the worker image's
    Python, or the one brought into an image without any), the files its user's."""
    (tmp_path / "in/deep").mkdir(parents=True)
    (tmp_path / "in/deep/a.txt").write_text("from the submitter\n")
    (tmp_path / "in/run.sh").write_text("cat deep/a.txt; stat -c %u deep/a.txt; id -u\n")
    where = ("--image", bare_image) if own_image else ("--provider", "docker")
    ran = server.cli("job", "run", *where, "-c", "sh run.sh", "--input", f"{tmp_path}/in/", "--follow")
    assert ran.returncode == 0, ran.stderr
    user = str(BARE_USER) if own_image else "1000"
    assert ran.stdout == f"from the submitter\n{user}\n{user}\n"
    size = sum(path.stat().st_size for path in (tmp_path / "in/deep/a.txt", tmp_path / "in/run.sh"))
    assert f"[hodei] unpacked 2 input files, {size} bytes" in ran.stderr


def test_an_agent_volume_removed_between_jobs_is_filled_again(
    server: ServerProcess, database_url: str, docker_client: Any, bare_image: str
) -> None:
    """`docker volume prune` (or `rm`) of the agent's volume while no job mounts it: the
    next job in its own image fills it again and runs, as the first one did; so does one
    that meets an empty volume of that name without labels (what the engine makes for a
    job's mount when the volume was removed just before)."""

    def ran(text: str) -> str:
        job = server.cli("job", "run", "--image", bare_image, "-c", f"echo {text}", "--wait")
        assert job.returncode == 0, job.stderr
        job_id = job.stdout.strip()
        assert server.cli("job", "logs", job_id, check=True).stdout == f"{text}\n"
        eventually(lambda: _job_containers(docker_client, job_id) == [], 30)
        return job_id

    ran("first")
    [bundle] = docker_client.volumes.list(filters={"label": "hodei.agent-bundle"})
    bundle.remove()
    ran("second")
    docker_client.volumes.get(bundle.name).remove()
    docker_client.volumes.create(bundle.name)  # empty, unlabelled
    ran("third")
    labelled = docker_client.volumes.list(filters={"label": "hodei.agent-bundle"})
    assert [volume.name for volume in labelled] == [bundle.name]


def test_a_signal_reaches_the_processes_of_a_job_in_its_own_image(
    server: ServerProcess, database_url: str, bare_image: str
) -> None:
    """`job signal`: the agent in the job's container (not PID 1's child alone: the command's
    whole group) gets it to the command, which handles it and goes on."""
    traps = "trap 'echo got USR1' USR1; echo ready; while true; do sleep 0.1; done"
    job_id = server.cli("job", "run", "--image", bare_image, "-c", traps, check=True).stdout.strip()
    eventually(lambda: "ready" in server.cli("job", "logs", job_id).stdout, 60, what="the job to start")
    server.cli("job", "signal", job_id, "--signal", "USR1", check=True)
    eventually(lambda: "got USR1" in server.cli("job", "logs", job_id).stdout, 60, what="the command to handle it")
    assert query(database_url, "SELECT state FROM jobs WHERE id = %s", (job_id,)) == [("RUNNING",)]
    server.cli("job", "cancel", job_id, check=True)
    assert wait_terminal(database_url, job_id) == "CANCELLED"


def test_a_command_runs_in_the_container_of_a_job_in_its_own_image(
    server: ServerProcess, database_url: str, bare_image: str
) -> None:
    """`job exec`: the agent in the job's container runs it as the image's user, in the
    job's directory, beside the job's processes (kubectl exec, docker exec)."""
    job_id = server.cli("job", "run", "--image", bare_image, "-c", "echo ready; sleep 60", check=True).stdout.strip()
    eventually(lambda: "ready" in server.cli("job", "logs", job_id).stdout, 60, what="the job to start")
    ran = server.cli("job", "exec", job_id, "--", "sh", "-c", "id -u; pwd; pidof sleep >/dev/null")
    assert (ran.returncode, ran.stdout) == (0, f"{BARE_USER}\n/data\n"), ran.stderr
    server.cli("job", "cancel", job_id, check=True)
    assert wait_terminal(database_url, job_id) == "CANCELLED"


def test_a_job_in_its_own_image_is_cancelled_and_its_container_goes(
    server: ServerProcess, database_url: str, docker_client: Any, bare_image: str
) -> None:
    job_id = server.cli("job", "run", "--image", bare_image, "-c", "echo up; sleep 60", check=True).stdout.strip()
    eventually(lambda: "up" in server.cli("job", "logs", job_id).stdout, 60, what="the job to start")
    (container,) = docker_client.containers.list(filters={"label": f"hodei.job-id={job_id}"})
    assert container.image.tags == [bare_image]
    assert container.attrs["Mounts"][0]["Destination"] == "/opt/hodei-agent"
    assert container.attrs["Mounts"][0]["RW"] is False  # a job cannot change the agent
    server.cli("job", "cancel", job_id, check=True)
    assert wait_terminal(database_url, job_id) == "CANCELLED"
    eventually(lambda: _job_containers(docker_client, job_id) == [], 30)


@pytest.mark.parametrize(
    ("image", "pull", "error"),
    [
        ("nosuch.invalid/none:1", (), "cannot pull the job's image nosuch.invalid/none:1"),
        ("nosuch.invalid/none:1", ("--pull", "never"), "image nosuch.invalid/none:1 is not in the Docker engine"),
        # Held by the engine, pulled all the same: no registry has it.
        (BARE_IMAGE, ("--pull", "always"), f"cannot pull the job's image {BARE_IMAGE}"),
    ],
    ids=["missing", "never", "always"],
)
def test_an_image_that_cannot_be_pulled_fails_the_job_with_why(
    server: ServerProcess, database_url: str, bare_image: str, image: str, pull: tuple[str, ...], error: str
) -> None:
    result = server.cli("job", "run", "--image", image, *pull, "-c", "true", "--wait")
    assert result.returncode != 0
    job_id = result.stdout.strip()
    assert wait_terminal(database_url, job_id) == "FAILED"
    ((failure,),) = query(database_url, "SELECT error_message FROM jobs WHERE id = %s", (job_id,))
    assert error in failure, failure


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (("--provider", "local"), "provider local cannot run a job in an image of its own (--image): use docker, k"),
        (("--provider", "sim"), "provider sim cannot run a job in an image of its own (--image): use docker, kube"),
        (("--image", "Not An/Image"), "image must be an image reference such as python:3.12-slim"),
    ],
    ids=["local", "sim", "malformed"],
)
def test_an_image_where_it_cannot_run_is_refused_and_nothing_is_written(
    server: ServerProcess, database_url: str, options: tuple[str, ...], error: str
) -> None:
    events = query(database_url, "SELECT count(*) FROM domain_events")[0][0]
    refused = server.cli("job", "run", "--image", "busybox", "-c", "true", *options)
    assert refused.returncode != 0 and error in refused.stderr, refused.stderr
    assert query(database_url, "SELECT count(*) FROM domain_events")[0][0] == events


@pytest.fixture
def registry(docker_client: Any) -> Iterator[Registry]:
    """A registry of the test's own, whose images the engine has not pulled yet."""
    with Registry(docker_client) as serving:
        yield serving


def test_an_image_only_a_registry_has_is_pulled_and_pull_always_sees_its_tag_move(
    server: ServerProcess, database_url: str, docker_client: Any, bare_image: str, registry: Registry
) -> None:
    """The pull itself, not only its failures: the engine lacks the image, so the job's
    start pulls it; the next job runs what the engine holds, and `--pull always` asks the
    registry again and runs what the tag names now."""
    reference = registry.push_new(bare_image, "team/bare")

    def run(*options: str) -> str:
        job_id = server.cli("job", "run", "--image", reference, *options, "-c", 'echo "$GREETING"', check=True)
        assert wait_terminal(database_url, job_id.stdout.strip()) == "SUCCEEDED"
        return server.cli("job", "logs", job_id.stdout.strip(), check=True).stdout

    assert run() == "from-the-image\n"
    assert registry.pulls("team/bare") == 1 and registry.layers_sent > 0
    registry.push_new(bare_image, "team/bare", "ENV GREETING=moved")
    assert run() == "from-the-image\n"  # held by the engine: not pulled again
    assert registry.pulls("team/bare") == 1
    assert run("--pull", "always") == "moved\n"
    assert registry.pulls("team/bare") == 2


def test_a_job_cancelled_while_its_image_is_pulled_ends_at_once_and_leaves_no_container(
    server: ServerProcess, database_url: str, docker_client: Any, bare_image: str, registry: Registry
) -> None:
    """A pull that takes long (a big image, a slow registry) holds no one up: the job is
    cancelled at once, and the container its start makes once the pull ends goes."""
    reference = registry.push_new(bare_image, "team/slow")
    registry.hold()
    job_id = server.cli("job", "run", "--image", reference, "-c", "echo ran", check=True).stdout.strip()
    try:
        eventually(registry.held.is_set, 120, what="the pull to wait for its layer")
    except AssertionError as exc:  # once in a CI run of 2026-12-04: what the job did meanwhile
        raise AssertionError(f"{exc}\n{server.cli('job', 'describe', job_id).stdout}") from None
    server.cli("job", "cancel", job_id, check=True)
    assert wait_terminal(database_url, job_id, timeout=15) == "CANCELLED"
    registry.release()
    wait_settled(database_url, job_id)  # its provisioning went on until the pull ended
    ((container,),) = query(database_url, "SELECT provider_resource_id FROM workers WHERE job_id = %s", (job_id,))
    assert container, "the start made its container once the pull ended"
    eventually(lambda: _job_containers(docker_client, job_id) == [], 60, what="no container of the job")
    assert "ran" not in server.cli("job", "logs", job_id, check=True).stdout


def test_no_hodei_container_remains_and_every_worker_is_terminated(
    server: ServerProcess, database_url: str, docker_client: Any
) -> None:
    """Runs last in this module: the acceptance check after the whole Docker run."""
    eventually(lambda: hodei_containers(docker_client, database_url) == [], 30, what="no labelled container")
    assert query(database_url, "SELECT DISTINCT state FROM workers") == [("TERMINATED",)]


@pytest.fixture
def engine_link(tmp_path: Path) -> Iterator[Link]:
    """The Docker engine's socket behind a hop the test cuts and restores."""
    link = Link("/var/run/docker.sock", tmp_path / "docker.sock")
    link.up()
    yield link
    link.down()


def docker_through(link: Link, worker_image: str) -> dict[str, str]:
    """A Docker-only server that reaches the engine through ``link``."""
    return {
        "HODEI_DOCKER_ENABLED": "1",
        "HODEI_LOCAL_ENABLED": "0",
        "HODEI_DOCKER_HOST": f"unix://{link.path}",
        "HODEI_WORKER_IMAGE": worker_image,
    }


def test_a_stopped_engine_fails_jobs_fast_and_its_return_needs_no_restart(
    pg_server: str, template_database: str, tmp_path: Path, worker_image: str, engine_link: Link
) -> None:
    from conftest import new_database

    url = new_database(pg_server, template_database)
    link = engine_link
    with ServerProcess(url, tmp_path, docker_through(link, worker_image)) as server:
        first = server.cli(
            "job", "run", "--provider", "docker", "--command", "echo before", "--timeout", "30", "--wait"
        )
        assert first.returncode == 0, first.stderr
        link.down()
        failed = server.cli(
            "job", "run", "--provider", "docker", "--command", "echo during", "--timeout", "30", "--wait"
        )
        assert failed.returncode == 125, failed.stderr
        job_id = failed.stdout.strip()
        (reason,) = query(url, "SELECT error_message FROM jobs WHERE id = %s", (job_id,))[0]
        assert f"the Docker engine at unix://{link.path} is unreachable" in reason, reason
        health = server.cli("provider", "health", "docker")
        assert health.returncode == 1  # scripts and probes can rely on it
        assert "UNHEALTHY" in health.stdout
        link.up()
        again = server.cli("job", "run", "--provider", "docker", "--command", "echo after", "--timeout", "30", "--wait")
        assert again.returncode == 0, again.stderr
        assert "HEALTHY" in server.cli("provider", "get", "docker", check=True).stdout
        for (ended,) in query(url, "SELECT id::text FROM jobs"):
            wait_settled(url, ended)


def test_an_engine_outage_kills_no_running_job_and_leaves_no_container(
    pg_server: str, template_database: str, tmp_path: Path, worker_image: str, docker_client: Any, engine_link: Link
) -> None:
    """Nomad's #1859: after a Docker socket blip, jobs were marked dead while their
    containers ran on. Here one job runs through a 12 s outage of the engine's socket and
    another ends during it: both keep their result, and no container is left once the
    engine is back."""
    from conftest import new_database

    url = new_database(pg_server, template_database)
    link = engine_link
    env = {
        **docker_through(link, worker_image),
        "HODEI_HEARTBEAT_INTERVAL": "0.5",
        "HODEI_HEARTBEAT_TIMEOUT": "3",
        "HODEI_RECONCILE_INTERVAL": "2",
    }
    with ServerProcess(url, tmp_path, env) as server:
        through = server.cli("job", "run", "-p", "docker", "-c", "sleep 18; echo through", check=True).stdout.strip()
        during = server.cli("job", "run", "-p", "docker", "-c", "sleep 5; echo during", check=True).stdout.strip()
        for job_id in (through, during):
            wait_running(url, job_id, 60)
        link.down()
        cut = query(url, "SELECT now()")[0][0]
        time.sleep(12)
        assert query(url, "SELECT state, exit_code, completed_at > %s FROM jobs WHERE id = %s", (cut, during)) == [
            ("SUCCEEDED", 0, True)
        ]
        assert query(url, "SELECT state FROM jobs WHERE id = %s", (through,)) == [("RUNNING",)]
        # The job that ended meanwhile is released all the same: its worker terminated (its
        # slot free), its saga completed, its container left for the engine's return.
        wait_settled(url, during, 30)
        assert query(url, "SELECT state FROM sagas WHERE correlation_id = %s ORDER BY started_at", (during,)) == [
            ("COMPLETED",),
            ("COMPLETED",),
        ]
        assert worker_ended_because(url, during).startswith(
            "job finished; its resource is removed once its provider answers (the Docker engine"
        )
        left = docker_client.containers.list(all=True, sparse=True, filters={"label": f"hodei.job-id={during}"})
        assert len(left) == 1
        link.up()
        assert wait_terminal(url, through, timeout=60) == "SUCCEEDED"
        for job_id, line in ((through, "through"), (during, "during")):
            wait_settled(url, job_id, 60)
            assert server.cli("job", "logs", job_id, check=True).stdout == f"{line}\n"
            assert query(url, "SELECT state FROM workers WHERE job_id = %s", (job_id,)) == [("TERMINATED",)]
        eventually(lambda: hodei_containers(docker_client, url) == [], 30, what="every container removed")
