"""The JSON each command prints with ``-o json``, as JSON Schema (draft 2020-12).

Shapes come from the API's messages (``proto/hodei/jobs``), so they cannot drift from
what the CLI prints: every field is always present, absent times and messages are
null, 64-bit integers are numbers. ``hodei-jobs-cli schema "job get"`` prints one.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from hodei._proto import (
    access_pb2,
    artifacts_pb2,
    audit_pb2,
    common_pb2,
    cron_pb2,
    jobs_pb2,
    limits_pb2,
    logs_pb2,
    metrics_pb2,
    outbox_pb2,
    pools_pb2,
    providers_pb2,
    report_pb2,
    sagas_pb2,
    scheduler_pb2,
    webhooks_pb2,
)

Schema = dict[str, Any]

_SCALARS = {
    FieldDescriptor.TYPE_BOOL: "boolean",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "string",
    FieldDescriptor.TYPE_ENUM: "string",
    FieldDescriptor.TYPE_DOUBLE: "number",
    FieldDescriptor.TYPE_FLOAT: "number",
}


def _value(field: FieldDescriptor) -> Schema:
    kind = field.message_type
    if kind is None:
        return {"type": _SCALARS.get(field.type, "integer")}
    if kind.full_name == "google.protobuf.Timestamp":
        return {"type": "string", "format": "date-time"}
    return message_schema(kind)


def _field(field: FieldDescriptor) -> Schema:
    kind = field.message_type
    if kind is not None and kind.GetOptions().map_entry:
        return {"type": "object", "additionalProperties": _value(kind.fields_by_name["value"])}
    if field.is_repeated:
        return {"type": "array", "items": _value(field)}
    if kind is not None or field.has_presence:  # a message, or an `optional` number, may be absent: null
        return {"anyOf": [_value(field), {"type": "null"}]}
    return _value(field)


def message_schema(descriptor: Descriptor, **overrides: Schema | None) -> Schema:
    """Every field required; ``overrides`` replace a field's schema (None removes it)."""
    properties = {field.name: _field(field) for field in descriptor.fields}
    for name, schema in overrides.items():
        if schema is None:
            properties.pop(name)
        else:
            properties[name] = schema
    return {"type": "object", "properties": properties, "required": sorted(properties), "additionalProperties": False}


def _object(**properties: Schema) -> Schema:
    return {"type": "object", "properties": properties, "required": sorted(properties), "additionalProperties": False}


def _array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


_STRING: Schema = {"type": "string"}
_BOOLEAN: Schema = {"type": "boolean"}
_INTEGER: Schema = {"type": "integer"}
# A job: no exit code is null (not 0), and has_exit_code is left out.
JOB = message_schema(
    common_pb2.Job.DESCRIPTOR,
    exit_code=_nullable(_INTEGER),
    has_exit_code=None,
    spec=message_schema(common_pb2.JobSpec.DESCRIPTOR),
)
LOG_ENTRY = message_schema(logs_pb2.JobLogEntry.DESCRIPTOR)
# What --wait, --follow and `job watch` print, one per line.
EVENT_LINE = _object(
    event={"enum": ["state", "log"]},
    job=_nullable(JOB),
    log=_nullable(LOG_ENTRY),
)
_PROVIDERS = _array(message_schema(providers_pb2.Provider.DESCRIPTOR))
_TOKEN = message_schema(access_pb2.ApiToken.DESCRIPTOR)
_CRON_JOB = message_schema(
    cron_pb2.CronJob.DESCRIPTOR,
    spec=message_schema(common_pb2.JobSpec.DESCRIPTOR),
    more_specs=_array(message_schema(common_pb2.JobSpec.DESCRIPTOR)),
)

