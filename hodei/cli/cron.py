"""``hodei-jobs-cli cron …``: jobs submitted again at every time of a schedule."""

from __future__ import annotations

import argparse
from typing import Any

from hodei._proto import common_pb2, cron_pb2
from hodei.cli.client import Client
from hodei.cli.jobs import (
    add_idempotency_key,
    add_spec_file,
    add_spec_options,
    add_wait_options,
    file_specs,
    job_spec,
    several_submitted,
    submit,
    submitted,
)
from hodei.cli.parsing import duration, parse_env, since
from hodei.cli.terminal import Terminal, stamp, when
from hodei.domain.base import check_name
from hodei.domain.cron import CRON_LABEL, CRON_TIME_VARIABLE, Concurrency, Definition, Schedule
from hodei.domain.workflow import WORKFLOW_LABEL
from hodei.errors import InvalidInput
from hodei.wire import message_dict, spec_to_proto

SCHEDULE_HELP = (
    "five cron fields (minute hour day-of-month month day-of-week, e.g. '0 3 * * *'), a nickname "
    "(@hourly, @daily, @weekly, @monthly, @yearly) or @every DURATION (30s, 5m, 2h, 1h30m)"
)


def create_request(args: argparse.Namespace) -> None:
    """Builds ``args.request`` before any connection, refusing what the server would (its
    own rules: ``Definition.validate``), as ``job run`` does."""
    if args.file is not None:
        specs, secrets = file_specs(args, default_name=args.name_of_cron)
    else:
        spec, secrets = job_spec(args, default_name=args.name_of_cron)
        specs = [spec]
    Definition(
        schedule=Schedule(args.schedule, args.time_zone or "UTC"),
        concurrency=Concurrency(args.concurrency),
        starting_deadline_seconds=args.starting_deadline or 0.0,
        spec=specs[0],
        more_specs=tuple(specs[1:]),
    ).validate(secrets)
    check_name(args.name_of_cron, "a cron job")
    args.request = cron_pb2.CreateCronJobRequest(
        name=args.name_of_cron,
        schedule=args.schedule,
        time_zone=args.time_zone or "",
        concurrency=args.concurrency,
        starting_deadline_seconds=args.starting_deadline or 0.0,
        spec=spec_to_proto(specs[0]),
        more_specs=[spec_to_proto(spec) for spec in specs[1:]],
        secrets=secrets,
        replace=args.replace,
    )


