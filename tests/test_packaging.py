"""A non-editable install carries the migrations and applies them, and runs as the systemd
unit of deploy/ runs it."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from e2e.seed import SEED_TABLES
from hodei.config import VARIABLES
from hodei.testing import ServerProcess, make_pki, query

ROOT = Path(__file__).resolve().parent.parent
UNIT, SETTINGS = ROOT / "deploy" / "hodei-server.service", ROOT / "deploy" / "hodei-server.env"
# What systemd gives a service's processes (no HOME, no USER without User=; the unit's User=root
# brings them, but the server must not need them).
SYSTEMD_ENVIRONMENT = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """hodei-jobs installed from the checkout as a wheel, in a virtualenv of its own."""
    venv = tmp_path_factory.mktemp("installed") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--no-deps", str(ROOT)], check=True, timeout=300, capture_output=True)
    # The dependencies come from the test's environment, after the fresh install (a .pth
    # adds the directory without running its own .pth files: no editable hodei there).
    site = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "zz-test-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import hodei; print(hodei.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=venv.parent,  # not the checkout, whose hodei/ would come first
    ).stdout
    assert where.startswith(str(venv)), where
    return venv


def test_a_wheel_install_migrates_an_empty_database(venv: Path, pg_server: str, tmp_path: Path) -> None:
    from hodei.devdb import create_database

    create_database(pg_server, "hodei_packaging")
    url = pg_server.rpartition("/")[0] + "/hodei_packaging"
    result = subprocess.run(
        [str(venv / "bin" / "hodei-server"), "migrate"],
        capture_output=True,
        text=True,
        env={**os.environ, "DATABASE_URL": url},
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "001_schema.sql, 002_security.sql" in result.stdout
    tables = query(url, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
    assert sorted(row[0] for row in tables) == sorted(SEED_TABLES)


def environment_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as systemd's EnvironmentFile= reads the plain ones."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return dict(line.split("=", 1) for line in lines if line and not line.startswith(("#", ";")))


def test_the_unit_is_one_systemd_takes(venv: Path, tmp_path: Path) -> None:
    """`systemd-analyze verify`: its keys, values and command (here the installed one)."""
    unit = configparser.ConfigParser(interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(UNIT)
    service = unit["Service"]
    assert service["ExecStart"] == "/opt/hodei/bin/hodei-server serve"
    assert service["EnvironmentFile"] == "/etc/hodei/server.env"
    assert service["KillMode"] == "mixed"  # SIGTERM to the server alone
    assert service["RestartPreventExitStatus"] == "78"  # misconfigured (e2e/test_misconfiguration.py)
    here = UNIT.read_text().replace("/opt/hodei/bin", str(venv / "bin")).replace("/etc/hodei/server.env", str(SETTINGS))
    (tmp_path / "hodei-server.service").write_text(here)
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "hodei-server.service")], capture_output=True, text=True
    )
    assert (verified.returncode, verified.stdout + verified.stderr) == (0, "")


def test_the_unit_and_its_settings_run_a_local_job(venv: Path, fresh_database_url: str, tmp_path: Path) -> None:
    """The installed server with the settings of deploy/hodei-server.env and nothing more of the
    environment than systemd gives: tokens required, TLS, a uid of its own for each local job."""
    settings = environment_file(SETTINGS)
    assert set(settings) <= set(VARIABLES), set(settings) - set(VARIABLES)
    state = tmp_path / "state"  # stands for /var/lib/hodei (StateDirectory=hodei, mode 0700)
    state.mkdir(mode=0o700)
    assert settings["HODEI_LOG_DIR"] == "/var/lib/hodei/logs"
    pki = make_pki(tmp_path / "tls")
    assert {settings["HODEI_TLS_CERT"], settings["HODEI_TLS_KEY"]} == {
        "/etc/hodei/tls/server.pem",
        "/etc/hodei/tls/server-key.pem",
    }
    here = {
        **{name: value for name, value in settings.items() if name != "DATABASE_URL"},
        "HODEI_LOG_DIR": str(state / "logs"),
        "HODEI_TLS_CERT": str(pki.server_cert),
        "HODEI_TLS_KEY": str(pki.server_key),
    }
    made = subprocess.run(
        [str(venv / "bin" / "hodei-server"), "token", "create", "--name", "ops", "--role", "admin"],
        capture_output=True,
        text=True,
        env={**SYSTEMD_ENVIRONMENT, **here, "DATABASE_URL": fresh_database_url},
        check=True,
    )
    token = made.stdout.strip().splitlines()[-1]
    with ServerProcess(
        fresh_database_url,
        tmp_path,
        here,
        tls=pki,
        token=token,
        program=venv / "bin" / "hodei-server",
        base=SYSTEMD_ENVIRONMENT,
    ) as server:
        job = server.cli("job", "run", "-p", "local", "--command", "id -u; echo $TMPDIR", "--wait", check=True)
        job_id = job.stdout.strip()
        uid, home = server.cli("job", "logs", job_id, check=True).stdout.split()
        first, last = map(int, settings["HODEI_LOCAL_RUN_AS"].split("-"))
        assert first <= int(uid) <= last and home.startswith("/tmp/hodei-worker-"), (uid, home)
        anonymous = subprocess.run(
            [str(venv / "bin" / "hodei-jobs-cli"), "--server", server.address, "--tls-ca", str(pki.ca), "job", "list"],
            capture_output=True,
            text=True,
            env={**SYSTEMD_ENVIRONMENT, "HODEI_CONFIG": "/nonexistent/hodei.toml"},
        )
        assert anonymous.returncode != 0 and "UNAUTHENTICATED" in anonymous.stderr, anonymous.stderr
        assert list((state / "logs").glob(f"{job_id}*")), "the job's log is in the state directory"
