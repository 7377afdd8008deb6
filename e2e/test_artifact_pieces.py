"""An artifact that takes many pieces on its way, under the default limits: it arrives
whole, and bytes changed on the server's disk are refused by the job that fetches them
(the limits' own tests keep theirs small: e2e/test_artifacts.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from hodei.testing import ServerProcess, query, wait_settled

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(database_url, tmp_path_factory.mktemp("logs")) as process:
        yield process


def test_a_file_of_many_pieces_arrives_whole_and_changed_bytes_are_refused(
    server: ServerProcess, tmp_path: Path
) -> None:
    """10 MiB (four pieces, each hashed and written while the next is received) fetched by
    a job and saved by `job artifacts --save` as stored; the same file changed on the
    server's disk is refused by its digest: the job does not start, the CLI saves nothing."""
    made = server.cli(
        *("job", "run", "-p", "local", "--artifact", "big.bin", "--wait"),
        *("--command", "head -c 10485760 /dev/urandom > big.bin"),
    )
    assert made.returncode == 0, made.stderr
    first = made.stdout.strip()
    wait_settled(server.database_url, first)
    stored = server.log_dir / "artifacts" / first
    (original,) = stored.rglob("big.bin")
    digest = hashlib.sha256(original.read_bytes()).hexdigest()
    fetched = server.cli(
        *("job", "run", "-p", "local", "--after", first, "--fetch-artifacts", "--wait"),
        *("--command", f"sha256sum artifacts/{first}/big.bin"),
    )
    assert fetched.returncode == 0, fetched.stderr
    assert server.cli("job", "logs", fetched.stdout.strip()).stdout.split()[0] == digest
    saved = server.cli("job", "artifacts", first, "--save", str(tmp_path))
    assert saved.returncode == 0, saved.stderr
    assert hashlib.sha256((tmp_path / "big.bin").read_bytes()).hexdigest() == digest
    with original.open("r+b") as changed:
        changed.seek(5 << 20)
        byte = changed.read(1)[0]
        changed.seek(5 << 20)
        changed.write(bytes([byte ^ 0xFF]))  # another byte, whatever it was
    refused = server.cli(
        "job", "run", "-p", "local", "--after", first, "--fetch-artifacts", "--command", "echo ran", "--wait"
    )
    assert refused.returncode == 126, refused.stderr
    job_id = refused.stdout.strip()
    wait_settled(server.database_url, job_id)
    ((error,),) = query(server.database_url, "SELECT error_message FROM jobs WHERE id = %s", (job_id,))
    assert f"artifact big.bin of job {first}: its bytes are not those stored" in error
    assert "ran" not in server.cli("job", "logs", job_id).stdout
    again = server.cli("job", "artifacts", first, "--save", str(tmp_path / "again"))
    assert again.returncode == 2
    assert "artifact big.bin: the bytes read are not those stored (SHA-256 differs)" in again.stderr
    assert not (tmp_path / "again" / "big.bin").exists()  # nothing saved half-way
