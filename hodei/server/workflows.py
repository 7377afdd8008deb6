"""A pipeline as the API shows it (GetWorkflow, `job workflow`, a webhook told of pipelines):
its jobs standing by stage (``hodei.domain.workflow.standing``) and its state, from one read
of its jobs (``workflow_jobs``: each with its rank in the pipeline's state)."""

from __future__ import annotations

from hodei._proto import jobs_pb2
from hodei.domain.workflow import Member, standing
from hodei.server.convert import job_to_proto
from hodei.store.readmodels import SKIPPED, JobRow, ReadModels


def workflow_of(reads: ReadModels, workflow_id: str) -> tuple[jobs_pb2.Workflow, dict[str, JobRow]]:
    """The pipeline whose jobs carry ``workflow_id`` in hodei.io/workflow, and its jobs' rows
    by id (those standing in it and those they copy); NotFound-free: a pipeline has a job."""
    found = {str(job.id): (job, rank) for job, rank in reads.workflow_jobs(workflow_id)}
    members = [
        Member(job_id, str(job.retry_of) if job.retry_of else None, list(job.spec.get("after", {})))
        for job_id, (job, _) in found.items()
    ]
    places = standing(members)
    lowest = min(places, key=lambda place: found[place.id][1])
    workflow = jobs_pb2.Workflow(
        id=workflow_id,
        state=found[lowest.id][0].state,
        jobs=[
            jobs_pb2.WorkflowJob(
                job=job_to_proto(found[place.id][0]),
                stage=place.stage,
                skipped=found[place.id][1] == SKIPPED,
                copy_of=place.copy_of,
            )
            for place in places
        ],
    )
    return workflow, {job_id: job for job_id, (job, _) in found.items()}
