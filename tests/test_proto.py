"""The API contract: six hodei.jobs services, status codes, generated modules up to date."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from e2e.seed import SEED_SERVICES
from hodei._proto import common_pb2, jobs_pb2, logs_pb2, metrics_pb2, providers_pb2, scheduler_pb2, worker_pb2
from hodei.domain.job import JobState

ROOT = Path(__file__).resolve().parent.parent


def test_the_descriptors_define_the_six_seed_services() -> None:
    names = set()
    for module in (jobs_pb2, worker_pb2, scheduler_pb2, providers_pb2, metrics_pb2, logs_pb2):
        names |= {service.full_name for service in module.DESCRIPTOR.services_by_name.values()}
    assert names == SEED_SERVICES


def test_job_status_codes_are_the_contract() -> None:
    codes = {value.name: value.number for value in common_pb2.JobStatus.DESCRIPTOR.values}
    assert codes == {
        "JOB_STATUS_UNSPECIFIED": 0,
        "JOB_STATUS_PENDING": 1,
        "JOB_STATUS_ASSIGNED": 2,
        "JOB_STATUS_RUNNING": 3,
        "JOB_STATUS_SUCCEEDED": 4,
        "JOB_STATUS_FAILED": 5,
        "JOB_STATUS_CANCELLED": 6,
        "JOB_STATUS_TIMEOUT": 7,
    }
    for state in JobState:
        assert codes[f"JOB_STATUS_{state.value}"] == state.code


def test_generated_modules_are_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_proto.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_the_domain_job_spec_and_the_api_job_spec_have_the_same_fields() -> None:
    """One shape: the API converts field by field (hodei.wire), so the names must agree."""
    from dataclasses import fields

    from hodei.domain.spec import JobSpec, Resources

    assert {f.name for f in fields(JobSpec)} == {f.name for f in common_pb2.JobSpec.DESCRIPTOR.fields}
    assert {f.name for f in fields(Resources)} == {f.name for f in common_pb2.ResourceRequirements.DESCRIPTOR.fields}