def create(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    return _show(term, client.call(client.cron.CreateCronJob, args.request))


def list_cron_jobs(client: Client, term: Terminal, _: argparse.Namespace) -> int:
    found = client.call(client.cron.ListCronJobs, cron_pb2.ListCronJobsRequest()).cron_jobs
    if term.json:
        term.data({"cron_jobs": [message_dict(cron) for cron in found]})
        return 0
    term.table(
        ["NAME", "SCHEDULE", "NEXT", "LAST JOB", "STATE", "OWNER"],
        [
            [
                cron.name,
                cron.schedule + ("" if cron.time_zone == "UTC" else f" ({cron.time_zone})"),
                "paused" if cron.paused else _next(cron),
                cron.last_job_id or "-",
                cron.last_job_state or "-",
                cron.owner,
            ]
            for cron in found
        ],
    )
    return 0


def _next(cron: cron_pb2.CronJob) -> str:
    return stamp(cron.next_times[0], "seconds") if cron.next_times else "-"


def get(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    return _show(term, client.call(client.cron.GetCronJob, cron_pb2.CronJobRequest(name=args.name)))


def change(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    method = {
        "pause": client.cron.PauseCronJob,
        "resume": client.cron.ResumeCronJob,
        "delete": client.cron.DeleteCronJob,
    }[args.action]
    cron = client.call(method, cron_pb2.CronJobRequest(name=args.name))
    if args.action == "delete":
        if term.json:
            term.data(message_dict(cron))
        else:
            term.success(f"cron job {cron.name} deleted; its jobs stay (`job list -l {CRON_LABEL}={cron.name}`)")
        return 0
    return _show(term, cron)


def run(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    request = cron_pb2.RunCronJobRequest(name=args.name, env=parse_env(args.env or []))
    if args.follow:
        pipeline = client.call(client.cron.GetCronJob, cron_pb2.CronJobRequest(name=args.name)).more_specs
        if pipeline:
            raise InvalidInput(
                f"--follow is for one job; cron job {args.name} runs {len(pipeline) + 1} together "
                f"(--wait waits for them; `job logs -l {WORKFLOW_LABEL}=ID --follow` follows theirs)"
            )
    ran = submit(client, term, client.cron.RunCronJob, request, args.idempotency_key)
    if len(ran.job_ids) <= 1:
        return submitted(client, term, args, ran)
    job_ids = list(ran.job_ids)
    answer = {"workflow_id": ran.job_id, "job_ids": job_ids, "already_submitted": ran.already_submitted}
    note = f"cron job {args.name} submitted {len(job_ids)} jobs (`job list -l {WORKFLOW_LABEL}={ran.job_id}`)"
    return several_submitted(client, term, args, answer, job_ids, note, job_ids)


def backfill(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    request = cron_pb2.BackfillCronJobRequest(name=args.name)
    request.since.FromDatetime(args.since)
    if args.until is not None:
        request.until.FromDatetime(args.until)
    runs = client.call(client.cron.BackfillCronJob, request).runs
    if term.json:
        term.data({"runs": [message_dict(run) for run in runs]})
        return 0
    if not runs:
        until = stamp(request.until, "seconds") if args.until is not None else "now"
        term.info(f"cron job {args.name} has no time from {stamp(request.since, 'seconds')} to {until}: nothing to run")
        return 0
    term.table(
        ["TIME", "JOB", "RUN"],
        [[stamp(run.time, "seconds"), run.job_ids[0], "had run" if run.already_run else "submitted"] for run in runs],
    )
    submitted = sum(not run.already_run for run in runs)
    term.info(
        f"{submitted} of {len(runs)} times submitted, {len(runs) - submitted} had run "
        f"(`job list -l {CRON_LABEL}={args.name}`)"
    )
    return 0


def _show(term: Terminal, cron: cron_pb2.CronJob) -> int:
    if term.json:
        term.data(message_dict(cron))
        return 0
    lines = [
        f"Cron job: {cron.name}",
        f"Schedule: {cron.schedule} - {cron.description}",
        f"Concurrency: {cron.concurrency}",
        f"Starting deadline: {f'{cron.starting_deadline_seconds:g}s' if cron.starting_deadline_seconds else 'none'}",
        f"State: {'paused' if cron.paused else 'active'} (since {when(cron, 'active_since', 'seconds')})",
        f"Owner: {cron.owner}",
        *_runs(cron),
        "Next: " + (", ".join(stamp(t, "seconds") for t in cron.next_times) or "-"),
        f"Last {'run' if cron.more_specs else 'job'}: {_last_job(cron)}",
        f"Not ended: {', '.join(cron.active_job_ids) or '-'}",
        f"Its jobs: job list -l {CRON_LABEL}={cron.name}",
    ]
    for line in lines:
        term.line(line)
    return 0


def _runs(cron: cron_pb2.CronJob) -> list[str]:
    """What each time runs: its job, or a pipeline's jobs with what each starts after."""
    specs = [cron.spec, *cron.more_specs]
    if len(specs) == 1:
        return [f"Runs: {_command(cron.spec)}"]
    lines = [f"Runs {len(specs)} jobs together (`job list -l {WORKFLOW_LABEL}=ID`, ID a run's first job):"]
    for spec in specs:
        after = ", ".join(f"{specs[int(ref[1:])].name}:{condition}" for ref, condition in spec.after.items())
        lines.append(f"  {spec.name}: {_command(spec)}" + (f", after {after}" if after else ""))
    return lines


def _command(spec: common_pb2.JobSpec) -> str:
    return f"{spec.command} {' '.join(spec.args)}".rstrip() + f" on {spec.provider or 'the default provider'}"


def _last_job(cron: cron_pb2.CronJob) -> str:
    if not cron.last_job_id:
        return "-"
    return f"{cron.last_job_id} {cron.last_job_state} (created {when(cron, 'last_job_created_at', 'seconds')})"


def add_commands(commands: Any) -> None:
    cron = commands.add_parser("cron", help="jobs submitted again at every time of a schedule").add_subparsers(
        dest="action", required=True
    )

    create_parser = cron.add_parser(
        "create",
        help="define a cron job: a job spec and a schedule",
        description=(
            f"Each time of the schedule submits a job of the spec, labelled {CRON_LABEL}=NAME, with "
            f"{CRON_TIME_VARIABLE} (the time it was scheduled for) in its environment, in the name of whoever "
            "defined the cron job. After an outage, the latest time missed runs once (within --starting-deadline)."
        ),
    )
    create_parser.add_argument("name_of_cron", metavar="NAME", help="1-63 letters, digits, '.', '_', '-'")
    create_parser.add_argument("--schedule", required=True, help=SCHEDULE_HELP)
    create_parser.add_argument(
        "--time-zone", "--tz", help="the IANA time zone the five fields are read in (default UTC), e.g. Europe/Madrid"
    )
    create_parser.add_argument(
        "--concurrency",
        choices=[policy.value for policy in Concurrency],
        default=Concurrency.ALLOW.value,
        help=(
            "while a job of an earlier time has not ended: allow (the default) starts the time's beside it, "
            "forbid skips the time, replace cancels that job and starts the time's"
        ),
    )
    create_parser.add_argument(
        "--starting-deadline",
        type=duration,
        metavar="DURATION",
        help="a time missed (the platform was down) still runs up to this late, e.g. 10m (default: however late)",
    )
    create_parser.add_argument("--replace", action="store_true", help="give an existing cron job this definition")
    spec_defaults = add_spec_options(create_parser, "the name of its jobs (default: the cron job's)")
    add_spec_file(create_parser)
    create_parser.set_defaults(handler=create, prepare=create_request, spec_defaults=spec_defaults)

    cron.add_parser("list", help="list cron jobs").set_defaults(handler=list_cron_jobs)
    for name, handler, text in (
        ("get", get, "show a cron job, its next times and its last job"),
        ("pause", change, "start no job until resumed"),
        ("resume", change, "start jobs again from the next time on"),
        ("delete", change, "delete a cron job (its jobs stay; its secrets are shredded)"),
        ("run", run, "submit a job of the cron job now; prints its id"),
    ):
        parser = cron.add_parser(name, help=text)
        parser.add_argument("name", metavar="NAME", help="the cron job's name")
        parser.set_defaults(handler=handler)
        if name == "run":
            parser.add_argument(
                "--env",
                "-e",
                action="append",
                help="KEY=VALUE[,KEY2=VALUE2] over the spec's, for this job only (Nomad's dispatch); repeatable",
            )
            add_idempotency_key(parser)
            add_wait_options(parser)

    backfill_parser = cron.add_parser(
        "backfill",
        help="run the times of its schedule in a range that never ran (Airflow's backfill)",
        description=(
            f"Submits, oldest first, the run of each time of the schedule from --since to --until (both included) "
            f"that never ran, as that time would have ({CRON_TIME_VARIABLE} is the time), in your name, whatever "
            "its concurrency policy; a time that ran is not run again, so the same backfill again submits only what "
            "is missing. At most 100 times at once; a time not come yet is refused."
        ),
    )
    backfill_parser.add_argument("name", metavar="NAME", help="the cron job's name")
    backfill_parser.add_argument(
        "--since", type=since, required=True, metavar="WHEN", help="the first time: 2d (ago) or an ISO 8601 time"
    )
    backfill_parser.add_argument(
        "--until", type=since, metavar="WHEN", help="the last time: 1h (ago) or an ISO 8601 time (default: now)"
    )
    backfill_parser.set_defaults(handler=backfill)
