"""The web console, ``/metrics``, ``/healthz`` and ``/readyz``, served by ``hodei-server``
on ``HODEI_HTTP_PORT`` from its own event loop.

Pages are rendered on the server (Jinja2 templates, no build step, nothing from a CDN);
a little plain JavaScript refreshes the job list and streams a running job's log over
server-sent events. Every read and every action is an API method called through
``hodei.console.api.Api``, under the token of the signed-in person (an HTTP-only cookie,
or an ``Authorization: Bearer`` header for scrapers).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import ConnectionPool

from hodei._proto import (
    artifacts_pb2,
    audit_pb2,
    common_pb2,
    cron_pb2,
    jobs_pb2,
    limits_pb2,
    logs_pb2,
    outbox_pb2,
    pools_pb2,
    providers_pb2,
    report_pb2,
    sagas_pb2,
    scheduler_pb2,
    webhooks_pb2,
)
from hodei.audit import KINDS
from hodei.cli.parsing import (
    WIRE_INT_MAX,
    bound_message,
    limit_bound,
    parse_env_lines,
    parse_labels,
    parse_size,
    since_moment,
)
from hodei.clock import DatabaseClock
from hodei.console.api import Api
from hodei.console.timeline import timeline
from hodei.domain.base import uuid_or_none
from hodei.domain.cron import CRON_LABEL
from hodei.domain.duration import seconds_of
from hodei.domain.execs import cut
from hodei.domain.job import SIGNALS, JobState
from hodei.domain.phases import (
    latest_usage,
    processes_stopping,
    ran_text,
    seconds_text,
    size_text,
    stopped_text,
    waits_in_queue,
)
from hodei.domain.spec import AFTER_CONDITIONS, DEFAULT_TIMEOUT_SECONDS, LabelSelector
from hodei.domain.workflow import WORKFLOW_LABEL
from hodei.errors import (
    AlreadyExists,
    ConcurrencyConflict,
    HodeiError,
    InvalidInput,
    InvalidTransition,
    LimitReached,
    NotFound,
    PermissionDenied,
    ProviderUnavailable,
    ShuttingDown,
    StoreUnavailable,
    Unauthenticated,
)
from hodei.logs import attempt_begins
from hodei.metrics import PlatformMetrics
from hodei.report import GROUPINGS, LABEL
from hodei.roles import Caller
from hodei.server.edge import brief
from hodei.server.jobs_api import may_act_on
from hodei.store.db import translate_errors
from hodei.store.migrations import schema_problem
from hodei.wire import (
    MAX_QUEUE_LISTED,
    after_names,
    after_text,
    exec_dict,
    message_dict,
    not_succeeded,
    using_text,
    workflow_dict,
    workflow_state_text,
)

COOKIE = "hodei_token"
HERE = Path(__file__).parent
JOBS = "/hodei.jobs.JobExecutionService/"
# The new-job form's fields, as it first shows them.
NEW_JOB = dict.fromkeys(("command", "name", "provider", "image", "env", "labels"), "") | {
    "timeout": f"{DEFAULT_TIMEOUT_SECONDS:g}"
}

SUBMITTED_BEFORE = "This form ran a job already, with other values. Run it again to submit these as a new job."
ARTIFACTS = "/hodei.jobs.ArtifactService/"
CRON = "/hodei.jobs.CronService/"
WEBHOOKS = "/hodei.jobs.WebhookService/"
PAGE_SIZE = 50
# On every response. No other site may frame the console (its buttons would take a
# visitor's clicks there, under their session), and a page runs the console's own script
# and styles only: nothing injected into one would run. Downloads are what they say.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
LOG_LINES_SHOWN = 10_000

_STATUS: list[tuple[type[HodeiError], type[web.HTTPException]]] = [
    (Unauthenticated, web.HTTPUnauthorized),
    (PermissionDenied, web.HTTPForbidden),
    (NotFound, web.HTTPNotFound),
    (InvalidInput, web.HTTPBadRequest),
    (AlreadyExists, web.HTTPConflict),
    (InvalidTransition, web.HTTPConflict),  # a button pressed as the job moved on (it ended, say)
    (LimitReached, web.HTTPTooManyRequests),
    (ConcurrencyConflict, web.HTTPConflict),  # other writers kept changing the job: press it again
    (StoreUnavailable, web.HTTPServiceUnavailable),
    (ProviderUnavailable, web.HTTPServiceUnavailable),
    (ShuttingDown, web.HTTPServiceUnavailable),
]


async def _posted_key(request: web.Request) -> str:
    """The idempotency key a button's form carries (its page made it)."""
    return str((await request.post()).get("key", ""))


