"""``hodei-jobs-cli job …``: run, get, list, cancel, logs, watch, events."""

from __future__ import annotations

import argparse
import json
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID, uuid4

import grpc
import yaml
from google.protobuf.json_format import MessageToDict
from rich.live import Live
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_delay, wait_exponential

from hodei._proto import artifacts_pb2, common_pb2, cron_pb2, jobs_pb2, logs_pb2, scheduler_pb2, worker_pb2
from hodei.cli.client import REFUSED, Client
from hodei.cli.inputs import Packed, pack, pieces
from hodei.cli.jobfile import refuse_spec_flags, specs_from_file
from hodei.cli.parsing import (
    ArrayOption,
    add_limit,
    begin,
    comma_list,
    count,
    duration,
    idempotency_key,
    parse_after,
    parse_args,
    parse_array,
    parse_env,
    parse_env_files,
    parse_labels,
    parse_secret_files,
    parse_secrets,
    parse_size,
    signal_name,
    since,
    span,
    tail_count,
    text_of,
    whole,
)
from hodei.cli.terminal import Terminal, stamp, when
from hodei.domain.cron import CRON_LABEL, CRON_TIME_VARIABLE
from hodei.domain.execs import ANSWER_WITHIN, check_exec, cut
from hodei.domain.execs import DEFAULT_TIMEOUT as DEFAULT_EXEC_TIMEOUT
from hodei.domain.job import SIGNALS, JobState, after_met, hold_text
from hodei.domain.phases import (
    ENDED,
    latest_usage,
    limits_text,
    processes_stopping,
    ran_text,
    size_text,
    stopped_text,
)
from hodei.domain.placement import canonical_tolerations, selector_of
from hodei.domain.retries import canonical_retry_on
from hodei.domain.spec import (
    AFTER_CONDITIONS,
    ARRAY_LABEL,
    DEFAULT_TIMEOUT_SECONDS,
    IMAGE_PULLS,
    LIMITS,
    PARENT_LABEL,
    JobSpec,
    LabelSelector,
    Resources,
    array_element,
    check_limits,
    check_priority,
    naming_arrays,
    validate_array,
)
from hodei.domain.workflow import WORKFLOW_LABEL, run_order, sibling
from hodei.errors import HodeiError, InvalidInput, NotFound
from hodei.logs import attempt_begins
from hodei.roles import SYSTEM
from hodei.wire import (
    MAX_JOBS_LISTED,
    MAX_QUEUE_LISTED,
    exec_dict,
    job_dict,
    message_dict,
    said_ago,
    spec_to_proto,
    using_text,
)

# What --memory and --disk take at most, as their refusals say it.
_MOST_MEMORY = f"{LIMITS.max_memory_bytes} bytes (1 TiB)"
_MOST_DISK = f"{LIMITS.max_disk_bytes} bytes (1 PiB)"

# `--wait` and `--follow` exit with the job's own exit code; other endings use the
# codes people know from `timeout` and `docker run`, and two of our own.
EXIT_TIMEOUT = 124
EXIT_PLATFORM = 125
EXIT_CANCELLED = 130
# Ctrl-C while waiting: the job keeps running.
EXIT_INTERRUPTED = 131
# The server did not answer for RECONNECT_FOR seconds while waiting: the job's end is unknown.
EXIT_GAVE_UP = 132
RECONNECT_FOR = 300.0
T = TypeVar("T")


class StoppedWaiting(HodeiError):
    """The CLI stopped waiting for a job that may still run; ``code`` says why."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def status_text(job: common_pb2.Job) -> str:
    return f"{job.state or 'UNSPECIFIED'} (Status Code: {job.status})"


def exit_code_of(job: common_pb2.Job) -> int:
    state = JobState(job.state)
    if state is JobState.SUCCEEDED:
        return 0
    if state is JobState.TIMEOUT:
        return EXIT_TIMEOUT
    if state is JobState.CANCELLED:
        return EXIT_CANCELLED
    if job.has_exit_code and job.exit_code != 0:
        return job.exit_code
    return EXIT_PLATFORM


def _stopping(job: common_pb2.Job) -> bool:
    return processes_stopping(job.state, job.attempt, ((phase.name, phase.attempt) for phase in job.phases))


def _exit_code_text(job: common_pb2.Job, phases: list[dict[str, Any]]) -> str:
    if job.has_exit_code:
        return str(job.exit_code)
    stopped = stopped_text(job.attempt, phases)
    return f"- (cancelled; its processes {stopped})" if stopped else "-"


def _cron_line(spec: common_pb2.JobSpec) -> str:
    name = spec.labels[CRON_LABEL]
    return f"Cron job: {name}, its run of {spec.env.get(CRON_TIME_VARIABLE, '-')} (`cron get {name}`)"


def _held_line(job: common_pb2.Job) -> str:
    return f"Held: {hold_text(job.held_by, job.hold_reason)}; it waits out of line until `job release {job.id}`"


def _artifacts_line(job: common_pb2.Job) -> str | None:
    """What its latest attempt that stored artifacts stored; None when none did, or once
    its output expired (its log stored, then gone)."""
    stored = [phase for phase in job.phases if phase.name == "artifacts_stored"]
    log_expired = not job.log_uri and any(phase.name == "logs_stored" for phase in job.phases)
    if not stored or log_expired or any(phase.name == "artifacts_expired" for phase in job.phases):
        return None
    return f"Artifacts: {stored[-1].detail} (attempt {stored[-1].attempt}; `job artifacts {job.id}`)"


def _outputs_line(job: common_pb2.Job) -> str:
    """Its outputs, each value cut to a line of 40 characters (``job output`` prints them whole)."""
    cut = {key: " ".join(value.split("\n")) for key, value in sorted(job.outputs.items())}
    pairs = ", ".join(f"{key}={value if len(value) <= 40 else value[:37] + '...'}" for key, value in cut.items())
    return f"Outputs: {pairs} (`job output {job.id} KEY`)"


def asked_for(spec: common_pb2.JobSpec) -> list[str]:
    """What the job was given to run with, as `job run` takes it; a line for each option
    set (the timeout always: every job has one). Environment variables by name: their
    values are in ``-o json``."""
    resources = [
        *([f"{spec.resources.cpu_cores:g} CPU"] if spec.resources.cpu_cores else []),
        *([f"{size_text(spec.resources.memory_bytes)} memory"] if spec.resources.memory_bytes else []),
        *([f"{size_text(spec.resources.disk_bytes)} disk"] if spec.resources.disk_bytes else []),
    ]
    return [
        f"Timeout: {spec.timeout_seconds:g} s",
        *([f"Queue timeout: {spec.queue_timeout_seconds:g} s"] if spec.queue_timeout_seconds else []),
        *([f"Resources: {', '.join(resources)}"] if resources else []),
        *([f"Priority: {spec.priority}"] if spec.priority else []),
        *([f"Max attempts: {spec.max_attempts}"] if spec.max_attempts > 1 else []),
        *([f"Working dir: {spec.working_dir}"] if spec.working_dir else []),
        *([f"Labels: {', '.join(f'{k}={v}' for k, v in sorted(spec.labels.items()))}"] if spec.labels else []),
        *([f"Environment: {', '.join(sorted(spec.env))}"] if spec.env else []),
        *(
            [f"Node selector: {', '.join(f'{k}={v}' for k, v in sorted(spec.node_selector.items()))}"]
            if spec.node_selector
            else []
        ),
        *([f"Tolerations: {', '.join(spec.tolerations)}"] if spec.tolerations else []),
        *([f"Service account: {spec.service_account}"] if spec.service_account else []),
        *(["API token: HODEI_TOKEN while it runs (--api-token)"] if spec.api_token else []),
        *(
            [f"Input: {size_text(spec.input_bytes)} archive, sha256 {spec.input_sha256[:12]}… (--input)"]
            if spec.input_sha256
            else []
        ),
    ]


def _retried(spec: common_pb2.JobSpec) -> str:
    rule = f"; --retry-on {','.join(spec.retry_on)}" if spec.retry_on else ""
    doubling = f", doubling up to {spec.retry_backoff_max_seconds:g} s" if spec.retry_backoff_max_seconds else ""
    return f"backoff {spec.retry_backoff_seconds:g} s{doubling}{rule}"


def _ran(job: common_pb2.Job) -> str:
    """Once the job ended (every attempt of it counted): how long it ran and what it used."""
    if not JobState(job.state).is_terminal:
        return ""
    return ran_text(
        job.run_seconds,
        job.attempt,
        job.cpu_seconds if job.HasField("cpu_seconds") else None,
        job.peak_memory_bytes if job.HasField("peak_memory_bytes") else None,
    )


def describe(job: common_pb2.Job) -> list[str]:
    phases = [message_dict(phase) for phase in job.phases]
    return [
        f"Job {job.id}",
        f"Name: {job.spec.name}",
        f"Command: {' '.join([job.spec.command, *job.spec.args])}",
        f"Status: {status_text(job)}",
        *(["Stopping: its processes are ending in their cancel's grace"] if _stopping(job) else []),
        *([_held_line(job)] if job.held_by else []),
        f"Provider: {job.provider_type or '-'} ({job.provider_id or '-'})",
        *([f"Image: {job.spec.image}"] if job.spec.image else []),
        f"Worker: {job.worker_id or '-'}",
        f"Attempt: {job.attempt}",
        f"Exit code: {_exit_code_text(job, phases)}",
        f"Submitted by: {job.submitted_by or '-'}",
        f"Secrets: {', '.join(job.spec.secret_names) or '-'}",
        *asked_for(job.spec),
        *(
            [f"After: {', '.join(f'{ref} once it {AFTER_CONDITIONS[c]}' for ref, c in sorted(job.spec.after.items()))}"]
            if job.spec.after
            else []
        ),
        f"Created: {when(job, 'created_at', 'auto')}",
        f"Started: {when(job, 'started_at', 'auto')}",
        f"Completed: {when(job, 'completed_at', 'auto')}",
        f"Error: {job.error_message or '-'}",
        *([f"Used: {used}"] if (used := latest_usage(phases)) else []),
        *([f"Ran: {ran}"] if (ran := _ran(job)) else []),
        *([_outputs_line(job)] if job.outputs else []),
        *([f"Cancelled by: {job.cancelled_by}"] if job.cancelled_by else []),
        *([f"Retry of: {job.retry_of}"] if job.retry_of else []),
        *([f"Retried by: {', '.join(job.retried_by)}"] if job.retried_by else []),
        *([f"Waited on by: {', '.join(job.waited_on_by)}"] if job.waited_on_by else []),
        *([f"Retries: {job.spec.retries} ({_retried(job.spec)})"] if job.spec.retries else []),
        *([f"Next attempt not before: {when(job, 'retry_at', 'auto')}"] if job.HasField("retry_at") else []),
        *([f"Begins: not before {job.spec.begin_at} (--begin)"] if job.spec.begin_at else []),
        *([f"Pool: {job.spec.pool} (`pool get {job.spec.pool}`)"] if job.spec.pool else []),
        *([_cron_line(job.spec)] if CRON_LABEL in job.spec.labels else []),
        *(
            [f"Pipeline: {workflow} (`job workflow {workflow[:8]}`)"]
            if (workflow := job.spec.labels.get(WORKFLOW_LABEL))
            else []
        ),
        *(
            [f"Submitted from job: {parent} (with its API token)"]
            if (parent := job.spec.labels.get(PARENT_LABEL))
            else []
        ),
        *([artifacts] if (artifacts := _artifacts_line(job)) else []),
        f"Logs: {job.log_uri or '-'}",
    ]


def _command(args: argparse.Namespace) -> tuple[str, list[str]]:
    """--command [--args], or --script FILE (its text runs with bash -c)."""
    if args.script:
        if args.command or args.args:
            raise InvalidInput("give either --script or --command, not both")
        script = text_of(args.script, "--script")
        if (size := len(script.encode())) > LIMITS.arg_bytes:
            raise InvalidInput(
                f"--script {args.script} is {size} bytes; the limit is {LIMITS.arg_bytes} (its text is bash's"
                " argument): run a longer one from a file the job has, e.g. --command bash --args FILE"
            )
        return "bash", ["-c", script]
    if args.command is None:
        raise InvalidInput("give --command (or --script FILE)")
    return args.command, parse_args(args.args)


def secret_values(args: argparse.Namespace) -> dict[str, str]:
    """--secret-env-file, --secret and --secret-file, the later winning."""
    return {
        **parse_env_files(args.secret_env_file or [], "--secret-env-file"),
        **parse_secrets(args.secret or []),
        **parse_secret_files(args.secret_file or []),
    }


def file_specs(args: argparse.Namespace, default_name: str = "") -> tuple[list[JobSpec], dict[str, str]]:
    """``--file FILE`` of a cron job: its one job (named ``default_name`` unless the file
    names it) or a pipeline's jobs (``ordered``), and the secrets' values from the flags."""
    refuse_spec_flags(args)
    specs = specs_from_file(args.file)
    if len(specs) == 1:
        spec, secrets = _with_secrets(args, specs[0], default_name)
        return [spec], secrets
    found, _ = ordered(args, specs)
    return [spec for spec, _ in found], secret_values(args)


def _with_secrets(args: argparse.Namespace, spec: JobSpec, default_name: str = "") -> tuple[JobSpec, dict[str, str]]:
    """The spec of a file's one job, given every secret of the flags (each it names among them)."""
    secrets = secret_values(args)
    _refuse_missing(args.file, spec, secrets)
    return replace(spec, name=spec.name or default_name, secret_names=tuple(sorted(secrets))), secrets