# Command -> (the shape, whether it prints one JSON document or one object per line).
SHAPES: dict[str, tuple[Schema, bool]] = {
    "job run": (_object(job_id=_STRING, already_submitted=_BOOLEAN), False),
    "job run --array": (
        _object(job_id=_STRING, array_id=_STRING, job_ids=_array(_STRING), already_submitted=_BOOLEAN),
        False,
    ),
    "job run --dry-run": (
        _object(spec=message_schema(common_pb2.JobSpec.DESCRIPTOR), jobs=_INTEGER),
        False,
    ),
    "job run --file (several jobs)": (
        _object(workflow_id=_STRING, job_ids=_array(_STRING), names=_array(_STRING), already_submitted=_BOOLEAN),
        False,
    ),
    "job run --file (several jobs) --dry-run": (
        _object(specs=_array(message_schema(common_pb2.JobSpec.DESCRIPTOR)), jobs=_INTEGER),
        False,
    ),
    "job run --wait": (EVENT_LINE, True),
    "job run --follow": (EVENT_LINE, True),
    "job get": (JOB, False),
    "job top": (_array(message_schema(jobs_pb2.JobUsageNow.DESCRIPTOR)), False),
    "job list": (_object(jobs=_array(JOB), total_count=_INTEGER), False),
    "job cancel": (JOB, False),
    "pool list": (_array(message_schema(pools_pb2.Pool.DESCRIPTOR)), False),
    "pool set|get|delete": (message_schema(pools_pb2.Pool.DESCRIPTOR), False),
    "limit list": (_array(message_schema(limits_pb2.SubmitterLimit.DESCRIPTOR)), False),
    "limit set|get|delete": (message_schema(limits_pb2.SubmitterLimit.DESCRIPTOR), False),
    "audit": (_array(message_schema(audit_pb2.Change.DESCRIPTOR)), False),
    "report": (message_schema(report_pb2.JobsReport.DESCRIPTOR), False),
    "webhook list": (_array(message_schema(webhooks_pb2.Webhook.DESCRIPTOR)), False),
    "webhook set|rotate": (message_schema(webhooks_pb2.SetWebhookResponse.DESCRIPTOR), False),
    "webhook get": (message_schema(webhooks_pb2.WebhookDetail.DESCRIPTOR), False),
    "webhook delete": (message_schema(webhooks_pb2.Webhook.DESCRIPTOR), False),
    "webhook test|redeliver": (message_schema(webhooks_pb2.WebhookDelivery.DESCRIPTOR), False),
    # A setting's value, and where it came from (a token's value is never printed: null).
    "config view": (
        _object(
            config_file=_STRING,
            profile=_nullable(_STRING),
            profile_from=_nullable(_STRING),
            settings={
                "type": "object",
                "additionalProperties": _object(value=_nullable(_STRING), **{"from": _STRING}),
            },
        ),
        False,
    ),
    "config profiles": (
        _array(_object(name=_STRING, server=_nullable(_STRING), token=_BOOLEAN, default=_BOOLEAN)),
        False,
    ),
    "job hold|release|update|signal": (JOB, False),
    "job exec": (
        _object(
            index=_INTEGER,
            exit_code=_INTEGER,
            message=_STRING,
            stdout=_STRING,
            stderr=_STRING,
            stdout_bytes=_INTEGER,
            stderr_bytes=_INTEGER,
        ),
        False,
    ),
    "job retry": (_object(job_id=_STRING, retry_of=_STRING, already_submitted=_BOOLEAN), False),
    "job retry (several)": (
        _object(job_ids=_array(_STRING), retry_of=_array(_STRING), already_submitted=_BOOLEAN),
        False,
    ),
    "job workflow": (
        message_schema(
            jobs_pb2.Workflow.DESCRIPTOR, jobs=_array(message_schema(jobs_pb2.WorkflowJob.DESCRIPTOR, job=JOB))
        ),
        False,
    ),
    "job watch": (EVENT_LINE, True),
    "job logs": (LOG_ENTRY, True),
    "job artifacts": (message_schema(artifacts_pb2.ListArtifactsResponse.DESCRIPTOR), False),
    "job output": ({"type": "object", "additionalProperties": _STRING}, False),
    "job events": (
        _array(message_schema(jobs_pb2.JobEvent.DESCRIPTOR, payload={"type": "object"})),
        False,
    ),
    "job describe": (
        _object(
            job=JOB,
            sagas=_array(message_schema(sagas_pb2.Saga.DESCRIPTOR)),
            workers=_array(message_schema(jobs_pb2.JobWorker.DESCRIPTOR)),
            webhook_messages=_array(message_schema(webhooks_pb2.WebhookDelivery.DESCRIPTOR)),
            execs=_array(message_schema(jobs_pb2.JobExec.DESCRIPTOR)),
        ),
        False,
    ),
    "job history": (
        _object(
            entries=_array(
                _object(
                    version=_INTEGER,
                    event_type=_STRING,
                    occurred_at={"type": "string", "format": "date-time"},
                    actor=_STRING,
                    job=JOB,
                )
            )
        ),
        False,
    ),
    "saga list": (_object(sagas=_array(message_schema(sagas_pb2.Saga.DESCRIPTOR))), False),
    "saga show": (message_schema(sagas_pb2.Saga.DESCRIPTOR), False),
    "provider list": (_PROVIDERS, False),
    "provider get|enable|disable|health|capacity": (_PROVIDERS, False),
    "queue": (message_schema(scheduler_pb2.QueueStatus.DESCRIPTOR), False),
    "worker list": (_array(message_schema(scheduler_pb2.Worker.DESCRIPTOR)), False),
    "metrics": (message_schema(metrics_pb2.Metrics.DESCRIPTOR), False),
    "outbox dead-letters": (
        _object(dead_letters=_array(message_schema(outbox_pb2.DeadLetter.DESCRIPTOR))),
        False,
    ),
    "outbox redrive": (_object(redriven=_array(_STRING)), False),
    "token create": (message_schema(access_pb2.ApiToken.DESCRIPTOR, token=_STRING), False),
    "token list": (_array(_TOKEN), False),
    "token revoke": (_TOKEN, False),
    "whoami": (message_schema(access_pb2.WhoAmIResponse.DESCRIPTOR), False),
    "cron create|get|pause|resume|delete": (_CRON_JOB, False),
    "cron list": (_object(cron_jobs=_array(_CRON_JOB)), False),
    "cron run": (_object(job_id=_STRING, already_submitted=_BOOLEAN), False),
    "cron run (a pipeline)": (
        _object(workflow_id=_STRING, job_ids=_array(_STRING), already_submitted=_BOOLEAN),
        False,
    ),
    "cron backfill": (_object(runs=_array(message_schema(cron_pb2.BackfilledRun.DESCRIPTOR))), False),
    "cron run --wait": (EVENT_LINE, True),
    "cron run --follow": (EVENT_LINE, True),
}
