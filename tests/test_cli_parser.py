"""The CLI's own description of itself: `--help` of every command says what each of its
options and arguments is."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

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
