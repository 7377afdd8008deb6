"""The CLI's own description of itself: `--help` of every command says what each of its
options and arguments is."""

from __future__ import annotations

import argparse
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hodei.cli.jobs import job_spec
from hodei.cli.main import parser
from hodei.errors import InvalidInput


def _unexplained(command: argparse.ArgumentParser, path: tuple[str, ...]) -> Iterator[str]:
    for action in command._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _unexplained(sub, (*path, name))
        elif action.help is None:
            yield f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}"


def test_every_option_and_argument_of_every_command_has_its_help() -> None:
    assert list(_unexplained(parser(), ("hodei-jobs-cli",))) == []


HUGE = "99999999999999999999"


@pytest.mark.parametrize(
    "argv",
    [
        ["job", "list", "--since", HUGE],
        ["job", "logs", "some-job", "--since", f"{HUGE}d"],
        ["job", "history", "some-job", "--at", HUGE],
        ["job", "run", "--command", "true", "--begin", f"{HUGE}w"],
    ],
    ids=["list --since", "logs --since", "history --at", "run --begin"],
)
def test_a_duration_past_the_calendar_is_refused_in_words(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """It overflowed a date: the CLI died with a traceback (OverflowError)."""
    with pytest.raises(SystemExit) as ended:
        parser().parse_args(argv)
    assert ended.value.code == 2
    assert "that stays within the years 1 to 9999, got" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("given", "seconds"),
    [
        *[("30", 30.0), ("1.5", 1.5), ("-5", -5.0), ("90s", 90.0), ("10m", 600.0), ("2h", 7200.0), ("1d", 86400.0)],
        *[("1h30m", 5400.0), ("1m30s", 90.0), ("2d 12h", 216000.0), ("1.5h", 5400.0)],  # as Go's, systemd's
    ],
)
def test_a_jobs_times_take_seconds_or_a_duration(given: str, seconds: float) -> None:
    """As --begin and --grace do; a number that is not a time (-5) is left for the check
    that names the option."""
    argv = ["job", "run", "-c", "true", "--timeout", given, "--queue-timeout", given, "--retry-backoff", given]
    args = parser().parse_args(argv)
    assert (args.timeout, args.queue_timeout, args.retry_backoff) == (seconds, seconds, seconds)


@pytest.mark.parametrize("given", ["10 minutes", "1h30", "h", "1x", "1h-30m"])
def test_a_time_that_is_neither_is_refused_naming_the_option(capsys: pytest.CaptureFixture[str], given: str) -> None:
    with pytest.raises(SystemExit) as ended:
        parser().parse_args(["job", "run", "-c", "true", "--timeout", given])
    assert ended.value.code == 2
    assert f"argument --timeout/-t: takes seconds or a duration such as 30s, 2m or 1h30m, got '{given}'" in (
        capsys.readouterr().err
    )


def test_a_script_too_long_for_bash_c_is_refused_naming_the_file_and_a_way(tmp_path: Path) -> None:
    """Its text is one argument of `bash -c`: the spec's check would say only "argument 2"."""
    script = tmp_path / "long.sh"
    script.write_text("echo x;" * 10_000)
    with pytest.raises(InvalidInput, match=f"--script {script} is 70000 bytes; the limit is 65536 .* --command bash"):
        job_spec(parser().parse_args(["job", "run", "--script", str(script)]))
    script.write_text("echo x;" * 9_000)
    spec, _ = job_spec(parser().parse_args(["job", "run", "--script", str(script)]))
    assert (spec.command, spec.args, spec.problems()) == ("bash", ("-c", "echo x;" * 9_000), [])


def test_retry_on_terms_come_from_each_flag_and_each_comma_in_one_form() -> None:
    argv = ["job", "run", "-c", "true", "--retry", "1", "--retry-on", "75, !2,,", "--retry-on", "TIMEOUT"]
    argv += ["--retry-on", "75"]
    spec, _ = job_spec(parser().parse_args(argv))
    assert (spec.retry_on, spec.problems()) == (("75", "!2", "timeout"), [])


def test_input_exclude_without_input_is_refused() -> None:
    args = parser().parse_args(["job", "run", "-c", "true", "--input-exclude", ".git"])
    with pytest.raises(InvalidInput, match=r"^--input-exclude leaves paths out of --input: give the files with"):
        args.prepare(args)


def _file_request(tmp_path: Path, text: str, *flags: str) -> Any:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    args = parser().parse_args(["job", "run", "--file", str(path), *flags])
    args.prepare(args)
    return args.request


def test_a_job_file_is_its_spec_with_sizes_and_durations_as_people_write_them(tmp_path: Path) -> None:
    request = _file_request(
        tmp_path,
        "name: report\ncommand: echo $REGION\nenv: {REGION: eu}\ntimeout_seconds: 10m\n"
        "resources: {memory_bytes: 256Mi, cpu_cores: 0.5}\nlabels: {team: data}\nsecret_names: [TOKEN]\n"
        "tolerations: [gpu]\n",
        "--secret",
        "TOKEN=abcd1234",
        "--wait",
    )
    spec = request.spec
    assert (spec.name, spec.command, dict(spec.env), spec.timeout_seconds) == (
        "report",
        "echo $REGION",
        {"REGION": "eu"},
        600,
    )
    assert (spec.resources.memory_bytes, spec.resources.cpu_cores, dict(spec.labels)) == (
        256 * 2**20,
        0.5,
        {"team": "data"},
    )
    assert (list(spec.secret_names), dict(request.secrets), list(spec.tolerations)) == (
        ["TOKEN"],
        {"TOKEN": "abcd1234"},
        ["gpu"],
    )
    # Exit codes are numbers to YAML; a rule's terms as --retry-on's.
    retried = _file_request(tmp_path, "command: 'true'\nretries: 2\nretry_on: [75, ' timeout', '!2']\n").spec
    assert list(retried.retry_on) == ["75", " timeout", "!2"]  # the server keeps them canonical
    # JSON is YAML: `job get -o json`'s spec, as it prints it.
    printed = '{"command": "true", "timeout_seconds": 30.0, "resources": {"memory_bytes": 0}}'
    assert _file_request(tmp_path, printed).spec.timeout_seconds == 30


