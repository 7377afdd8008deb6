"""``job workflow ID``: a pipeline at a glance (Argo's ``argo get``, GitLab's pipeline page):
each job standing in it by stage, what it starts after by name, and the pipeline's state."""

from __future__ import annotations

import argparse
from typing import Any

from hodei._proto import jobs_pb2
from hodei.cli.client import Client
from hodei.cli.jobs import add_job_id
from hodei.cli.terminal import Terminal
from hodei.domain.job import JobState
from hodei.domain.phases import seconds_text
from hodei.wire import after_names, after_text, not_succeeded, workflow_dict, workflow_state_text


def show_workflow(client: Client, term: Terminal, args: argparse.Namespace) -> int:
    workflow = client.call(client.jobs.GetWorkflow, jobs_pb2.GetJobRequest(job_id=args.job_id))
    if term.json:
        term.data(workflow_dict(workflow))
        return 0
    names = after_names(workflow)
    term.line(f"Pipeline {workflow.id}: {workflow.state}, {len(workflow.jobs)} jobs{_took(workflow)}")
    term.table(
        ["STAGE", "NAME", "STATE", "EXIT", "RAN", "TRIES", "AFTER", "ID"],
        [
            [
                str(entry.stage),
                entry.job.spec.name,
                workflow_state_text(entry),
                str(entry.job.exit_code) if entry.job.has_exit_code else "-",
                seconds_text(entry.job.run_seconds) if entry.job.started_at.seconds else "-",
                str(len(entry.copy_of) + 1),
                after_text(entry.job, names) or "-",
                entry.job.id,
            ]
            for entry in workflow.jobs
        ],
    )
    again = not_succeeded(workflow)
    if JobState(workflow.state).is_terminal and again:
        term.info(
            f"`hodei-jobs-cli job retry --workflow {workflow.id}` runs again the {len(again)} "
            f"{'job' if len(again) == 1 else 'jobs'} that did not succeed"
        )
    return 0


def _took(workflow: jobs_pb2.Workflow) -> str:
    """``, 12.4 s from its first submission to its last end`` once it has ended ("" before),
    and who submitted it (its first job's submitter)."""
    jobs = [entry.job for entry in workflow.jobs]
    who = f", submitted by {jobs[0].submitted_by}" if jobs and jobs[0].submitted_by else ""
    if not JobState(workflow.state).is_terminal or not all(job.HasField("completed_at") for job in jobs):
        return who
    first = min(job.created_at.ToDatetime() for job in jobs)
    last = max(job.completed_at.ToDatetime() for job in jobs)
    return f"{who}; {seconds_text((last - first).total_seconds())} from its first submission to its last end"


def add_commands(job: Any) -> None:
    """Adds ``job workflow`` to ``job``'s subcommands."""
    parser = job.add_parser(
        "workflow",
        help="a pipeline's jobs (job run --file of several, a cron job's run of several), named by any of them: "
        "each by stage with its state and what it starts after, and the pipeline's state (argo get)",
    )
    add_job_id(parser)
    parser.set_defaults(handler=show_workflow)
