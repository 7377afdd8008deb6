"""A non-editable install carries the migrations and applies them."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from e2e.seed import SEED_TABLES
from hodei.testing import query

ROOT = Path(__file__).resolve().parent.parent


def test_a_wheel_install_migrates_an_empty_database(pg_server: str, tmp_path: Path) -> None:
    from hodei.devdb import create_database

    venv = tmp_path / "venv"
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
        cwd=tmp_path,  # not the checkout, whose hodei/ would come first
    ).stdout
    assert where.startswith(str(venv)), where

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