@pytest.mark.parametrize(
    ("text", "flags", "says"),
    [
        ("comand: true", (), "unknown field comand; a job's fields are"),
        (
            "command: 'true'\nenv: {A: 1}",
            (),
            'env must map names to strings (quote a value YAML would read otherwise: "1", "true"), got {\'A\': 1}',
        ),
        ("command: [a, b]", (), "command must be a string"),
        (
            "command: true",
            (),
            'command must be a string (quote a value YAML would read otherwise: "1", "true"), got True',
        ),
        ("name: x", (), "command is needed"),
        ("command: 'true'\ntimeout_seconds: soon", (), "timeout_seconds must be seconds or a duration"),
        ("command: 'true'\nresources: {memory: 1G}", (), "unknown field resources.memory"),
        ("command: 'true'\nresources: {memory_bytes: lots}", (), "malformed resources.memory_bytes in"),
        ("command: 'true'\nmax_attempts: 2.5", (), "max_attempts must be a whole number, got 2.5"),
        ("- command: true", (), "must hold a job's spec (a mapping of its fields"),
        ("command: 'true\n  x: [", (), "is not YAML or JSON at line"),
        (
            "command: 'true'\nsecret_names: [TOKEN, KEY]",
            (),
            "names the secrets KEY, TOKEN: give the values with --secret",
        ),
        (
            "command: 'true'",
            ("--timeout", "5"),
            "--file gives the job's spec: --timeout would change it; edit the file",
        ),
        (
            "command: 'true'",
            ("-c", "false", "-l", "a=b"),
            "--file gives the job's spec: --command, --label would change it",
        ),
        ("command: 'true'\ntimeout_seconds: -1", (), "invalid job: timeout must be a positive number of seconds"),
        ("command: 'true'\nretries: 1\nretry_on: [true]", (), "retry_on must be a list of exit codes, ranges and"),
        ("command: 'true'\nretries: 1\nretry_on: 75", (), "retry_on must be a list of exit codes, ranges and"),
        ("command: 'true'\nretry_on: [75]", (), "--retry-on says which failures are retried, and the job has no"),
        ("command: 'true'\nretries: 1\nretry_on: [300]", (), "--retry-on term `300`: expected an exit code"),
    ],
)
def test_a_job_file_is_refused_naming_what_is_wrong(
    tmp_path: Path, text: str, flags: tuple[str, ...], says: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        _file_request(tmp_path, text, *flags)
    assert says in refused.value.message, refused.value.message


def test_a_job_file_is_read_from_standard_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("command: echo piped\n"))
    args = parser().parse_args(["job", "run", "--file", "-"])
    args.prepare(args)
    assert args.request.spec.command == "echo piped"


def test_a_cron_job_takes_its_jobs_spec_from_a_file_too(tmp_path: Path) -> None:
    """`cron create NAME --schedule … --file job.yaml`: its jobs are named after it unless the
    file names them; the file is their spec, as with `job run --file`."""
    path = tmp_path / "nightly.yaml"
    path.write_text("command: ./backup.sh\nprovider: local\ntimeout_seconds: 1h\n")
    args = parser().parse_args(["cron", "create", "nightly", "--schedule", "0 3 * * *", "--file", str(path)])
    args.prepare(args)
    spec = args.request.spec
    assert (spec.name, spec.command, spec.timeout_seconds, args.request.schedule) == (
        "nightly",
        "./backup.sh",
        3600,
        "0 3 * * *",
    )
    flags = ["cron", "create", "nightly", "--schedule", "0 3 * * *", "--file", str(path), "--retry", "2"]
    args = parser().parse_args(flags)
    with pytest.raises(InvalidInput, match=r"^--file gives the job's spec: --retry would change it"):
        args.prepare(args)


def test_job_logs_since_is_of_its_lines_not_of_the_jobs_it_selects() -> None:
    """`job logs -l team=x --since 10m`: the lines printed in the last ten minutes of every
    job of the team, however long ago each was submitted (the jobs' selection took it as
    "submitted since" too)."""
    from hodei.cli.jobs import list_request, selects

    logs = parser().parse_args(["job", "logs", "-l", "team=x", "--since", "10m"])
    assert selects(logs) and not list_request(logs, 10, 0).HasField("created_since")
    assert not selects(parser().parse_args(["job", "logs", "some-job", "--since", "10m"]))
    listed = parser().parse_args(["job", "list", "--since", "10m"])
    assert list_request(listed, 10, 0).HasField("created_since")
    assert selects(parser().parse_args(["job", "cancel", "--since", "10m"]))