def _refuse_missing(where: str, spec: JobSpec, secrets: Mapping[str, str]) -> None:
    missing = sorted(set(spec.secret_names) - set(secrets))
    if missing:
        raise InvalidInput(
            f"{where} names the secret{'s' if len(missing) > 1 else ''} {', '.join(missing)}: give "
            "the values with --secret NAME=VALUE, --secret-file or --secret-env-file"
        )


def ordered(args: argparse.Namespace, specs: list[JobSpec]) -> tuple[list[tuple[JobSpec, dict[str, str]]], _Several]:
    """A file's several jobs in an order that runs (each after those it names by name,
    which become their places: ``#N``, as ``hodei.domain.workflow`` names them), each with
    the secrets' values it names, checked as the server checks them."""
    values = secret_values(args)
    unnamed = sorted(set(values) - {name for spec in specs for name in spec.secret_names})
    if unnamed:
        raise InvalidInput(f"secret {', '.join(unnamed)}: none of the file's jobs names it (secret_names)")
    order = run_order([(spec.name, spec.after) for spec in specs])
    place_of = {specs[file_place].name: place for place, file_place in enumerate(order)}
    found = []
    for file_place in order:
        spec = specs[file_place]
        secrets = {name: values[name] for name in spec.secret_names if name in values}
        _refuse_missing(f"{args.file} (job {spec.name})", spec, secrets)
        spec = replace(
            spec, after={sibling(place_of[ref]) if ref in place_of else ref: cond for ref, cond in spec.after.items()}
        )
        spec.validate(secrets)
        spec.refuse_written(secrets)
        found.append((spec, secrets))
    return found, _Several(order, specs)


def _several_request(args: argparse.Namespace, specs: list[JobSpec]) -> None:
    """``--file`` of several jobs: QueueJobs, the jobs ``ordered``, each given the secrets
    it names. Refused: what is one job's (an array, input files, --follow)."""
    several = f"the file holds {len(specs)} jobs, submitted together"
    one_jobs = (
        ("--array", args.array),
        ("--after-array", args.after_array),
        ("--input", args.input or args.input_exclude),
        ("--follow", args.follow),
    )
    for flag, given in one_jobs:
        if given:
            raise InvalidInput(f"{flag} is for one job; {several} (`job logs -l {WORKFLOW_LABEL}=ID` follows theirs)")
    found, args.several = ordered(args, specs)
    parts = [
        jobs_pb2.QueueJobRequest(
            spec=spec_to_proto(spec), secrets=secrets, hold=args.hold, hold_reason=args.hold_reason or ""
        )
        for spec, secrets in found
    ]
    args.request = jobs_pb2.QueueJobsRequest(jobs=parts)


def job_spec(args: argparse.Namespace, default_name: str = "") -> tuple[JobSpec, dict[str, str]]:
    """The spec the options of ``add_spec_options`` describe, and its secrets' values;
    unchecked: the caller checks it once it is whole (``JobSpec.validate``)."""
    command, arguments = _command(args)
    secrets = secret_values(args)
    spec = JobSpec(
        name=args.name or (Path(args.script).stem if args.script else default_name),
        command=command,
        args=tuple(arguments),
        env={**parse_env_files(args.env_file or []), **parse_env(args.env or [])},
        timeout_seconds=args.timeout,
        provider=args.provider or "",
        resources=Resources(
            cpu_cores=args.cpu or 0.0,
            memory_bytes=parse_size(args.memory, "--memory", _MOST_MEMORY),
            disk_bytes=parse_size(args.disk, "--disk", _MOST_DISK),
        ),
        labels=parse_labels(args.label or []),
        working_dir=args.working_dir or "",
        max_attempts=args.max_attempts,
        secret_names=tuple(sorted(secrets)),
        priority=args.priority,
        queue_timeout_seconds=args.queue_timeout or 0.0,
        retries=args.retry,
        retry_backoff_seconds=args.retry_backoff,
        retry_backoff_max_seconds=args.retry_backoff_max,
        pool=args.pool or "",
        artifacts=tuple(args.artifact or ()),
        artifacts_expire_seconds=args.artifacts_expire or 0.0,
        artifacts_exclude=tuple(args.artifact_exclude or ()),
        image=args.image or "",
        image_pull=args.pull or "",
        node_selector=selector_of(args.node_selector or [], "--node-selector"),
        tolerations=canonical_tolerations(term for text in args.toleration or [] for term in comma_list(text)),
        retry_on=canonical_retry_on(term for text in args.retry_on or [] for term in comma_list(text)),
        service_account=args.service_account or "",
        api_token=args.api_token,
    )
    return spec, secrets


def queue_request(args: argparse.Namespace) -> None:
    """Builds ``args.request`` from the flags before any connection: bad input is refused
    in the server's own words (``JobSpec.validate``) even when no server runs, and before a
    number too large for the wire breaks the request."""
    array = args.array or ArrayOption([])
    after_arrays = parse_after(args.after_array or [])
    if args.hold_reason and not args.hold:
        raise InvalidInput("--hold-reason says why a job submitted with --hold is held: add --hold")
    if args.dry_run and (args.wait or args.follow):
        raise InvalidInput("--dry-run submits nothing: there is nothing to wait for or follow")
    if args.file is not None:
        refuse_spec_flags(args)
        specs = specs_from_file(args.file)
        if len(specs) > 1:
            _several_request(args, specs)
            return
        spec, secrets = _with_secrets(args, specs[0])
        spec = replace(spec, array_limit=array.limit) if args.array else spec
    else:
        spec, secrets = job_spec(args)
        spec = replace(
            spec,
            after=parse_after(args.after or []),
            begin_at=args.begin or "",
            array_limit=array.limit,
            fetch_artifacts=args.fetch_artifacts,
        )
    if args.input_exclude and not args.input:
        raise InvalidInput("--input-exclude leaves paths out of --input: give the files with --input")
    args.packed = pack(args.input, args.input_exclude or ()) if args.input else None
    if args.packed is not None:
        spec = replace(spec, input_sha256=args.packed.sha256, input_bytes=args.packed.size)
    naming_arrays(spec, after_arrays).validate(secrets)
    spec.refuse_written(secrets)
    indices = array.indices
    if indices:
        if args.follow:
            raise InvalidInput("--follow streams one job's output: with --array use --wait, then `job logs` of each")
        validate_array(indices)
        for index in indices:  # each job as the server will make it (its name, its environment)
            array_element(spec, str(UUID(int=0)), index, len(indices)).validate(secrets)
    args.request = jobs_pb2.QueueJobRequest(
        spec=spec_to_proto(spec),
        secrets=secrets,
        array=indices,
        after_arrays=after_arrays,
        hold=args.hold,
        hold_reason=args.hold_reason or "",
    )