def _new_job_form(typed: dict[str, str]) -> dict[str, str]:
    """The New job form's values: what was typed over the defaults, and the key that the
    form's posts share (a new one where it has none)."""
    return {**NEW_JOB, **typed, "key": typed.get("key") or str(uuid.uuid4())}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Console:
    def __init__(
        self,
        api: Api,
        metrics: PlatformMetrics,
        pool: ConnectionPool,
        clock: DatabaseClock,
        *,
        secure: bool,
        metrics_public: bool,
    ) -> None:
        self.api = api
        # The clock sagas' times are in (a running step's bar ends at its now).
        self.clock = clock
        self.metrics = metrics
        self.pool = pool
        self.secure = secure
        self.metrics_public = metrics_public
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["when"] = _when
        self.templates.filters["short"] = lambda value: (value or "")[:8]
        self.templates.filters["size"] = lambda value: size_text(int(value or 0))
        self.templates.filters["seconds"] = seconds_text
        self.templates.globals["after_words"] = AFTER_CONDITIONS

    # Plumbing ---------------------------------------------------------------------

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._errors])
        app.router.add_get("/", self.index)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.scrape)
        app.router.add_get("/login", self.login_form)
        app.router.add_post("/login", self.login)
        app.router.add_post("/logout", self.logout)
        app.router.add_get("/jobs", self.jobs)
        app.router.add_get("/jobs/rows", self.job_rows)
        app.router.add_get("/jobs/new", self.new_job)
        app.router.add_post("/jobs", self.submit)
        app.router.add_get("/jobs/{id}", self.job)
        app.router.add_get("/jobs/{id}/logs", self.follow_logs)
        app.router.add_get("/jobs/{id}/artifacts/{attempt:\\d+}/{name:.+}", self.artifact)
        app.router.add_post("/jobs/{id}/cancel", self.cancel)
        app.router.add_post("/jobs/{id}/signal", self.signal)
        app.router.add_post("/jobs/{id}/exec", self.exec_command)
        app.router.add_post("/jobs/{id}/retry", self.retry)
        app.router.add_post("/jobs/{id}/{action:hold|release}", self.hold)
        app.router.add_post("/jobs/{id}/update", self.update)
        app.router.add_get("/workflows/{id}", self.workflow)
        app.router.add_get("/workflows/{id}/body", self.workflow_body)
        app.router.add_post("/workflows/{id}/retry", self.retry_workflow)
        app.router.add_post("/workflows/{id}/cancel", self.cancel_workflow)
        app.router.add_get("/providers", self.providers)
        app.router.add_post("/providers/{name}/{action:enable|disable}", self.switch_provider)
        app.router.add_get("/workers", self.workers)
        app.router.add_get("/queue", self.queue)
        app.router.add_post("/pools", self.set_pool)
        app.router.add_post("/pools/{name}/delete", self.delete_pool)
        app.router.add_post("/limits", self.set_limit)
        app.router.add_post("/limits/{submitter}/delete", self.delete_limit)
        app.router.add_get("/sagas", self.sagas)
        app.router.add_get("/cron", self.cron_jobs)
        app.router.add_post("/cron/{name}/{action:pause|resume|run}", self.cron_action)
        app.router.add_post("/cron/{name}/backfill", self.cron_backfill)
        app.router.add_get("/dead-letters", self.dead_letters)
        app.router.add_get("/audit", self.audit)
        app.router.add_get("/report", self.report)
        app.router.add_get("/webhooks", self.webhooks)
        app.router.add_get("/webhooks/{name}", self.webhook)
        app.router.add_post("/webhooks/{name}/test", self.test_webhook)
        app.router.add_post("/webhooks/{name}/redeliver", self.redeliver)
        app.router.add_post("/webhooks/{name}/delete", self.delete_webhook)
        app.router.add_post("/dead-letters/redrive", self.redrive)
        app.router.add_static("/static", HERE / "static", append_version=True)
        app.on_response_prepare.append(_secure)
        return app

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Hodei errors become HTTP statuses with the API's message; a page that needs a
        token sends a browser to sign in."""
        try:
            return await handler(request)
        except HodeiError as exc:
            status = next((kind for error, kind in _STATUS if isinstance(exc, error)), web.HTTPInternalServerError)
            if status is web.HTTPUnauthorized and _wants_html(request) and request.method == "GET":
                raise web.HTTPSeeOther(f"/login?next={request.path_qs}") from None
            return self._page(request, "error.html", None, status=status.status_code, message=brief(exc.message))

    def _token(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip()
        return request.cookies.get(COOKIE)

    async def _caller(self, request: web.Request) -> Caller:
        """Who sent the request: its token looked up once per request."""
        if "who" not in request:
            request["who"] = await asyncio.to_thread(self.api.identify, self._token(request))
        who: Caller = request["who"]
        return who

    async def _call(self, request: web.Request, method: str, message: Any) -> Any:
        return await self.api.call(await self._caller(request), method, message)

    def _page(
        self, request: web.Request, template: str, who: Caller | None, status: int = 200, **values: Any
    ) -> web.Response:
        body = self.templates.get_template(template).render(
            who=who, path=request.path, may=(lambda method: who is not None and self.api.may(who, method)), **values
        )
        return web.Response(text=body, content_type="text/html", status=status)

    def _check_origin(self, request: web.Request) -> None:
        """A form posted from another site is refused (besides the SameSite cookie)."""
        origin = request.headers.get("Origin")
        if origin is not None and origin.split("://", 1)[-1] != request.host:
            raise PermissionDenied(f"a request from {origin} may not act on this console")

    async def index(self, _: web.Request) -> web.Response:
        raise web.HTTPFound("/jobs")

    # Health and metrics -------------------------------------------------------------

    async def healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, _: web.Request) -> web.Response:
        def check() -> str | None:
            with translate_errors(), self.pool.connection() as conn:
                return schema_problem(conn)

        try:
            problem = await asyncio.to_thread(check)
        except HodeiError as exc:
            return web.Response(text=f"not ready: {exc.message}\n", status=503)
        if problem:
            return web.Response(text=f"not ready: {problem}\n", status=503)
        return web.Response(text="ready\n")

    async def scrape(self, request: web.Request) -> web.Response:
        if not self.metrics_public:
            self.api.check(await self._caller(request), "/hodei.jobs.MetricsService/GetMetrics")
        body = await asyncio.to_thread(generate_latest, self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # Signing in ---------------------------------------------------------------------

    async def login_form(self, request: web.Request) -> web.Response:
        return self._page(request, "login.html", None, next=_safe_next(request.query.get("next")), error="")

    async def login(self, request: web.Request) -> web.Response:
        form = await request.post()
        token = str(form.get("token", "")).strip()
        target = _safe_next(str(form.get("next", "")))
        try:
            who = await asyncio.to_thread(self.api.identify, token or None)
        except HodeiError as exc:
            return self._page(request, "login.html", None, status=401, next=target, error=exc.message)
        response = web.HTTPSeeOther(target)
        if who.authenticated:
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=self.secure, path="/")
        raise response

    async def logout(self, request: web.Request) -> web.Response:
        self._check_origin(request)
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        raise response

    # Jobs ---------------------------------------------------------------------------

    def _job_query(self, request: web.Request) -> tuple[jobs_pb2.ListJobsRequest, dict[str, str]]:
        shown = {
            key: request.query.get(key, "").strip()
            for key in ("state", "provider", "name", "label", "since", "submitter")
        }
        status = 0
        if shown["state"]:
            try:
                status = JobState(shown["state"].upper()).code
            except ValueError:
                raise InvalidInput(f"unknown state `{shown['state']}`") from None
        selector = [shown["label"]] if shown["label"] else []
        LabelSelector.of(selector)  # refused here, in the selector's own words
        page = _from_one(request, "page", WIRE_INT_MAX // PAGE_SIZE + 1)  # its offset an int32
        message = jobs_pb2.ListJobsRequest(
            limit=PAGE_SIZE,
            offset=(page - 1) * PAGE_SIZE,
            status=status,  # type: ignore[arg-type]
            provider=shown["provider"],
            name=shown["name"],
            label_selector=selector,
            submitter=shown["submitter"],
        )
        if shown["since"]:
            message.created_since.FromDatetime(_moment(shown, "since"))
        return message, shown

    async def jobs(self, request: web.Request) -> web.Response:
        message, shown = self._job_query(request)
        listed = await self._call(request, JOBS + "ListJobs", message)
        who = await self._caller(request)
        return self._page(
            request,
            "jobs.html",
            who,
            jobs=[message_dict(job) for job in listed.jobs],
            total=listed.total_count,
            filters=shown,
            states=[state.value for state in JobState],
            query=request.query_string,
        )

    async def new_job(self, request: web.Request) -> web.Response:
        """The form `job run` would take: command, name, provider, image, timeout, env, labels;
        and an idempotency key of its own, so that posting it twice (a double click, a
        reload that posts again) submits one job."""
        return self._page(request, "new_job.html", await self._caller(request), form=_new_job_form({}), error=None)

    async def submit(self, request: web.Request) -> web.Response:
        """`job run` from the form (the submit role); bad input shows the form again with the
        API's reason and what was typed, and submits nothing."""
        self._check_origin(request)
        form = {key: str(value) for key, value in (await request.post()).items()}
        try:
            timeout = _seconds(form.get("timeout", "").strip(), "timeout")
            spec = common_pb2.JobSpec(
                name=form.get("name", "").strip(),
                command=form.get("command", ""),
                provider=form.get("provider", ""),
                image=form.get("image", "").strip(),
                timeout_seconds=timeout,
                env=parse_env_lines(form.get("env", ""), "environment"),
                labels=parse_labels([line for line in form.get("labels", "").splitlines() if line.strip()]),
            )
            queued = await self._call(
                request, JOBS + "QueueJob", jobs_pb2.QueueJobRequest(spec=spec, idempotency_key=form.get("key", ""))
            )
        except (InvalidInput, LimitReached) as exc:
            # Refused: shown again as typed (past the submitter's limit, to be sent once room is made).
            who, status = await self._caller(request), 429 if isinstance(exc, LimitReached) else 400
            return self._page(request, "new_job.html", who, status=status, form=_new_job_form(form), error=exc.message)
        except AlreadyExists:
            # The form came back (the browser's Back) and was changed: its key ran a job.
            who, again = await self._caller(request), _new_job_form({**form, "key": ""})
            return self._page(request, "new_job.html", who, status=409, form=again, error=SUBMITTED_BEFORE)
        raise web.HTTPSeeOther(f"/jobs/{queued.job_id}")

    async def job_rows(self, request: web.Request) -> web.Response:
        """The list's rows alone: what the page's script swaps in every two seconds."""
        message, _ = self._job_query(request)
        listed = await self._call(request, JOBS + "ListJobs", message)
        return self._page(request, "job_rows.html", None, jobs=[message_dict(job) for job in listed.jobs])

    async def job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        described = await self._call(request, JOBS + "DescribeJob", jobs_pb2.GetJobRequest(job_id=job_id))
        job_id = described.job.id
        events = await self._call(request, JOBS + "GetJobEvents", jobs_pb2.GetJobEventsRequest(job_id=job_id))
        logs = await self._call(
            request,
            "/hodei.jobs.LogStreamService/GetLogs",
            logs_pb2.GetLogsRequest(job_id=job_id, limit=LOG_LINES_SHOWN, tail=LOG_LINES_SHOWN),
        )
        phases = [(p.name, p.attempt) for p in described.job.phases]
        artifacts = []  # most jobs keep none: their events are not read a second time
        if any(name == "artifacts_stored" for name, _ in phases):
            listing = artifacts_pb2.ListArtifactsRequest(job_id=job_id)
            artifacts = list((await self._call(request, ARTIFACTS + "ListArtifacts", listing)).artifacts)
        using = ""
        if described.job.state == JobState.RUNNING.value:
            now = jobs_pb2.GetJobsUsageRequest(job_ids=[job_id])
            using = "".join(using_text(job) for job in (await self._call(request, JOBS + "GetJobsUsage", now)).jobs)
        who = await self._caller(request)
        description = message_dict(described)
        return self._page(
            request,
            "job.html",
            who,
            job=description["job"],
            terminal=JobState(described.job.state).is_terminal,
            stopping=processes_stopping(described.job.state, described.job.attempt, phases),
            waiting=waits_in_queue(described.job.state, described.job.attempt, phases),
            may_act=may_act_on(who, described.job.submitted_by),
            used=latest_usage(description["job"]["phases"]),
            ran=ran_text(
                described.job.run_seconds,
                described.job.attempt,
                description["job"]["cpu_seconds"],
                description["job"]["peak_memory_bytes"],
            ),
            using=using,
            stopped=stopped_text(described.job.attempt, description["job"]["phases"]),
            sagas=description["sagas"],
            workers=description["workers"],
            webhook_messages=description["webhook_messages"],
            execs=description["execs"],
            timeline=timeline(description["sagas"], self.clock()),
            events=[
                {**message_dict(event), "payload": json.loads(event.payload_json or "{}")} for event in events.events
            ],
            lines=_log_lines(logs.entries),
            shown=LOG_LINES_SHOWN,
            artifacts=[message_dict(artifact) for artifact in artifacts],
            # The Retry button's: pressed twice, or its page reloaded and posted again, one copy.
            retry_key=str(uuid.uuid4()),
            signals=SIGNALS,
            workflow_id=described.job.spec.labels.get(WORKFLOW_LABEL, ""),
        )

    async def _workflow(self, request: web.Request) -> jobs_pb2.Workflow:
        """The pipeline the path names by any of its jobs."""
        named = jobs_pb2.GetJobRequest(job_id=request.match_info["id"])
        workflow: jobs_pb2.Workflow = await self._call(request, JOBS + "GetWorkflow", named)
        return workflow

    async def workflow(self, request: web.Request) -> web.Response:
        """A pipeline: its stages side by side (GitLab's pipeline graph), each job with its
        state and what it starts after."""
        # The Retry button's key: pressed twice, or its page posted again, one set of copies.
        return await self._workflow_page(request, "workflow.html", str(uuid.uuid4()))

    async def workflow_body(self, request: web.Request) -> web.Response:
        """The page but its frame, as its script swaps it in while the pipeline runs: the
        Retry button keeps the page's key."""
        key = uuid_or_none(request.query.get("key", "")) or uuid.uuid4()
        return await self._workflow_page(request, "workflow_body.html", str(key))

    async def _workflow_page(self, request: web.Request, template: str, retry_key: str) -> web.Response:
        workflow = await self._workflow(request)
        names = after_names(workflow)
        shown = workflow_dict(workflow)
        stages: dict[int, list[dict[str, Any]]] = {}
        for entry, data in zip(workflow.jobs, shown["jobs"], strict=True):
            stages.setdefault(entry.stage, []).append(
                {**data, "state": workflow_state_text(entry), "after": after_text(entry.job, names)}
            )
        who = await self._caller(request)
        return self._page(
            request,
            template,
            who,
            workflow=shown,
            stages=stages,
            terminal=JobState(workflow.state).is_terminal,
            again=len(not_succeeded(workflow)),
            retry_key=retry_key,
        )

    async def retry_workflow(self, request: web.Request) -> web.Response:
        """`job retry --workflow ID`: the jobs of the pipeline that did not succeed, together
        (the page's key: pressed twice, one set of copies)."""
        self._check_origin(request)
        named = request.match_info["id"]
        retry = jobs_pb2.RetryJobsRequest(workflow=named, idempotency_key=await _posted_key(request))
        await self._call(request, JOBS + "RetryJobs", retry)
        raise web.HTTPSeeOther(f"/workflows/{named}")

    async def cancel_workflow(self, request: web.Request) -> web.Response:
        """`job cancel -l hodei.io/workflow=ID`: each of its jobs not ended, the last stage
        first (a job cancelled before those starting after it would have the platform cancel
        them as branches not taken, or start one waiting for its failure); one that ended
        meanwhile is left as it ended."""
        self._check_origin(request)
        workflow = await self._workflow(request)
        for entry in reversed(workflow.jobs):
            if not JobState(entry.job.state).is_terminal:
                with contextlib.suppress(InvalidTransition):
                    await self._call(request, JOBS + "CancelJob", jobs_pb2.CancelJobRequest(job_id=entry.job.id))
        raise web.HTTPSeeOther(f"/workflows/{workflow.id}")

    async def artifact(self, request: web.Request) -> web.StreamResponse:
        """One artifact's bytes, as a download named after it."""
        wanted = artifacts_pb2.ReadArtifactRequest(
            job_id=request.match_info["id"],
            name=request.match_info["name"],
            attempt=_whole(request.match_info["attempt"], "attempt"),
        )
        stream = self.api.stream(await self._caller(request), ARTIFACTS + "ReadArtifact", wanted)
        try:
            # Its description comes first; errors (unknown job or name, no token) before the response.
            first = await anext(stream, None)
            assert first is not None
            filename = quote(first.artifact.name.rsplit("/", 1)[-1])
            response = web.StreamResponse(
                headers={
                    "Content-Type": "application/octet-stream",
                    "Content-Length": str(first.artifact.size_bytes),
                    "Content-Disposition": f"attachment; filename*=UTF-8''{filename}",
                }
            )
            await response.prepare(request)
            async for piece in stream:
                await response.write(piece.data)
            return response
        finally:
            await stream.aclose()

    async def follow_logs(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: each new line of a job's log, then ``end`` once it ended."""
        job_id = request.match_info["id"]
        from_line = _from_one(request, "from", 2**63 - 1)  # an int64
        subscription = logs_pb2.SubscribeLogsRequest(job_id=job_id, from_line=from_line, follow=True)
        who = await self._caller(request)
        stream = self.api.stream(who, "/hodei.jobs.LogStreamService/SubscribeLogs", subscription)
        try:
            batch = await anext(stream, None)  # errors (unknown job, no token) surface before the stream opens
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await response.prepare(request)
            while batch is not None:
                for entry in batch.entries:
                    data = {
                        "n": entry.line_number,
                        "stream": _stream(entry.stream),
                        "text": entry.line,
                        "attempt": entry.attempt,
                    }
                    await response.write(f"data: {json.dumps(data)}\n\n".encode())
                batch = await anext(stream, None)
            await response.write(b"event: end\ndata: {}\n\n")
            return response
        finally:
            await stream.aclose()  # a closed browser tab ends the follower here, not at garbage collection

    async def cancel(self, request: web.Request) -> web.Response:
        self._check_origin(request)
        job_id = request.match_info["id"]
        cancel = jobs_pb2.CancelJobRequest(job_id=job_id)
        if (await request.post()).get("force"):
            cancel.grace_seconds = 0  # Kill: `job cancel --force`
        await self._call(request, JOBS + "CancelJob", cancel)
        raise web.HTTPSeeOther(f"/jobs/{job_id}")

    async def signal(self, request: web.Request) -> web.Response:
        """`job signal ID --signal NAME` (its owner's, or the operate role's)."""
        self._check_origin(request)
        job_id = request.match_info["id"]
        name = str((await request.post()).get("signal", ""))
        await self._call(request, JOBS + "SignalJob", jobs_pb2.SignalJobRequest(job_id=job_id, signal=name))
        raise web.HTTPSeeOther(f"/jobs/{job_id}")

    async def exec_command(self, request: web.Request) -> web.Response:
        """`job exec ID -- sh -c COMMAND` (its owner's, or the operate role's): what the
        command printed and how it ended, on a page of its own."""
        self._check_origin(request)
        job_id = request.match_info["id"]
        command = str((await request.post()).get("command", ""))
        if not command.strip():
            raise InvalidInput("give the command to run in the job, as a shell line")
        asked = jobs_pb2.ExecJobRequest(job_id=job_id, argv=["sh", "-c", command])
        ran = exec_dict(await self._call(request, JOBS + "ExecJob", asked))
        shown = {name: cut(ran[f"{name}_bytes"]) for name in ("stdout", "stderr")}
        return self._page(
            request, "exec.html", await self._caller(request), job_id=job_id, command=command, ran=ran, cut=shown
        )

    async def hold(self, request: web.Request) -> web.Response:
        self._check_origin(request)
        job_id = request.match_info["id"]
        if request.match_info["action"] == "hold":
            await self._call(request, JOBS + "HoldJob", jobs_pb2.HoldJobRequest(job_id=job_id))
        else:
            await self._call(request, JOBS + "ReleaseJob", jobs_pb2.GetJobRequest(job_id=job_id))
        raise web.HTTPSeeOther(f"/jobs/{job_id}")

    async def update(self, request: web.Request) -> web.Response:
        """`job update ID --priority N --timeout D --cpu N --memory SIZE`: what the form changed
        of a waiting job (its fields come filled with what the job has), in one call. Its owner
        lowers its priority, the operate role raises it."""
        self._check_origin(request)
        job_id = request.match_info["id"]
        form = {key: str(value).strip() for key, value in (await request.post()).items()}
        asked = jobs_pb2.UpdateJobRequest(job_id=job_id)
        if form.get("priority", "") != form.get("was_priority", ""):
            asked.priority = _whole(form.get("priority", ""), "priority")
        if form.get("timeout", "") != form.get("was_timeout", ""):
            asked.timeout_seconds = _seconds(form.get("timeout", ""), "timeout")
        if form.get("cpu", "") != form.get("was_cpu", ""):
            asked.cpu_cores = _cores(form.get("cpu", ""))
        if form.get("memory", "") != form.get("was_memory", ""):
            asked.memory_bytes = parse_size(form.get("memory", "") or "0", "memory", "1 TiB")
        await self._call(request, JOBS + "UpdateJob", asked)
        raise web.HTTPSeeOther(f"/jobs/{job_id}")

    async def retry(self, request: web.Request) -> web.Response:
        self._check_origin(request)
        retry = jobs_pb2.RetryJobRequest(job_id=request.match_info["id"], idempotency_key=await _posted_key(request))
        queued = await self._call(request, JOBS + "RetryJob", retry)
        raise web.HTTPSeeOther(f"/jobs/{queued.job_id}")

    async def set_pool(self, request: web.Request) -> web.Response:
        """`pool set NAME SIZE`: a new pool, or a new size (the operate role)."""
        self._check_origin(request)
        form = await request.post()
        size = _whole(str(form.get("size", "")), "size")
        pool = pools_pb2.SetPoolRequest(name=str(form.get("name", "")).strip(), size=size)
        await self._call(request, "/hodei.jobs.PoolService/SetPool", pool)
        raise web.HTTPSeeOther("/queue#pools")

    async def delete_pool(self, request: web.Request) -> web.Response:
        self._check_origin(request)
        pool = pools_pb2.PoolRequest(name=request.match_info["name"])
        await self._call(request, "/hodei.jobs.PoolService/DeletePool", pool)
        raise web.HTTPSeeOther("/queue#pools")

    async def set_limit(self, request: web.Request) -> web.Response:
        """`limit set SUBMITTER [N|none|*] [--max-submitted N|none|*]` (the operate role): a
        field left empty stays as it was."""
        self._check_origin(request)
        form = await request.post()
        given = {}
        for field, what in (("jobs", "the limit of jobs at once"), ("submitted", "the most jobs not ended")):
            text = str(form.get(field, "")).strip()
            if text:
                try:
                    given[field] = bound_message(limit_bound(text))
                except argparse.ArgumentTypeError as exc:
                    raise InvalidInput(f"{what} {exc}") from None
        limit = limits_pb2.SetSubmitterLimitRequest(submitter=str(form.get("submitter", "")).strip(), **given)
        await self._call(request, "/hodei.jobs.LimitService/SetSubmitterLimit", limit)
        raise web.HTTPSeeOther("/queue#submitters")

    async def delete_limit(self, request: web.Request) -> web.Response:
        self._check_origin(request)
        limit = limits_pb2.SubmitterLimitRequest(submitter=request.match_info["submitter"])
        await self._call(request, "/hodei.jobs.LimitService/DeleteSubmitterLimit", limit)
        raise web.HTTPSeeOther("/queue#submitters")

    # Providers, workers, sagas, dead letters ----------------------------------------

    async def providers(self, request: web.Request) -> web.Response:
        listed = await self._call(
            request, "/hodei.jobs.ProviderManagementService/ListProviders", providers_pb2.ListProvidersRequest()
        )
        who = await self._caller(request)
        return self._page(request, "providers.html", who, providers=[message_dict(p) for p in listed.providers])

    async def switch_provider(self, request: web.Request) -> web.Response:
        self._check_origin(request)
        method = "EnableProvider" if request.match_info["action"] == "enable" else "DisableProvider"
        await self._call(
            request,
            f"/hodei.jobs.ProviderManagementService/{method}",
            providers_pb2.GetProviderRequest(provider=request.match_info["name"]),
        )
        raise web.HTTPSeeOther("/providers")

    async def workers(self, request: web.Request) -> web.Response:
        listed = await self._call(
            request, "/hodei.jobs.SchedulerService/ListWorkers", scheduler_pb2.ListWorkersRequest(live=True, limit=500)
        )
        who = await self._caller(request)
        return self._page(request, "workers.html", who, workers=[message_dict(w) for w in listed.workers])

    async def queue(self, request: web.Request) -> web.Response:
        """What `queue` prints: jobs by state, and each queued job's place and why it waits;
        `pool list`: each pool's size, jobs running and waiting; and `limit list`: each
        submitter's limit, jobs running and waiting."""
        status = await self._call(
            request,
            "/hodei.jobs.SchedulerService/GetQueueStatus",
            scheduler_pb2.GetQueueStatusRequest(limit=MAX_QUEUE_LISTED),
        )
        pools = await self._call(request, "/hodei.jobs.PoolService/ListPools", pools_pb2.ListPoolsRequest())
        limits = await self._call(
            request, "/hodei.jobs.LimitService/ListSubmitterLimits", limits_pb2.ListSubmitterLimitsRequest()
        )
        who = await self._caller(request)
        counts = {state.value: getattr(status, state.value.lower()) for state in JobState}
        return self._page(
            request,
            "queue.html",
            who,
            counts=counts,
            queued=[message_dict(q) for q in status.queued],
            order=status.order,
            pools=[message_dict(p) for p in pools.pools],
            limits=[message_dict(found) for found in limits.limits],
        )

    async def sagas(self, request: web.Request) -> web.Response:
        method = "/hodei.jobs.SagaService/ListSagas"
        failed = await self._call(request, method, sagas_pb2.ListSagasRequest(state="FAILED", limit=100))
        recent = await self._call(request, method, sagas_pb2.ListSagasRequest(limit=100))
        shown = [message_dict(s) for s in failed.sagas]
        shown += [message_dict(s) for s in recent.sagas if s.state != "FAILED"]
        who = await self._caller(request)
        return self._page(request, "sagas.html", who, sagas=shown)

    async def cron_jobs(self, request: web.Request) -> web.Response:
        listed = await self._call(request, CRON + "ListCronJobs", cron_pb2.ListCronJobsRequest())
        who = await self._caller(request)
        shown = [
            {
                **message_dict(cron),
                "label": f"{CRON_LABEL}={cron.name}",
                "may_act": may_act_on(who, cron.owner),
                # Its Run now button's: pressed twice, one job.
                "run_key": str(uuid.uuid4()),
            }
            for cron in listed.cron_jobs
        ]
        return self._page(request, "cron.html", who, cron_jobs=shown)

    async def cron_action(self, request: web.Request) -> web.Response:
        """Pause, resume or run a cron job now (a run goes to its job's page; a pipeline's,
        to the pipeline's)."""
        self._check_origin(request)
        action = request.match_info["action"]
        name = request.match_info["name"]
        if action == "run":
            run = cron_pb2.RunCronJobRequest(name=name, idempotency_key=await _posted_key(request))
            ran = await self._call(request, CRON + "RunCronJob", run)
            raise web.HTTPSeeOther(f"/workflows/{ran.job_id}" if len(ran.job_ids) > 1 else f"/jobs/{ran.job_id}")
        method = "PauseCronJob" if action == "pause" else "ResumeCronJob"
        await self._call(request, CRON + method, cron_pb2.CronJobRequest(name=name))
        raise web.HTTPSeeOther("/cron")

    async def cron_backfill(self, request: web.Request) -> web.Response:
        """`cron backfill NAME --since … [--until …]`: to the cron job's jobs once submitted."""
        self._check_origin(request)
        name = request.match_info["name"]
        form = {key: str(value).strip() for key, value in (await request.post()).items()}
        backfill = cron_pb2.BackfillCronJobRequest(name=name)
        backfill.since.FromDatetime(_moment(form, "since"))
        if form.get("until"):
            backfill.until.FromDatetime(_moment(form, "until"))
        await self._call(request, CRON + "BackfillCronJob", backfill)
        raise web.HTTPSeeOther(f"/jobs?label={quote(f'{CRON_LABEL}={name}')}")

    async def dead_letters(self, request: web.Request) -> web.Response:
        listed = await self._call(
            request, "/hodei.jobs.OutboxService/ListDeadLetters", outbox_pb2.ListDeadLettersRequest(limit=500)
        )
        who = await self._caller(request)
        return self._page(request, "dead_letters.html", who, letters=[message_dict(d) for d in listed.dead_letters])

    async def redrive(self, request: web.Request) -> web.Response:
        self._check_origin(request)
        form = await request.post()
        ids = [str(value) for value in form.getall("id", [])]
        every = form.get("all") == "1"
        if not ids and not every:
            raise InvalidInput("choose the dead letters to redrive")
        await self._call(request, "/hodei.jobs.OutboxService/Redrive", outbox_pb2.RedriveRequest(ids=ids, all=every))
        raise web.HTTPSeeOther("/dead-letters")

    async def audit(self, request: web.Request) -> web.Response:
        kind = request.query.get("kind", "").strip()
        actor = request.query.get("actor", "").strip()
        system = request.query.get("system") == "1"
        asked = audit_pb2.ListChangesRequest(
            kinds=[kind] if kind else [], actor=actor, include_system=system, limit=500
        )
        listed = await self._call(request, "/hodei.jobs.AuditService/ListChanges", asked)
        who = await self._caller(request)
        changes = [message_dict(change) for change in listed.changes]
        return self._page(
            request, "audit.html", who, changes=changes, kinds=list(KINDS), kind_shown=kind, actor=actor, system=system
        )

    async def report(self, request: web.Request) -> web.Response:
        """What ended jobs used (`report`), by the grouping and in the window the form asks."""
        shown = {key: request.query.get(key, "").strip() for key in ("by", "since", "until", "label", "submitter")}
        selector = [shown["label"]] if shown["label"] else []
        LabelSelector.of(selector)
        asked = report_pb2.ReportJobsRequest(by=shown["by"], label_selector=selector, submitter=shown["submitter"])
        for end in ("since", "until"):
            if shown[end]:
                getattr(asked, end).FromDatetime(_moment(shown, end))
        found = await self._call(request, "/hodei.jobs.ReportService/ReportJobs", asked)
        who = await self._caller(request)
        return self._page(
            request, "report.html", who, report=message_dict(found), shown=shown, groupings=[*GROUPINGS, LABEL + "KEY"]
        )

    async def webhooks(self, request: web.Request) -> web.Response:
        listed = await self._call(request, WEBHOOKS + "ListWebhooks", webhooks_pb2.ListWebhooksRequest())
        who = await self._caller(request)
        return self._page(request, "webhooks.html", who, webhooks=[message_dict(hook) for hook in listed.webhooks])

    async def webhook(self, request: web.Request) -> web.Response:
        """A webhook and its newest messages, each with why it was not delivered."""
        asked = webhooks_pb2.WebhookRequest(name=request.match_info["name"])
        detail = await self._call(request, WEBHOOKS + "GetWebhook", asked)
        who = await self._caller(request)
        shown = message_dict(detail)
        return self._page(request, "webhook.html", who, webhook=shown["webhook"], deliveries=shown["deliveries"])

    async def test_webhook(self, request: web.Request) -> web.Response:
        """A test message, sent at once; its answer is the page's newest message."""
        self._check_origin(request)
        name = request.match_info["name"]
        await self._call(request, WEBHOOKS + "TestWebhook", webhooks_pb2.WebhookRequest(name=name))
        raise web.HTTPSeeOther(f"/webhooks/{quote(name)}")

    async def delete_webhook(self, request: web.Request) -> web.Response:
        """Its URL and secret shredded, its messages not sent given up on (`webhook delete`)."""
        self._check_origin(request)
        asked = webhooks_pb2.WebhookRequest(name=request.match_info["name"])
        await self._call(request, WEBHOOKS + "DeleteWebhook", asked)
        raise web.HTTPSeeOther("/webhooks")

    async def redeliver(self, request: web.Request) -> web.Response:
        self._check_origin(request)
        message_id = str((await request.post()).get("id", ""))
        await self._call(request, WEBHOOKS + "Redeliver", webhooks_pb2.RedeliverRequest(delivery_id=message_id))
        raise web.HTTPSeeOther(f"/webhooks/{quote(request.match_info['name'])}")


def _from_one(request: web.Request, name: str, most: int) -> int:
    """A counting query parameter (a page, a line number): 1 unless given; at most
    ``most``, what the API's field takes."""
    raw = request.query.get(name, "1").strip() or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise InvalidInput(f"{name} must be a whole number from 1 to {most}, got `{raw}`")
    return int(raw)


def _seconds(raw: str, name: str) -> float:
    """Seconds a form field gives, as a number or a duration (``90s``, ``10m``, ``2h``)."""
    seconds = seconds_of(raw)
    if seconds is None:
        raise InvalidInput(f"{name} takes seconds or a duration such as 90s, 10m or 2h, got `{raw}`")
    return seconds


def _cores(raw: str) -> float:
    """CPU cores a form field gives ("": none asked, the server's default)."""
    try:
        return float(raw or 0)
    except ValueError:
        raise InvalidInput(f"cpu must be a number of cores, got `{raw}`") from None


def _whole(raw: str, name: str) -> int:
    """A whole number a form field gives (a priority, a size), within the API's int32."""
    text = raw.strip()
    if not text.lstrip("-").isdigit() or not -WIRE_INT_MAX - 1 <= int(text) <= WIRE_INT_MAX:
        raise InvalidInput(f"{name} must be a whole number, got `{text}`")
    return int(text)


def _wants_html(request: web.Request) -> bool:
    return "text/html" in request.headers.get("Accept", "") or request.path.startswith("/jobs")


def _safe_next(target: str | None) -> str:
    """Only a path of this console (no other site after signing in)."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/jobs"
    return target


def _moment(shown: Mapping[str, str], box: str) -> datetime:
    """A form's time box (`since`, `until`): a duration back from now or a time, refused
    in the box's name."""
    try:
        return since_moment(shown[box])
    except InvalidInput as exc:
        raise InvalidInput(f"{box} {exc.message}") from None


def _when(value: str | None) -> str:
    if not value:
        return "-"
    return value.replace("T", " ").split(".")[0].rstrip("Z") + " UTC"


async def _secure(_: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


def _stream(stream: int) -> str:
    return "stderr" if stream == 2 else "stdout"


def _log_lines(entries: Iterable[logs_pb2.JobLogEntry]) -> list[tuple[int, str, str, int, bool]]:
    """(number, stream, text, attempt, whether another attempt's output begins there: the
    page shows a marker) per line."""
    lines, previous = [], None
    for entry in entries:
        begins = attempt_begins(previous, entry.attempt)
        lines.append((entry.line_number, _stream(entry.stream), entry.line, entry.attempt, begins))
        previous = entry.attempt
    return lines
