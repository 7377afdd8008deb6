"""Every command's -o json output against its documented shape (hodei/cli/shapes.py,
printed by `hodei-jobs-cli schema COMMAND`): every field present, nothing else, numbers
as numbers. One test per command, on a real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from hodei.cli.shapes import SHAPES
from hodei.testing import ServerProcess, query, wait_running, wait_settled

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(database_url, tmp_path_factory.mktemp("logs")) as process:
        yield process


@pytest.fixture(scope="module")
def finished(server: ServerProcess) -> str:
    """A job that failed, with output on both streams."""
    ran = server.cli("job", "run", "--provider", "local", "--command", "echo out; echo err >&2; exit 2", "--wait")
    job_id = ran.stdout.strip()
    wait_settled(server.database_url, job_id, 60)
    return job_id


def documents(shape: str, stdout: str) -> list[Any]:
    _, lines = SHAPES[shape]
    return [json.loads(line) for line in stdout.splitlines()] if lines else [json.loads(stdout)]


def check(server: ServerProcess, shape: str, *args: str, code: int = 0) -> list[Any]:
    result = server.cli("-o", "json", *args)  # before a `--` (job exec: what follows is the command)
    assert result.returncode == code, result.stderr
    found = documents(shape, result.stdout)
    assert found, f"`{' '.join(args)}` printed nothing"
    schema, _ = SHAPES[shape]
    validator = Draft202012Validator(schema)
    for document in found:
        errors = sorted(validator.iter_errors(document), key=str)
        assert not errors, f"{shape}: {errors[0].message} at {list(errors[0].absolute_path)}"
    return found


# (shape, command line, exit code); {job}: a finished job, {saga}: one of its sagas,
# {running}: a job running now, {held}: a job submitted held, {artifacts}: a finished job that left a file,
# {outputs}: one that left an output.
PROVIDER = "provider get|enable|disable|health|capacity"
CRON = "cron create|get|pause|resume|delete"
POOL = "pool set|get|delete"
LIMIT = "limit set|get|delete"
CASES: list[tuple[str, list[str], int]] = [
    ("job run", ["job", "run", "--provider", "local", "--command", "true"], 0),
    ("job run --dry-run", ["job", "run", "--provider", "local", "--command", "true", "--dry-run"], 0),
    ("job run --wait", ["job", "run", "--provider", "local", "--command", "exit 3", "--wait"], 3),
    ("job run --array", ["job", "run", "--provider", "local", "--command", "true", "--array", "0-1"], 0),
    ("job run --file (several jobs)", ["job", "run", "--file", "{pipeline}"], 0),
    ("job run --file (several jobs) --dry-run", ["job", "run", "--file", "{pipeline}", "--dry-run"], 0),
    ("job run --follow", ["job", "run", "--provider", "local", "--command", "echo hi", "--follow"], 0),
    ("job get", ["job", "get", "{job}"], 0),
    ("job list", ["job", "list"], 0),
    ("job top", ["job", "top", "{started}"], 0),
    ("job cancel", ["job", "cancel", "{running}"], 0),
    ("job retry", ["job", "retry", "{job}"], 0),
    ("job retry (several)", ["job", "retry", "{job}", "{artifacts}"], 0),
    ("job workflow", ["job", "workflow", "{workflow}"], 0),
    ("job hold|release|update|signal", ["job", "hold", "{held}", "--reason", "later"], 0),
    ("job hold|release|update|signal", ["job", "update", "{held}", "--priority", "-5"], 0),
    ("job hold|release|update|signal", ["job", "release", "{held}"], 0),
    ("job hold|release|update|signal", ["job", "signal", "{started}", "--signal", "TERM"], 0),
    ("job exec", ["job", "exec", "{started}", "--", "sh", "-c", "echo out; echo err >&2; exit 4"], 4),
    ("job watch", ["job", "watch", "{job}"], 2),
    ("job logs", ["job", "logs", "{job}"], 0),
    ("job artifacts", ["job", "artifacts", "{artifacts}"], 0),
    ("job output", ["job", "output", "{outputs}"], 0),
    ("job output", ["job", "output", "{outputs}", "version"], 0),
    ("job events", ["job", "events", "{job}"], 0),
    ("job describe", ["job", "describe", "{job}"], 0),
    ("job history", ["job", "history", "{job}"], 0),
    ("saga list", ["saga", "list", "--job", "{job}"], 0),
    ("saga show", ["saga", "show", "{saga}"], 0),
    ("provider list", ["provider", "list"], 0),
    (PROVIDER, ["provider", "get", "local"], 0),
    (PROVIDER, ["provider", "enable", "local"], 0),
    (PROVIDER, ["provider", "health", "local"], 0),
    (PROVIDER, ["provider", "capacity", "local", "16"], 0),
    ("queue", ["queue"], 0),
    ("worker list", ["worker", "list"], 0),
    ("metrics", ["metrics"], 0),
    ("outbox dead-letters", ["outbox", "dead-letters"], 0),
    ("outbox redrive", ["outbox", "redrive", "--all"], 0),
    ("whoami", ["whoami"], 0),
    (CRON, ["cron", "create", "nightly", "--schedule", "0 3 * * *", "-p", "local", "-c", "true"], 0),
    (CRON, ["cron", "get", "nightly"], 0),
    (CRON, ["cron", "pause", "nightly"], 0),
    (CRON, ["cron", "resume", "nightly"], 0),
    ("cron list", ["cron", "list"], 0),
    ("cron run", ["cron", "run", "nightly"], 0),
    ("cron run", ["cron", "run", "nightly", "--env", "REGION=us"], 0),
    ("cron run --wait", ["cron", "run", "nightly", "--wait"], 0),
    ("cron backfill", ["cron", "backfill", "nightly", "--since", "3d"], 0),
    ("cron run --follow", ["cron", "run", "nightly", "--follow"], 0),
    (CRON, ["cron", "delete", "nightly"], 0),
    (CRON, ["cron", "create", "nightly-pipeline", "--schedule", "0 3 * * *", "--file", "{pipeline}"], 0),
    ("cron run (a pipeline)", ["cron", "run", "nightly-pipeline"], 0),
    (POOL, ["pool", "set", "shapes", "2"], 0),
    (POOL, ["pool", "get", "shapes"], 0),
    ("pool list", ["pool", "list"], 0),
    (POOL, ["pool", "delete", "shapes"], 0),
    (LIMIT, ["limit", "set", "shapes", "3", "--max-submitted", "100"], 0),
    (LIMIT, ["limit", "get", "shapes"], 0),
    ("limit list", ["limit", "list"], 0),
    (LIMIT, ["limit", "delete", "shapes"], 0),
    # Port 9 (discard) refuses on loopback: the test's first attempt fails at once (exit 1).
    ("webhook set|rotate", ["webhook", "set", "shapes", "--url", "http://127.0.0.1:9/hook"], 0),
    ("webhook set|rotate", ["webhook", "rotate", "shapes", "--overlap", "1h"], 0),
    ("webhook get", ["webhook", "get", "shapes"], 0),
    ("webhook list", ["webhook", "list"], 0),
    ("webhook test|redeliver", ["webhook", "test", "shapes"], 1),
    ("webhook delete", ["webhook", "delete", "shapes"], 0),
    ("audit", ["audit", "--since", "1h"], 0),
    ("report", ["report", "--by", "label:team"], 0),
    ("config view", ["config", "view"], 0),
    ("config profiles", ["config", "profiles"], 0),
]


def filled(server: ServerProcess, job_id: str, argv: list[str]) -> list[str]:
    def one(arg: str) -> str:
        if arg == "{job}":
            return job_id
        if arg == "{saga}":
            sagas = query(server.database_url, "SELECT id::text FROM sagas WHERE correlation_id = %s", (job_id,))
            return str(sagas[0][0])
        if arg == "{held}":
            held = server.cli("job", "run", "--provider", "local", "--hold", "--command", "true", check=True)
            return held.stdout.strip()
        if arg == "{artifacts}":
            run = ["job", "run", "--provider", "local", "--command", "echo a > a.txt", "--artifact", "a.txt", "--wait"]
            return server.cli(*run, check=True).stdout.strip()
        if arg == "{outputs}":
            run = ["job", "run", "--provider", "local", "--command", 'echo version=1.2 >> "$HODEI_OUTPUT"', "--wait"]
            return server.cli(*run, check=True).stdout.strip()
        if arg == "{pipeline}":  # two jobs, the second after the first
            path = server.log_dir / "pipeline.yaml"
            path.write_text("name: a\ncommand: 'true'\n---\nname: b\ncommand: 'true'\nafter: {a: ok}\n")
            return str(path)
        if arg == "{workflow}":  # a pipeline's second job, ended
            submitted = server.cli("job", "run", "--file", one("{pipeline}"), "--wait", check=True)
            return submitted.stdout.split()[1]
        if arg == "{running}":
            started = server.cli("job", "run", "--provider", "local", "--command", "sleep 60", check=True)
            return started.stdout.strip()
        if arg == "{started}":  # RUNNING already
            started = server.cli("job", "run", "--provider", "local", "--command", "sleep 60", check=True)
            wait_running(server.database_url, started.stdout.strip())
            return started.stdout.strip()
        return arg

    return [one(arg) for arg in argv]


def test_every_shape_has_a_test() -> None:
    assert set(SHAPES) == {shape for shape, _, _ in CASES} | {"token create", "token list", "token revoke"}


@pytest.mark.parametrize(("shape", "argv", "code"), CASES, ids=[" ".join(argv) for _, argv, _ in CASES])
def test_json_output_has_its_documented_shape(
    shape: str, argv: list[str], code: int, server: ServerProcess, finished: str
) -> None:
    check(server, shape, *filled(server, finished, argv), code=code)


def test_token_commands_have_their_documented_shapes(fresh_database_url: str, tmp_path: Path) -> None:
    with ServerProcess(fresh_database_url, tmp_path) as server:
        (created,) = check(server, "token create", "token", "create", "--name", "root", "--role", "admin")
        admin = ("--token", created["token"])
        check(server, "token create", *admin, "token", "create", "--name", "ci", "--role", "read", "--expires", "1d")
        (listed,) = check(server, "token list", *admin, "token", "list")
        assert {token["name"] for token in listed} == {"root", "ci"}
        check(server, "token revoke", *admin, "token", "revoke", "ci")