def run(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    if isinstance(args.request, jobs_pb2.QueueJobsRequest):
        return _run_several(client, term, args)
    _latest_named(client, (args.request.spec.after, args.request.after_arrays))
    if args.dry_run:
        return _dry_run(client, term, args)
    if args.packed is not None:
        with args.packed.archive:
            _upload(client, term, args.packed)
    queued = submit(client, term, client.jobs.QueueJob, args.request, args.idempotency_key)
    if queued.array_job_ids:
        return _run_array(client, term, args, queued)
    return submitted(client, term, args, queued)


@dataclass(frozen=True)
class _Several:
    """A file's several jobs: the order the request has them in (their places in the
    file), and their specs as the file gives them."""

    order: list[int]
    specs: list[JobSpec]

    def in_file_order(self, in_request: Sequence[str]) -> list[str]:
        found = [""] * len(self.order)
        for place, file_place in enumerate(self.order):
            found[file_place] = in_request[place]
        return found


def _run_several(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    """A file's several jobs, submitted together: every job's id, one a line in the file's
    order; with --wait, each in turn (those it starts after first), exiting with the
    highest exit code among them."""
    several: _Several = args.several
    request: jobs_pb2.QueueJobsRequest = args.request
    _latest_named(client, (part.spec.after for part in request.jobs))
    if args.dry_run:
        checked = jobs_pb2.QueueJobsRequest(jobs=request.jobs, validate_only=True)
        client.call(client.jobs.QueueJobs, checked)
        if term.json:
            term.data(
                {"specs": [message_dict(spec_to_proto(spec)) for spec in several.specs], "jobs": len(several.specs)}
            )
            return 0
        term.line("\n---\n".join(_given_yaml(spec_to_proto(spec)) for spec in several.specs))
        term.info(f"[hodei] {len(several.specs)} jobs the server would take together: nothing submitted (--dry-run)")
        return 0
    queued = submit(client, term, client.jobs.QueueJobs, request, args.idempotency_key)
    job_ids = several.in_file_order(queued.job_ids)
    workflow_id = queued.job_ids[0]
    answer = {
        "workflow_id": workflow_id,
        "job_ids": job_ids,
        "names": [spec.name for spec in several.specs],
        "already_submitted": queued.already_submitted,
    }
    which = ", ".join(f"{spec.name} {job_id[:8]}" for spec, job_id in zip(several.specs, job_ids, strict=True))
    note = f"{len(job_ids)} jobs submitted together: {which} (`job list -l {WORKFLOW_LABEL}={workflow_id}`)"
    return several_submitted(client, term, args, answer, job_ids, note, list(queued.job_ids))


def several_submitted(
    client: Client,
    term: Terminal,
    args: argparse.Namespace,
    answer: dict[str, Any],
    job_ids: list[str],
    note: str,
    waited: list[str],
) -> int:
    """What `job run` prints of several jobs it submitted: with -o json ``answer``; else
    every id, one a line, and ``note`` on stderr; with --wait, each of ``waited`` in turn,
    exiting with the highest exit code among them, as `sbatch --wait` does."""
    if term.json and not args.wait:
        term.data(answer)
        return 0
    if not term.json:
        for job_id in job_ids:
            term.value(job_id)
        term.info(note)
    if not args.wait:
        return 0
    ended: dict[str, common_pb2.Job] = {}
    codes = []
    for job_id in waited:  # a job after those it starts after: they ended before it did
        job = ended[job_id] = waited_for(client, term, job_id)
        codes.append(finish(term, job, skipped(job, ended)))
    return max(codes)


def _given_yaml(spec: common_pb2.JobSpec) -> str:
    """A spec as a file ``job run --file`` takes: YAML of the fields given (its --input
    archive left out: files are given by flag)."""
    given = {
        name: value
        for name, value in MessageToDict(spec, preserving_proto_field_name=True).items()
        if value != {} and name not in ("input_sha256", "input_bytes")
    }
    return yaml.safe_dump(given, sort_keys=False, allow_unicode=True).rstrip("\n")


def _dry_run(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    """``--dry-run``: the server checks the request as it would a submission and writes
    nothing (``validate_only``); the spec is printed, as a file ``job run --file`` takes
    (YAML of the fields given, its --input archive left out: files are given by flag) or,
    with -o json, whole."""
    if args.packed is not None:
        args.packed.archive.close()  # its digest is checked; nothing is uploaded
    request = jobs_pb2.QueueJobRequest()
    request.CopyFrom(args.request)
    request.validate_only = True
    request.idempotency_key = ""
    client.call(client.jobs.QueueJob, request)
    jobs = max(1, len(request.array))
    if term.json:
        term.data({"spec": message_dict(request.spec), "jobs": jobs})
        return 0
    term.line(_given_yaml(request.spec))
    counted = "a job" if jobs == 1 else f"an array of {jobs} jobs"
    term.info(f"[hodei] {counted} the server would take: nothing submitted (--dry-run)")
    return 0


# The most an --input archive's upload may take (HODEI_MAX_INPUT_BYTES is 256 MiB by default).
UPLOAD_SECONDS = 600.0


def _upload(client: Client, term: Terminal, packed: Packed) -> None:
    """The --input archive, before the job that names it is submitted; not sent again when
    the server keeps the same one of the caller's (a job run again with the same files)."""
    files = "1 file" if packed.files == 1 else f"{packed.files} files"
    paths = "1 path" if packed.excluded == 1 else f"{packed.excluded} paths"
    left = f"; {paths} left out (--input-exclude)" if packed.excluded else ""
    about = f"{files} for the job's working directory ({size_text(packed.size)}{left})"
    kept = artifacts_pb2.UploadedInput(sha256=packed.sha256, size_bytes=packed.size)
    try:
        client.call(client.artifacts.FindInput, kept)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
    else:
        term.info(f"[hodei] {about}: uploaded before, not sent again")
        return
    uploaded = client.call(client.artifacts.UploadInput, pieces(packed), timeout=UPLOAD_SECONDS)
    if uploaded.sha256 != packed.sha256:
        raise InvalidInput(
            f"the server kept the input archive as {uploaded.sha256}, not {packed.sha256}: send it again"
        )
    term.info(f"[hodei] uploaded {about}")


def submit(
    client: Client,
    term: Terminal,
    method: Any,
    request: jobs_pb2.QueueJobRequest
    | jobs_pb2.QueueJobsRequest
    | jobs_pb2.RetryJobRequest
    | jobs_pb2.RetryJobsRequest
    | cron_pb2.RunCronJobRequest,
    given: str | None,
    patience: float = RECONNECT_FOR,
) -> Any:
    """QueueJob, RetryJob or RunCronJob (each answers ``job_id`` and ``already_submitted``),
    sent again while the server restarts, PostgreSQL is away (UNAVAILABLE) or no answer
    comes in time: the request's idempotency key makes a resent one submit nothing more
    when the first was submitted after all (its answer lost). Gives up after ``patience``
    seconds, naming the key that finds out whether it was. ``given``: the user's key
    (--idempotency-key); without one, a key of this run's own."""
    key = request.idempotency_key = given or str(uuid4())

    def note(state: RetryCallState) -> None:
        if state.attempt_number == 1 and state.outcome is not None:
            exc = state.outcome.exception()
            reason = exc.details() if isinstance(exc, grpc.RpcError) else exc
            term.info(f"[hodei] no answer to the submission ({reason}); sending it again (idempotency key {key})")

    try:
        for attempt in Retrying(
            retry=retry_if_exception(_unanswered),
            stop=stop_after_delay(patience),
            wait=wait_exponential(multiplier=0.2, max=5),
            before_sleep=note,
            reraise=True,
        ):
            with attempt:
                queued = client.call(method, request)
    except grpc.RpcError as exc:
        if not _unanswered(exc):
            raise
        raise StoppedWaiting(
            f"the server did not take the submission within {patience:g}s ({exc.details()}, {exc.code().name}); "
            f"it may have been submitted: the same command with --idempotency-key {key} submits it only if it was not",
            1,
        ) from None
    if queued.already_submitted:
        first = queued.job_ids[0] if isinstance(queued, jobs_pb2.QueueJobsResponse) else queued.job_id
        term.info(
            f"[hodei] idempotency key {key} submitted job {first} before: nothing new submitted"
            if given
            else f"[hodei] the first try had submitted job {first}: nothing new submitted"
        )
    return queued


def _unanswered(exc: BaseException) -> bool:
    """The submission may or may not have been taken: the server went away, answered that
    PostgreSQL is away (a commit's answer can be lost with its connection), was slow, or
    dropped it unanswered (CANCELLED: more calls waited for it than it takes)."""
    return isinstance(exc, grpc.RpcError) and exc.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
    )


def submitted(client: Client, term: Terminal, args: argparse.Namespace, queued: Any) -> int:
    """What `job run` (and `cron run`) print of a job just submitted (``queued``: the
    answer, its ``job_id`` and ``already_submitted``): its id, or with --wait its changes
    of state, with --follow its output; the exit code."""
    job_id = queued.job_id
    if args.follow:
        term.info(f"Job ID: {job_id}")
        with _queue_note(client, term, job_id):
            return follow(client, term, job_id, args.timestamps)
    if term.json and not args.wait:
        term.data({"job_id": job_id, "already_submitted": queued.already_submitted})
        return 0
    if not term.json:
        term.value(job_id)
    if args.wait:
        with _queue_note(client, term, job_id):
            return wait(client, term, job_id)
    return 0


def add_idempotency_key(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--idempotency-key",
        metavar="KEY",
        type=idempotency_key,
        help=(
            "names this submission for good: the same command again with the same key prints the job it "
            "submitted and submits nothing (another request with it is refused); 1-128 of A-Z a-z 0-9 ._:/@+=-. "
            "Without it, this run's own key lets it send the request again when the server does not answer"
        ),
    )


def add_wait_options(parser: argparse.ArgumentParser) -> None:
    """--wait, --follow and --timestamps of a command that submits a job."""
    parser.add_argument("--wait", "-w", action="store_true", help="wait and exit with the job's exit code")
    parser.add_argument("--follow", "-f", action="store_true", help="stream the logs, then exit like --wait")
    parser.add_argument("--timestamps", action="store_true", help=TIMESTAMPS_HELP)


def _run_array(client: Client, term: Terminal, args: argparse.Namespace, queued: jobs_pb2.QueueJobResponse) -> int:
    """Every job's id, one a line (the array's id is the first's)."""
    array_id, job_ids = queued.job_id, list(queued.array_job_ids)
    answer = {
        "job_id": array_id,
        "array_id": array_id,
        "job_ids": job_ids,
        "already_submitted": queued.already_submitted,
    }
    note = f"Array {array_id}: {len(job_ids)} jobs (`job list -l {ARRAY_LABEL}={array_id}`)"
    return several_submitted(client, term, args, answer, job_ids, note, job_ids)


# How long a job waits in its provider's queue before `job run --wait/--follow` says where.
QUEUE_NOTE_AFTER = 2.0


@contextmanager
def _queue_note(client: Client, term: Terminal, job_id: str) -> Iterator[None]:
    """A job that waits for capacity prints nothing while it waits; after QUEUE_NOTE_AFTER
    a job still waiting to begin has its place and reason said once on stderr (`job get`'s
    Waiting line)."""

    def note() -> None:
        try:
            job = client.call(client.jobs.GetJob, jobs_pb2.GetJobRequest(job_id=job_id)).job
            # Between a retried job's attempts the `[hodei] attempt N` line says enough.
            first = job.state == JobState.PENDING.value and job.attempt <= 1
            waiting = _place_in_queue(client, job_id) if first else None
        except grpc.RpcError:
            return  # a note, not the command: the wait itself reports a server that is gone
        if waiting:
            term.info(waiting)

    if term.json:  # the JSON lines say each state already
        yield
        return
    timer = threading.Timer(QUEUE_NOTE_AFTER, note)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join(timeout=5)  # a note on its way ends before the command closes its channel


def retry(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    if args.workflow or args.more_ids:
        return _retry_several(client, term, args)
    request = jobs_pb2.RetryJobRequest(job_id=args.job_id)
    copied = submit(client, term, client.jobs.RetryJob, request, args.idempotency_key)
    job_id = copied.job_id
    if term.json and not args.wait:
        term.data({"job_id": job_id, "retry_of": args.job_id, "already_submitted": copied.already_submitted})
        return 0
    term.value(job_id)
    return wait(client, term, job_id) if args.wait else 0


def _retry_several(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    """Several finished jobs again, together (RetryJobs): those given, or with --workflow
    the jobs of the given one's pipeline that did not succeed and were not retried since.
    Each copy that starts after another's starts after that one's copy; with --wait each is
    waited for in the order they were first submitted, as `job run --file --wait` does."""
    if args.workflow and args.more_ids:
        raise InvalidInput("--workflow retries the pipeline of one job: give one job id")
    named: list[tuple[str, str]] = []  # each job retried: its name and id, in the request's order
    if args.workflow:
        request = jobs_pb2.RetryJobsRequest(workflow=args.job_id)
    else:
        given = [args.job_id, *args.more_ids]
        found = [client.call(client.jobs.GetJob, jobs_pb2.GetJobRequest(job_id=ref)).job for ref in given]
        named = [(job.spec.name, job.id) for job in sorted(found, key=lambda job: job.created_at.ToDatetime())]
        request = jobs_pb2.RetryJobsRequest(job_ids=[job_id for _, job_id in named])
    copied = submit(client, term, client.jobs.RetryJobs, request, args.idempotency_key)
    job_ids = list(copied.job_ids)
    if not job_ids:
        term.info("nothing to retry: every job of the pipeline succeeded, or its copy did")
        return 0
    if args.workflow:  # the server chose them: each copy says which job it copies
        copies = [client.call(client.jobs.GetJob, jobs_pb2.GetJobRequest(job_id=job_id)).job for job_id in job_ids]
        named = [(copy.spec.name, copy.retry_of) for copy in copies]
    answer = {
        "job_ids": job_ids,
        "retry_of": [job_id for _, job_id in named],
        "already_submitted": copied.already_submitted,
    }
    which = ", ".join(f"{name} {job_id[:8]}" for (name, _), job_id in zip(named, job_ids, strict=True))
    note = f"{len(job_ids)} jobs retried together: {which}"
    return several_submitted(client, term, args, answer, job_ids, note, job_ids)


def reconnecting(open_stream: Callable[[], Iterable[T]], patience: float = RECONNECT_FOR) -> Iterator[T]:
    """The items of a stream, opened again each time it is cut while the server restarts
    (or answers that PostgreSQL is away, or has no room for it), with growing pauses; it gives up once the server
    has sent nothing for ``patience`` seconds, counted from its last item, not from the
    start: a job may run for hours before its stream is cut."""
    heard = time.monotonic()

    def silent_too_long(_: RetryCallState) -> bool:
        return time.monotonic() - heard >= patience

    for attempt in Retrying(
        retry=retry_if_exception(_unavailable),
        stop=silent_too_long,
        wait=wait_exponential(multiplier=0.2, max=5),
        reraise=True,
    ):
        with attempt:
            for item in open_stream():
                heard = time.monotonic()
                yield item


def _watch(client: Client, job_id: str) -> Iterator[common_pb2.Job]:
    """The job at each change until it ends (a watch starts with the job's current state,
    so a reconnection misses nothing)."""

    def stream() -> Iterator[common_pb2.Job]:
        job = None
        for update in client.stream(client.jobs.WatchJob, jobs_pb2.WatchJobRequest(job_id=job_id)):
            job = update.job
            yield job
        if job is None or not JobState(job.state).is_terminal:
            raise _StreamEnded

    return reconnecting(stream)


def _log_entries(
    client: Client, job_id: str, follow: bool, attempt: int = 0, tail: int | None = None, since: datetime | None = None
) -> Iterator[logs_pb2.JobLogEntry]:
    """The job's log from its first line (``attempt``: that attempt's lines only; ``tail``:
    its last lines so far, 0: none; ``since``: from the first line read then); a reconnection asks
    for the first line not wholly received and skips the pieces of it that were (a long
    line comes in pieces that share its number), so no output is lost or repeated."""
    line, pieces, begun = 1, 0, False

    def stream() -> Iterator[logs_pb2.JobLogEntry]:
        nonlocal line, pieces, begun
        skip = pieces
        request = logs_pb2.SubscribeLogsRequest(job_id=job_id, follow=follow, from_line=line, attempt=attempt)
        if tail is not None and not begun:
            request.tail = tail
        if since is not None and not begun:
            request.since.FromDatetime(since)
        for batch in client.stream(client.logs.SubscribeLogs, request):
            if not begun and batch.from_line:
                line = batch.from_line  # where the tail began: again from there, not a new tail
            begun = True
            for entry in batch.entries:
                if skip:
                    skip -= 1
                    continue
                line, pieces = (entry.line_number, pieces + 1) if entry.partial else (entry.line_number + 1, 0)
                yield entry

    return reconnecting(stream)


class _StreamEnded(Exception):
    """The watch ended before the job did (a server going away closes it)."""


# A stream cut (the server restarts, PostgreSQL is away), or refused for want of room among
# the server's streams (HODEI_MAX_STREAMS, _PER_TOKEN): asked for again, with growing pauses.
_ASK_AGAIN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED)


def _unavailable(exc: BaseException) -> bool:
    return isinstance(exc, _StreamEnded) or (isinstance(exc, grpc.RpcError) and exc.code() in _ASK_AGAIN)


def _attempt_note(job: common_pb2.Job) -> str:
    """Which attempt a retried job is in (nothing for its first)."""
    return f", attempt {job.attempt}" if job.attempt > 1 else ""


class _Waiting:
    """What a terminal shows while waiting: the job's state and the time so far."""

    def __init__(self, job_id: str) -> None:
        self.job_id, self.state, self.started = job_id, "submitted", time.monotonic()

    def __rich__(self) -> str:
        return f"job {self.job_id}: {self.state}, {time.monotonic() - self.started:.0f}s"


def _interrupted(doing: str, job_id: str) -> StoppedWaiting:
    return StoppedWaiting(
        f"stopped {doing}; job {job_id} keeps running (`hodei-jobs-cli job cancel {job_id}` stops it)",
        EXIT_INTERRUPTED,
    )


def wait(client: Client, term: Terminal, job_id: str) -> int:
    return finish(term, waited_for(client, term, job_id))


def skipped(job: common_pb2.Job, ended: Mapping[str, common_pb2.Job]) -> bool:
    """Whether the platform cancelled ``job`` because a job of ``ended`` (those waited for
    with it) ended otherwise than its `after` asked: a branch of a pipeline not taken
    (GitLab's skipped, Argo's omitted), not a failure of its own. That job's own end, a
    failure or a cancel, is among them with its own code; a job waited for alone has none
    of them, and its cancel counts (130)."""
    if job.state != JobState.CANCELLED or job.cancelled_by != SYSTEM:
        return False
    return any(
        after_met(condition, JobState(ended[after_id].state)) is False
        for after_id, condition in job.spec.after.items()
        if after_id in ended
    )


def waited_for(client: Client, term: Terminal, job_id: str) -> common_pb2.Job:
    """The job once it ended, its state shown while it runs."""
    job = None
    waiting = _Waiting(job_id)
    live = Live(waiting, console=term.err, refresh_per_second=4, transient=True)
    showing = term.err.is_terminal and not term.json
    try:
        if showing:
            live.start()
        for job in _watch(client, job_id):
            waiting.state = job.state + _attempt_note(job)
            if term.json:
                term.line_data({"event": "state", "job": job_dict(job), "log": None})
    except KeyboardInterrupt:
        raise _interrupted("waiting", job_id) from None
    except grpc.RpcError as exc:
        if not _unavailable(exc):
            raise
        raise StoppedWaiting(
            f"gave up waiting for job {job_id}: the server at {client.address} did not answer (or had no room "
            f"for the stream) for {RECONNECT_FOR:g}s; the job may still be running (`hodei-jobs-cli job get {job_id}`)",
            EXIT_GAVE_UP,
        ) from None
    finally:
        if showing:
            live.stop()
    assert job is not None
    return job


def finish(term: Terminal, job: common_pb2.Job, skip: bool = False) -> int:
    """Says how the job ended; its exit code, 0 for a job ``skip``ped."""
    if term.json:
        return 0 if skip else exit_code_of(job)
    message = f"Job {job.id} {status_text(job)}"
    if job.error_message:
        message += f": {job.error_message}"
    if skip:
        term.info(f"{message}: skipped")
        return 0
    if job.state == JobState.SUCCEEDED:
        term.success(message)
    else:
        term.warning(message)
    if job.spec.artifacts and job.state != JobState.CANCELLED:  # a cancelled job keeps none
        term.info(f"Its artifacts: `hodei-jobs-cli job artifacts {job.id}`")
    return exit_code_of(job)


TIMESTAMPS_HELP = "each line after its time (UTC, as the worker read it)"


class _LogPrinter:
    """Prints a job's output as it was: stdout to stdout, stderr to stderr, and with
    ``timestamps`` each line after the time the worker read it (a long line's later
    pieces continue it, unstamped). A retried job's log holds every attempt's output:
    where another attempt's begins, a ``[hodei] attempt N`` line on stderr says so. With
    a ``prefix`` (several jobs' output on one terminal) each line begins with it and is
    printed whole once its last piece came, so that no other job's line lands inside it."""

    def __init__(self, term: Terminal, timestamps: bool, prefix: str = "") -> None:
        self.term = term
        self.timestamps = timestamps
        self.prefix = prefix
        self.mid_line: dict[int, str] = {}  # streams whose last piece did not end its line: what is held of it
        self.attempt: int | None = None

    def __call__(self, entry: logs_pb2.JobLogEntry) -> None:
        if attempt_begins(self.attempt, entry.attempt):
            for stream, unfinished in self.mid_line.items():  # a lost worker's unfinished line ends here
                self._output(unfinished, stream, partial=False)
            self.mid_line.clear()
            self.term.info(f"{self.prefix}[hodei] attempt {entry.attempt}")
        self.attempt = entry.attempt
        held = self.mid_line.pop(entry.stream) if entry.stream in self.mid_line else None
        if held is None:  # a line begins
            text = self.prefix + (f"{when(entry, 'timestamp')} {entry.line}" if self.timestamps else entry.line)
        else:  # it goes on: with a prefix, after what is held of it; else after what was printed
            text = held + entry.line
        if entry.partial:
            self.mid_line[entry.stream] = text if self.prefix else ""
            if self.prefix:
                return  # printed whole once its line ends
        self._output(text, entry.stream, entry.partial)

    def _output(self, text: str, stream: int, partial: bool) -> None:
        self.term.output(text, stderr=stream == worker_pb2.LOG_STREAM_STDERR, partial=partial)


def follow(client: Client, term: Terminal, job_id: str, timestamps: bool) -> int:
    show = _LogPrinter(term, timestamps)
    try:
        for entry in _log_entries(client, job_id, follow=True):
            if term.json:
                term.line_data({"event": "log", "job": None, "log": message_dict(entry)})
            else:
                show(entry)
    except KeyboardInterrupt:
        raise _interrupted("following", job_id) from None
    except grpc.RpcError as exc:
        if not _unavailable(exc):
            raise
        term.warning(
            f"the log stream from {client.address} was cut (or refused) for {RECONNECT_FOR:g}s; "
            "waiting for the job's end without its output"
        )
    return wait(client, term, job_id)


def get(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    job = client.call(client.jobs.GetJob, jobs_pb2.GetJobRequest(job_id=args.job_id)).job
    if term.json:
        term.data(job_dict(job))
        return 0
    for line in describe(job):
        term.line(line)
    # A held job's Held line says why it waits (the queue would say it again).
    if job.state == JobState.PENDING.value and not job.held_by and (waiting := _place_in_queue(client, job.id)):
        term.line(waiting)
    if job.state == JobState.RUNNING.value:
        request = jobs_pb2.GetJobsUsageRequest(job_ids=[job.id])
        for now in client.call(client.jobs.GetJobsUsage, request).jobs:
            if using := using_text(now):
                term.line(f"Using: {using}")
    return 0


def job_output(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    """The values the job's latest attempt that ended left in $HODEI_OUTPUT: one printed
    as it was written (``VERSION=$(hodei-jobs-cli job output ID version)``), or all of
    them in the file's own format."""
    job = client.call(client.jobs.GetJob, jobs_pb2.GetJobRequest(job_id=args.job_id)).job
    outputs = dict(sorted(job.outputs.items()))
    if args.key is not None and args.key not in outputs:
        ended = any(phase.name in ENDED for phase in job.phases)
        if not ended:
            raise NotFound(f"job {job.id} is {job.state}: a job's outputs are kept once its command exits")
        left = ", ".join(outputs) or "none"
        raise NotFound(f"job {job.id} left no output {args.key!r} in $HODEI_OUTPUT (it left: {left})")
    if term.json:
        term.data(outputs if args.key is None else {args.key: outputs[args.key]})
    elif args.key is not None:
        term.output(outputs[args.key], stderr=False, partial=False)
    else:
        for key, value in outputs.items():
            written = f"{key}<<{_delimiter(value)}\n{value}\n{_delimiter(value)}" if "\n" in value else f"{key}={value}"
            term.output(written, stderr=False, partial=False)
    return 0


def _delimiter(value: str) -> str:
    """A heredoc delimiter no line of ``value`` is."""
    delimiter = "EOF"
    while delimiter in value.split("\n"):
        delimiter += "_"
    return delimiter


def _place_in_queue(client: Client, job_id: str) -> str | None:
    """Where a pending job waits and why, as `queue` lists it: people ask why a job has
    not started. None when it is not among the first listed (or on its way out)."""
    status = client.call(client.scheduler.GetQueueStatus, scheduler_pb2.GetQueueStatusRequest(limit=MAX_QUEUE_LISTED))
    for queued in status.queued:
        if queued.job_id == job_id:
            if not queued.position:  # not in line yet (--after, --begin): the reason says why
                return f"Waiting: {queued.waiting_seconds:.0f}s so far: {queued.reason}"
            line = f"provider {queued.provider}'s queue" if queued.provider else "the queue"
            return f"Waiting: place {queued.position} in {line}, {queued.waiting_seconds:.0f}s so far: {queued.reason}"
    return None


# The newest job, as Argo's CLI takes `@latest`: `job logs @latest --follow` after a run.
LATEST = "@latest"


def add_job_id(parser: argparse.ArgumentParser) -> None:
    """The job a command is about: ``ID`` or ``--id ID`` (``main`` picks one)."""
    shown = f"the job id, a unique prefix of it (8 characters or more), or {LATEST}"
    parser.add_argument("job_id_positional", nargs="?", metavar="ID", help=shown)
    parser.add_argument("--id", "-i", dest="job_id_flag", metavar="ID", help=shown)


def _latest_named(client: Client, afters: Iterable[MutableMapping[str, str]]) -> None:
    """``@latest`` among the jobs to start after: the newest job now, before the submission
    (asked once)."""
    latest = ""
    for after in afters:
        if LATEST in after:
            latest = latest or latest_job(client)
            after[latest] = after.pop(LATEST)


def latest_job(client: Client) -> str:
    """The id of the newest job the caller can list. Asked once, before the command, so
    that a stream that reconnects stays with the job it began with."""
    listed = client.call(client.jobs.ListJobs, jobs_pb2.ListJobsRequest(limit=1)).jobs
    if not listed:
        raise NotFound(f"{LATEST}: there are no jobs yet")
    return str(listed[0].id)


def add_job_filters(parser: argparse._ActionsContainer, submitted_since: bool = True, state: bool = True) -> None:
    """What `job list` selects jobs by, and `job cancel`, `hold`, `release` and `logs` too
    (`logs` has a --since of its own: the lines printed since then; `report` too, and its
    jobs have ended)."""
    if state:
        parser.add_argument(
            "--state",
            choices=[s.value for s in JobState] + [s.value.lower() for s in JobState],
            metavar="STATE",
            help=f"only jobs in this state: {', '.join(s.value for s in JobState)}",
        )
    parser.add_argument("--provider", help="only jobs on this provider (docker, kubernetes, local, sim)")
    parser.add_argument("--name", help="only jobs whose name contains this text")
    parser.add_argument(
        "--label",
        "-l",
        action="append",
        metavar="SELECTOR",
        help="only jobs whose labels match: KEY=VALUE, KEY!=VALUE (or no such label), KEY (any value), !KEY; "
        "repeatable",
    )
    if submitted_since:
        parser.add_argument(
            "--since",
            type=since,
            metavar="WHEN",
            help="only jobs submitted since then: 1h, 2d (ago) or an ISO 8601 time",
        )
    whose = parser.add_mutually_exclusive_group()
    whose.add_argument("--submitter", "-u", metavar="NAME", help="only jobs this token's name submitted (squeue -u)")
    whose.add_argument("--mine", action="store_true", help="only jobs the caller's token submitted (squeue --me)")
    # Which of them select jobs here (`job logs`' --since is of its lines, not its jobs).
    left_out = {name for name, given in (("since", submitted_since), ("state", state)) if not given}
    parser.set_defaults(job_filters=tuple(name for name in _FILTERS if name not in left_out))


_FILTERS = ("state", "provider", "name", "label", "since", "submitter", "mine")


def selects(args: argparse.Namespace) -> bool:
    """Whether the command names its jobs by ``add_job_filters``' flags."""
    return any(getattr(args, name, None) for name in getattr(args, "job_filters", ()))


def list_request(args: argparse.Namespace, limit: int, offset: int) -> jobs_pb2.ListJobsRequest:
    status = (
        common_pb2.JobStatus.Value(f"JOB_STATUS_{args.state.upper()}")
        if args.state
        else common_pb2.JOB_STATUS_UNSPECIFIED
    )
    LabelSelector.of(args.label or [])  # a malformed term is refused before the call
    request = jobs_pb2.ListJobsRequest(
        limit=limit,
        offset=offset,
        status=status,
        provider=args.provider or "",
        name=args.name or "",
        label_selector=args.label or [],
        submitter=args.submitter or "",
        mine=args.mine,
    )
    if "since" in args.job_filters and args.since:
        request.created_since.FromDatetime(args.since)
    return request


def list_jobs(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    response = client.call(client.jobs.ListJobs, list_request(args, args.limit, args.offset))
    if term.json:
        term.data({"jobs": [job_dict(job) for job in response.jobs], "total_count": response.total_count})
        return 0
    term.table(
        ["ID", "NAME", "STATUS", "PROVIDER", "EXIT", "CREATED"],
        [
            [
                job.id,
                job.spec.name,
                f"{job.state} (held)" if job.held_by else job.state,
                job.provider_type or "-",
                str(job.exit_code) if job.has_exit_code else "-",
                when(job, "created_at", "auto"),
            ]
            for job in response.jobs
        ],
    )
    term.info(f"{len(response.jobs)} of {response.total_count} jobs")
    return 0


def cancel(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    # Each job's children not ended when it was cancelled, which the server cancels with it.
    going: dict[str, int] = {}

    def change(job_id: str) -> common_pb2.Job:
        request = jobs_pb2.CancelJobRequest(job_id=job_id, reason=args.reason or "")
        if args.grace is not None:
            request.grace_seconds = args.grace
        cancelled: jobs_pb2.CancelJobResponse = client.call(client.jobs.CancelJob, request)
        going[cancelled.job.id] = cancelled.children_not_ended
        return cancelled.job

    def done(job: common_pb2.Job) -> str:
        if not going.get(job.id):
            return status_text(job)
        children = "1 job" if going[job.id] == 1 else f"{going[job.id]} jobs"
        return f"{status_text(job)}, and with it the {children} it submitted with its API token that had not ended"

    return _each_job(term, _chosen(client, term, args), change, done, selects(args))


def _chosen(client: Client, term: Terminal, args: argparse.Namespace) -> list[str]:
    """The jobs a cancel, hold or release is about: the ids given, or every job the
    selection's flags match (`scancel -u alice -t PENDING`, `kubectl delete -l`), read
    whole before the first is changed (a change may take a job out of the selection)."""
    if not selects(args):
        return [args.job_id, *args.more_ids]
    chosen = [job.id for job in _selected(client, args)]
    if not chosen:
        term.info("no job matches the selection: nothing to change")
    return chosen


def _selected(client: Client, args: argparse.Namespace, given: Sequence[str] | None = None) -> list[common_pb2.Job]:
    """Every job the selection's flags match, newest first (``given``: the ids given too,
    refused with a selection; by default ``args.job_id``)."""
    if any([args.job_id] if given is None else given):
        raise InvalidInput("give job ids or a selection (--state, --label, --submitter, …), not both")
    return _every_job(client, list_request(args, MAX_JOBS_LISTED, 0))


def _every_job(client: Client, request: jobs_pb2.ListJobsRequest) -> list[common_pb2.Job]:
    """Every job ``request`` matches, newest first, read a page (its ``limit``) at a time."""
    found: list[common_pb2.Job] = []
    page = jobs_pb2.ListJobsRequest()
    page.CopyFrom(request)
    while jobs := client.call(client.jobs.ListJobs, page).jobs:
        found.extend(jobs)
        page.offset = len(found)
    return found


def top(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    """What running jobs use now, as their workers' last heartbeats said (kubectl top pods,
    docker stats --no-stream): the busiest first, beside what each asks for."""
    if args.state and args.state.upper() != JobState.RUNNING.value:
        raise InvalidInput("job top shows running jobs: --state running, or none")
    if args.job_ids:
        if selects(args):
            raise InvalidInput("give job ids or a selection (--label, --submitter, …), not both")
        job_ids = [client.call(client.jobs.GetJob, jobs_pb2.GetJobRequest(job_id=ref)).job.id for ref in args.job_ids]
    else:
        args.state = JobState.RUNNING.value
        job_ids = [job.id for job in _selected(client, args, [])]
    found: list[jobs_pb2.JobUsageNow] = []
    for start in range(0, len(job_ids), MOST_USAGE_ASKED):
        request = jobs_pb2.GetJobsUsageRequest(job_ids=job_ids[start : start + MOST_USAGE_ASKED])
        found.extend(client.call(client.jobs.GetJobsUsage, request).jobs)
    found.sort(key=lambda job: job.cpu_cores if job.HasField("cpu_cores") else -1.0, reverse=True)
    if term.json:
        term.data([message_dict(job) for job in found])
        return 0
    if not found and not args.job_ids:
        term.info("no job that matches is running")
        return 0
    term.table(
        ["JOB", "NAME", "PROVIDER", "CPU", "ASKED", "MEMORY", "ASKED", "SAID"],
        [
            [
                job.job_id,
                job.name,
                job.provider_type,
                f"{job.cpu_cores:.2f}" if job.HasField("cpu_cores") else "-",
                f"{job.asked_cpu_cores:g}" if job.asked_cpu_cores else "-",
                size_text(job.memory_bytes) if job.HasField("memory_bytes") else "-",
                size_text(job.asked_memory_bytes) if job.asked_memory_bytes else "-",
                said_ago(job),
            ]
            for job in found
        ],
    )
    not_running = sorted(set(job_ids) - {job.job_id for job in found})
    if args.job_ids and not_running:
        term.info(f"not running: {', '.join(not_running)}")
    if any(not job.HasField("sampled_at") for job in found):
        term.info("-: its worker has not said yet, or cannot (a sim worker, an agent older than `job top`)")
    return 0


def hold(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    def change(job_id: str) -> common_pb2.Job:
        request = jobs_pb2.HoldJobRequest(job_id=job_id, reason=args.reason or "")
        held: jobs_pb2.GetJobResponse = client.call(client.jobs.HoldJob, request)
        return held.job

    return _each_job(term, _chosen(client, term, args), change, lambda job: f"held by {job.held_by}", selects(args))


def release(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    def change(job_id: str) -> common_pb2.Job:
        released: jobs_pb2.GetJobResponse = client.call(client.jobs.ReleaseJob, jobs_pb2.GetJobRequest(job_id=job_id))
        return released.job

    return _each_job(term, _chosen(client, term, args), change, lambda _: "released: back in its line", selects(args))


def signal_job(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    def change(job_id: str) -> common_pb2.Job:
        request = jobs_pb2.SignalJobRequest(job_id=job_id, signal=args.signal)
        signalled: jobs_pb2.GetJobResponse = client.call(client.jobs.SignalJob, request)
        return signalled.job

    sent = f"SIG{args.signal} sent to its processes"
    return _each_job(term, _chosen(client, term, args), change, lambda _: sent, selects(args))


def exec_in_job(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    """Runs a command in a running job's worker (kubectl exec, docker exec) and prints what
    it printed, on the same streams; exits with its exit code."""
    timeout = 0 if args.timeout is None else math.ceil(args.timeout)  # main refuses one not positive
    argv, seconds = check_exec(args.command_argv, timeout)
    request = jobs_pb2.ExecJobRequest(job_id=args.job_id, argv=argv, timeout_seconds=timeout)
    # The server answers once the command ended, or its worker's answer was overdue.
    ran: jobs_pb2.ExecJobResponse = client.call(client.jobs.ExecJob, request, timeout=seconds + 2 * ANSWER_WITHIN)
    if term.json:
        term.data(exec_dict(ran))
        return ran.exit_code
    term.raw(ran.stdout, stderr=False)
    term.raw(ran.stderr, stderr=True)
    for name, kept, total in (("stdout", ran.stdout, ran.stdout_bytes), ("stderr", ran.stderr, ran.stderr_bytes)):
        if cut(total):
            term.warning(f"[hodei] {name} cut: its first {size_text(len(kept))} of {size_text(total)} shown")
    if ran.exit_code:
        term.info(f"[hodei] {ran.message}")
    return ran.exit_code


def update_request(args: argparse.Namespace) -> None:
    """Builds ``args.asked`` before any connection: what `job update` changes (Slurm's
    ``scontrol update`` of a pending job), each value checked as `job run`'s is."""
    asked = {
        "priority": args.priority,
        "timeout_seconds": args.timeout,
        "cpu_cores": args.cpu,
        "memory_bytes": None if args.memory is None else parse_size(args.memory, "--memory", _MOST_MEMORY),
        "disk_bytes": None if args.disk is None else parse_size(args.disk, "--disk", _MOST_DISK),
    }
    args.asked = {name: value for name, value in asked.items() if value is not None}
    if not args.asked:
        raise InvalidInput("nothing to change: give --priority, --timeout, --cpu, --memory or --disk")
    sizes = Resources(args.cpu or 0.0, asked["memory_bytes"] or 0, asked["disk_bytes"] or 0)
    check_limits(args.timeout, sizes)
    if args.priority is not None:
        check_priority(args.priority)


def update(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    def change(job_id: str) -> common_pb2.Job:
        request = jobs_pb2.UpdateJobRequest(job_id=job_id, **args.asked)
        updated: jobs_pb2.GetJobResponse = client.call(client.jobs.UpdateJob, request)
        return updated.job

    def done(job: common_pb2.Job) -> str:
        spec = job.spec
        resources = {name: getattr(spec.resources, name) for name in ("cpu_cores", "memory_bytes", "disk_bytes")}
        return f"priority {spec.priority}, {limits_text(spec.timeout_seconds, resources)}"

    return _each_job(term, [args.job_id, *args.more_ids], change, done)


def _each_job(
    term: Terminal,
    job_ids: list[str],
    change: Callable[[str], common_pb2.Job],
    done: Callable[[common_pb2.Job], str],
    selected: bool = False,
) -> int:
    """Changes each job given, in turn (``scancel 1 2 3``, ``scontrol hold 1 2``); with
    several, or a selection's (however many), one that is refused (ended, unknown) is said
    and the others are changed all the same (exit 2 at the end), and ``-o json`` prints one
    job a line."""
    several = selected or len(job_ids) > 1
    refused = 0
    for job_id in job_ids:
        try:
            job = change(job_id)
        except grpc.RpcError as exc:
            if not several or exc.code() not in REFUSED:
                raise
            term.error(f"{exc.details()} ({exc.code().name})")  # the server's words name the job
            refused += 1
            continue
        if term.json and several:
            term.line_data(job_dict(job))
        elif term.json:
            term.data(job_dict(job))
        else:
            term.success(f"Job {job.id} {done(job)}")
    return 2 if refused else 0


# `job logs --follow` of several jobs follows each on a stream of its own: at most this many.
MOST_FOLLOWED = 100
# Jobs a GetJobsUsage call names (the server's most: hodei.server.jobs_api.MOST_USAGE_JOBS).
MOST_USAGE_ASKED = 500


def logs(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    """One job's output; or several jobs' (ids, or a selection: an array's, a team's), each
    line after its job's name (`kubectl logs -l --prefix`): one job after another, oldest
    first, or with --follow as they print, each whole line at once."""
    if not selects(args) and not args.more_ids:
        entries = _log_entries(client, args.job_id, args.follow, args.attempt or 0, args.tail, args.since)
        _print_log(term, entries, args.timestamps)
        return 0
    if selects(args):
        jobs = list(reversed(_selected(client, args)))
    else:
        jobs = [
            client.call(client.jobs.GetJob, jobs_pb2.GetJobRequest(job_id=ref)).job
            for ref in (args.job_id, *args.more_ids)
        ]
    if not jobs:
        term.info("no job matches the selection: no output")
        return 0
    if args.follow and len(jobs) > MOST_FOLLOWED:
        raise InvalidInput(f"--follow follows at most {MOST_FOLLOWED} jobs at once, and {len(jobs)} match: narrow it")
    names = [job.spec.name for job in jobs]
    prefixes = {
        job.id: f"[{job.spec.name}] " if names.count(job.spec.name) == 1 else f"[{job.spec.name} {job.id[:8]}] "
        for job in jobs
    }
    streams = {
        job.id: _log_entries(client, job.id, args.follow, args.attempt or 0, args.tail, args.since) for job in jobs
    }
    entries = _together(streams) if args.follow else (entry for stream in streams.values() for entry in stream)
    _print_log(term, entries, args.timestamps, prefixes)
    return 0


def _print_log(
    term: Terminal,
    entries: Iterable[logs_pb2.JobLogEntry],
    timestamps: bool,
    prefixes: Mapping[str, str] | None = None,
) -> None:
    printers: dict[str, _LogPrinter] = {}
    for entry in entries:
        if term.json:
            term.line_data(message_dict(entry))
            continue
        printer = printers.get(entry.job_id)
        if printer is None:
            prefix = prefixes[entry.job_id] if prefixes else ""
            printer = printers[entry.job_id] = _LogPrinter(term, timestamps, prefix)
        printer(entry)


def _together(streams: Mapping[str, Iterator[logs_pb2.JobLogEntry]]) -> Iterator[logs_pb2.JobLogEntry]:
    """Several jobs' log entries as they come: a thread reads each job's stream."""
    arrived: queue.Queue[tuple[str, logs_pb2.JobLogEntry | BaseException | None]] = queue.Queue()

    def read(job_id: str, stream: Iterator[logs_pb2.JobLogEntry]) -> None:
        try:
            for entry in stream:
                arrived.put((job_id, entry))
        except BaseException as exc:
            arrived.put((job_id, exc))
            return
        arrived.put((job_id, None))

    for job_id, stream in streams.items():
        threading.Thread(target=read, args=(job_id, stream), name=f"logs-{job_id[:8]}", daemon=True).start()
    left = len(streams)
    while left:
        _, got = arrived.get()
        if got is None:
            left -= 1
        elif isinstance(got, BaseException):
            raise got
        else:
            yield got


def watch(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    """A line per change of state (or attempt); JSON: every update of the job, as sent.
    Several jobs (an array, a chain of --after, a selection: `-l hodei.io/parent=ID`, the
    jobs a job submitted with its API token): each in turn until it ends, exiting with
    the highest exit code (as `job run --array --wait`), where a job the platform cancelled
    because another of them ended otherwise than it asked counts 0 (``skipped``)."""
    if selects(args):  # oldest first, as they would run; read once (jobs made later are not watched)
        job_ids = [job.id for job in reversed(_selected(client, args, [args.job_id, *args.more_ids]))]
        if not job_ids:
            term.info("no job matches the selection: nothing to watch")
            return 0
    else:
        job_ids = [args.job_id, *args.more_ids]
    ended = {job.id: job for job in (_watch_one(client, term, job_id) for job_id in job_ids)}
    return max(0 if skipped(job, ended) else exit_code_of(job) for job in ended.values())


def _watch_one(client: Client, term: Terminal, job_id: str) -> common_pb2.Job:
    job, shown = None, ""
    for job in _watch(client, job_id):
        if term.json:
            term.line_data({"event": "state", "job": job_dict(job), "log": None})
            continue
        text = f"{job.id} {status_text(job)}{_attempt_note(job)}"
        if text != shown:  # a change of the job that is not one of its state (or a reconnection)
            term.line(text)
            shown = text
    assert job is not None
    return job


def events(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    response = client.call(client.jobs.GetJobEvents, jobs_pb2.GetJobEventsRequest(job_id=args.job_id))
    if term.json:
        term.data([{**message_dict(e), "payload": json.loads(e.payload_json)} for e in response.events])
        return 0
    term.table(
        ["#", "OCCURRED", "EVENT", "ACTOR", "PAYLOAD"],
        [
            [
                str(e.version),
                stamp(e.occurred_at, "auto"),
                e.event_type,
                e.actor,
                e.payload_json,
            ]
            for e in response.events
        ],
    )
    return 0


def history(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    request = jobs_pb2.GetJobHistoryRequest(job_id=args.job_id, version=args.version or 0)
    if args.at:
        request.at.FromDatetime(args.at)
    entries = client.call(client.jobs.GetJobHistory, request).entries
    if term.json:
        term.data(
            {
                "entries": [
                    {
                        "version": entry.version,
                        "event_type": entry.event_type,
                        "occurred_at": entry.occurred_at.ToJsonString(),
                        "actor": entry.actor,
                        "job": job_dict(entry.job),
                    }
                    for entry in entries
                ]
            }
        )
        return 0
    if args.at or args.version:
        (entry,) = entries
        term.line(f"As of event {entry.version} ({entry.event_type} at {when(entry, 'occurred_at', 'auto')}):")
        for line in describe(entry.job):
            term.line(line)
        return 0
    term.table(
        ["VERSION", "OCCURRED", "EVENT", "BY", "STATE", "ATTEMPT", "WORKER", "EXIT", "ERROR"],
        [
            [
                str(entry.version),
                when(entry, "occurred_at", "auto"),
                entry.event_type,
                entry.actor or "-",
                entry.job.state,
                str(entry.job.attempt),
                entry.job.worker_id or "-",
                str(entry.job.exit_code) if entry.job.has_exit_code else "-",
                entry.job.error_message or "-",
            ]
            for entry in entries
        ],
    )
    return 0


def _command_options(name: str, parser: argparse.ArgumentParser) -> None:
    """What one job command takes beside the job's id."""
    if name == "cancel":
        parser.add_argument("more_ids", nargs="*", metavar="ID", help="more jobs to cancel the same way")
        parser.add_argument("--reason", help="recorded with the cancellation")
        stop = parser.add_mutually_exclusive_group()
        stop.add_argument(
            "--grace",
            type=duration,
            metavar="DURATION",
            help="time between SIGTERM and SIGKILL for a running job, e.g. 30s or 2m (default: the server's)",
        )
        stop.add_argument("--force", dest="grace", action="store_const", const=0.0, help="SIGKILL at once, no SIGTERM")
    if name in ("hold", "release", "update", "signal"):
        parser.add_argument("more_ids", nargs="*", metavar="ID", help=f"more jobs to {name} the same way")
    if name in ("cancel", "hold", "release", "signal", "watch"):
        add_job_filters(parser.add_argument_group(f"or {name} every job that matches (as `job list` selects)"))
    if name == "logs":
        parser.add_argument(
            "more_ids", nargs="*", metavar="ID", help="more jobs' output, each line after its job's name"
        )
        add_job_filters(
            parser.add_argument_group("or the output of every job that matches (as `job list` selects)"),
            submitted_since=False,
        )
    if name == "update":
        parser.description = (
            "Changes jobs waiting in the queue (a held one, or one waiting for its --after or --begin, too; not "
            "one admitted to a slot): what is given, all of it or none. Each stays at its place in its line."
        )
        parser.add_argument(
            "--priority",
            type=int,
            help="its new priority (-1000 to 1000, higher leaves the queue first): its submitter may lower it, "
            "the operate role raise it",
        )
        parser.add_argument(
            "--timeout", type=span, metavar="DURATION", help="how long it may run: seconds or e.g. 90s, 10m, 2h"
        )
        parser.add_argument("--cpu", type=float, help="CPU cores (0: the server's default)")
        parser.add_argument("--memory", help="memory: bytes or e.g. 512Mi, 1G (0: the server's default)")
        parser.add_argument("--disk", help="the most it may write to its worker's disk: bytes or e.g. 10G")
        parser.set_defaults(prepare=update_request)
    if name == "hold":
        parser.add_argument("--reason", help="shown with the job in the queue while it is held")
    if name == "output":
        parser.add_argument("key", nargs="?", metavar="KEY", help="the output to print, as it was written")
    if name == "signal":
        parser.add_argument(
            "--signal",
            type=signal_name,
            required=True,
            metavar="NAME",
            help=f"one of {', '.join(SIGNALS)} (SIG optional): the job's processes go on, or not, as they handle it",
        )
    if name == "exec":
        parser.usage = "%(prog)s [-h] [--timeout DURATION] ID -- COMMAND [ARGS...]"
        parser.description = (
            "Runs COMMAND in a running job's worker, beside its command: as the job's user, in its working "
            "directory and environment. Prints what it printed (the job's secrets masked) and exits with its "
            "exit code. Everything after -- is the command's."
        )
        parser.add_argument(
            "--timeout",
            type=duration,
            metavar="DURATION",
            help=f"kill it after so long (exit 124): 1s to 1h (default {DEFAULT_EXEC_TIMEOUT}s)",
        )
        parser.set_defaults(command_argv=[])
    if name == "watch":
        parser.add_argument(
            "more_ids", nargs="*", metavar="ID", help="more jobs to watch, each in turn; exits with the highest code"
        )
    if name == "retry":
        parser.add_argument(
            "more_ids",
            nargs="*",
            metavar="ID",
            help="more finished jobs, retried together: one that started after another of them starts after its copy",
        )
        parser.add_argument(
            "--workflow",
            action="store_true",
            help="retry the jobs of ID's pipeline (job run --file) that did not succeed, together (argo retry)",
        )
        parser.add_argument(
            "--wait", "-w", action="store_true", help="wait and exit with the job's exit code (the highest of several)"
        )
        add_idempotency_key(parser)
    if name == "history":
        parser.add_argument(
            "--at", type=since, metavar="WHEN", help="the job as it was then: 10m, 2h (ago) or an ISO 8601 time"
        )
        parser.add_argument("--version", type=count, metavar="N", help="the job after its N-th event")
    if name == "logs":
        parser.add_argument("--follow", "-f", action="store_true", help="keep streaming until the job ends")
        parser.add_argument("--timestamps", "-t", action="store_true", help=TIMESTAMPS_HELP)
        part = parser.add_mutually_exclusive_group()
        part.add_argument(
            "--attempt", type=count, metavar="N", help="only the output of the job's N-th attempt (a retried job)"
        )
        part.add_argument(
            "--tail",
            type=tail_count,
            metavar="N",
            help="begin with the last N lines printed so far (0: none, with --follow only what comes)",
        )
        parser.add_argument(
            "--since",
            type=since,
            metavar="WHEN",
            help="begin with the lines printed since then: 10m, 2h (ago) or an ISO 8601 time",
        )


def add_spec_options(parser: argparse.ArgumentParser, name_help: str) -> dict[str, Any]:
    """The options that say what a job runs and how (``job run``, ``cron create``); returns
    each one's destination and default, what ``--file`` replaces (``refuse_spec_flags``)."""
    added: list[argparse.Action] = []

    def add(*names: str, **options: Any) -> None:
        added.append(parser.add_argument(*names, **options))

    add("--name", "-n", help=name_help)
    add("--command", "-c", help="a shell command line, or a program when --args is given")
    add("--script", help="a script file to run with bash, instead of --command")
    add("--args", "-a", help="arguments, split like a shell does: \"-c 'echo hi'\"")
    add(
        "--env",
        "-e",
        action="append",
        help="KEY=VALUE[,KEY2=VALUE2]; repeatable; a value's comma before NAME= is written \\,",
    )
    add("--env-file", action="append", metavar="PATH", help="KEY=VALUE lines (# comments); --env wins; repeatable")
    add(
        "--secret",
        action="append",
        metavar="NAME=VALUE",
        help="a secret variable: stored sealed, masked as *** in the output; repeatable",
    )
    add(
        "--secret-file",
        action="append",
        metavar="NAME=PATH",
        help="a secret variable read from a file (one trailing newline dropped); repeatable",
    )
    add(
        "--secret-env-file",
        action="append",
        metavar="PATH",
        help="secret variables, KEY=VALUE lines as --env-file reads them; --secret wins; repeatable",
    )
    add(
        "--timeout",
        "-t",
        type=span,
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="DURATION",
        help=f"how long it may run: seconds or e.g. 90s, 10m, 2h (default {DEFAULT_TIMEOUT_SECONDS:g})",
    )
    add("--provider", "-p", help="docker, kubernetes (k8s), local, or a provider id")
    add(
        "--image",
        help="the container image to run the command in, e.g. python:3.12-slim (docker provider; "
        "pulled when the engine lacks it; the image needs no Python: the agent is brought in)",
    )
    add(
        "--pull",
        choices=IMAGE_PULLS,
        help="with --image: pull it always (a moved tag is seen), when missing (Docker's default), or never",
    )
    add(
        "--node-selector",
        action="append",
        metavar="KEY=VALUE",
        help="a node label its pod needs, e.g. disktype=ssd (kubernetes provider; a pod's nodeSelector); "
        "repeatable, or several separated by commas",
    )
    add(
        "--toleration",
        action="append",
        metavar="KEY[=VALUE][:EFFECT]",
        help="a node taint its pod tolerates, as `kubectl taint` writes it, e.g. dedicated=gpu:NoSchedule "
        "(kubernetes provider); repeatable, or several separated by commas",
    )
    add(
        "--service-account",
        metavar="NAME",
        help="the Kubernetes service account its pod runs as (kubernetes provider; one the server lets jobs "
        "name: HODEI_K8S_JOB_SERVICE_ACCOUNTS)",
    )
    add(
        "--api-token",
        action="store_true",
        help="give it HODEI_TOKEN and HODEI_SERVER: an API token acting as you (the submit role at most) while it "
        "runs, so it may submit and follow jobs of its own, labelled hodei.io/parent=<its id>",
    )
    add("--cpu", type=float, help="CPU cores")
    add("--memory", help="memory: bytes or e.g. 512Mi, 1G")
    add(
        "--disk",
        help="the most the job may write to its worker's disk (bytes or e.g. 512Mi, 10G); past it the job is stopped",
    )
    add("--label", "-l", action="append", help="KEY=VALUE; repeatable")
    add("--working-dir", help="absolute directory to run in; made when missing, as the job's user could make it")
    add("--max-attempts", type=count, default=1, help="runs allowed when a worker is lost (default 1)")
    add("--priority", type=int, default=0, help="higher leaves the queue first (default 0; -1000 to 1000)")
    add(
        "--queue-timeout",
        type=span,
        metavar="DURATION",
        help="fail the job if it waits longer than this for its provider: seconds or e.g. 10m",
    )
    add(
        "--retry",
        type=int,
        default=0,
        metavar="N",
        help="run again up to N times when the command fails (exit != 0 or timeout)",
    )
    add(
        "--retry-backoff",
        type=span,
        default=0.0,
        metavar="DURATION",
        help="time between a failed attempt and its retry: seconds or e.g. 30s, 5m",
    )
    add(
        "--retry-backoff-max",
        type=span,
        default=0.0,
        metavar="DURATION",
        help="with --retry-backoff: the pause doubles after each retry, up to this (e.g. --retry-backoff 10s "
        "--retry-backoff-max 6m: 10 s, 20 s, 40 s, … 6 min)",
    )
    add(
        "--retry-on",
        action="append",
        metavar="TERMS",
        help="with --retry: the failures retried, as exit codes, ranges and timeout, e.g. 75,137,timeout; "
        "!CODE never retries one (e.g. '!2'); default every failure; repeatable, or separated by commas",
    )
    add(
        "--pool",
        metavar="NAME",
        help="run only while the pool has room: at most its size of its jobs at once, whatever their providers "
        "(`pool set NAME SIZE`)",
    )
    add(
        "--artifact",
        action="append",
        metavar="PATTERN",
        help="keep the files matching it once the command exits (`job artifacts`): a path or glob relative to the "
        "working directory (** spans directories; a directory: all its files); repeatable",
    )
    add(
        "--artifact-exclude",
        action="append",
        metavar="PATTERN",
        help="of the files --artifact matches, leave out those matching it (same form); repeatable",
    )
    add(
        "--artifacts-expire",
        type=duration,
        metavar="DURATION",
        help="delete its artifacts this long after it ended, e.g. 7d (default: with its log, HODEI_LOG_RETENTION)",
    )
    return {action.dest: action.default for action in added}


def add_spec_file(parser: argparse.ArgumentParser) -> None:
    """``--file``: the spec from a file instead of the options of ``add_spec_options``."""
    parser.add_argument(
        "--file",
        metavar="FILE",
        help="the job's spec from a YAML or JSON file (- : standard input), in the shape `job get -o json` "
        "prints as spec; its secrets' values from --secret",
    )


def add_commands(commands: Any) -> Any:
    """Adds ``job …``; returns its subcommands, for the commands other modules add there."""
    job = commands.add_parser("job", help="submit and inspect jobs").add_subparsers(dest="action", required=True)

    run_parser = job.add_parser("run", help="submit a job; prints its id")
    spec_defaults = add_spec_options(
        run_parser, "a name for people (default: the command on one line, or the --script file)"
    )
    add_spec_file(run_parser)
    after = run_parser.add_argument(
        "--after",
        action="append",
        metavar="ID[:ok|:notok|:any]",
        help=(
            f"start only once this job (an id, a prefix of one, or {LATEST}) succeeded (ok, the default), failed, "
            "timed out or was cancelled (notok), or ended at all (any); repeatable. A job that can no longer "
            "start is cancelled"
        ),
    )
    run_parser.add_argument(
        "--after-array",
        action="append",
        metavar="ID[:ok|:notok|:any]",
        help=(
            f"start only once every job of an array (named by any of its jobs, or {LATEST}) succeeded, failed or "
            "ended, as --after asks of one: a reduce after a map"
        ),
    )
    fetch = run_parser.add_argument(
        "--fetch-artifacts",
        action="store_true",
        help="before the command runs, put the artifacts of the jobs it starts after (--after, --after-array) into "
        "its working directory, at artifacts/<job id>/<name>",
    )
    run_parser.add_argument(
        "--input",
        action="append",
        metavar="PATH",
        help="a file or directory to put into the job's working directory before its command runs, under its own "
        "name (a directory with a trailing /, or ., its contents); repeatable. Uploaded first (HODEI_MAX_INPUT_BYTES)",
    )
    run_parser.add_argument(
        "--input-exclude",
        action="append",
        metavar="PATTERN",
        help="leave out of --input what matches, as .gitignore reads it: a name anywhere (.git, '*.pyc', "
        "node_modules) or, with a /, a path from the top (src/build); repeatable",
    )
    run_parser.add_argument(
        "--array",
        type=parse_array,
        metavar="INDICES",
        help=(
            "submit one job per index (0-9, 1,3,5-7, 0-20:5; at most 1000; then %%4: at most 4 of them at once), "
            "each with HODEI_ARRAY_INDEX, "
            f"HODEI_ARRAY_ID and HODEI_ARRAY_COUNT in its environment and the label {ARRAY_LABEL}=ID; "
            "prints every job's id; --wait exits with the highest exit code"
        ),
    )
    begin_at = run_parser.add_argument(
        "--begin",
        type=begin,
        metavar="TIME",
        help=(
            "start no sooner than this: a duration from now (10m, 2h) or an ISO 8601 time (UTC without a zone); "
            "the job waits in the queue out of line until then, holding no slot"
        ),
    )
    run_parser.add_argument(
        "--hold",
        action="store_true",
        help="submit it held: it waits in the queue out of line until `job release` (an array: every job)",
    )
    run_parser.add_argument("--hold-reason", metavar="TEXT", help="why, with --hold: shown with it in the queue")
    run_parser.add_argument(
        "--dry-run",
        action="store_true",
        help="have the server check it as a submission and submit nothing; prints its spec as a file --file takes "
        "(YAML; -o json: whole)",
    )
    add_idempotency_key(run_parser)
    add_wait_options(run_parser)
    spec_defaults.update({action.dest: action.default for action in (after, fetch, begin_at)})
    run_parser.set_defaults(handler=run, prepare=queue_request, spec_defaults=spec_defaults)

    for name, handler, text in (
        ("get", get, "show a job"),
        ("cancel", cancel, "cancel a job"),
        ("logs", logs, "print a job's output"),
        ("watch", watch, "print state changes until the job ends"),
        ("events", events, "list the job's domain events"),
        ("history", history, "the job after each of its events, or at one moment (--at, --version)"),
        ("retry", retry, "submit a finished job again as a new job linked to it; prints the new id"),
        ("hold", hold, "keep a job waiting in the queue out of its line until released"),
        ("release", release, "put a held job back in its line"),
        ("update", update, "change a job waiting in the queue: its priority, time limit or resources"),
        ("signal", signal_job, "send a signal to a running job's processes (scancel --signal, docker kill -s)"),
        (
            "exec",
            exec_in_job,
            "run a command in a running job's worker, as its user, in its directory and environment: "
            "job exec ID -- COMMAND [ARGS...] (kubectl exec)",
        ),
        ("output", job_output, "print a value the job left in $HODEI_OUTPUT (KEY), or all of them"),
    ):
        parser = job.add_parser(name, help=text)
        add_job_id(parser)
        parser.set_defaults(handler=handler)
        _command_options(name, parser)

    top_parser = job.add_parser(
        "top", help="what running jobs use now, CPU and memory, beside what they ask for (kubectl top pods)"
    )
    top_parser.add_argument("job_ids", nargs="*", metavar="ID", help="these jobs (ids or unique prefixes)")
    add_job_filters(top_parser.add_argument_group("or every running job that matches (as `job list` selects)"))
    top_parser.set_defaults(handler=top)

    list_parser = job.add_parser("list", help="list jobs, newest first")
    add_limit(list_parser, 20, "jobs")
    list_parser.add_argument("--offset", type=whole, default=0, metavar="N", help="skip the first N (default 0)")
    add_job_filters(list_parser)
    list_parser.set_defaults(handler=list_jobs)
    return job
