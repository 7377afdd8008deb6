"""Generates deploy/grafana-dashboard.json, the Grafana dashboard of the server's metrics.

The dashboard is written here as data (rows of panels, each a few PromQL queries) and built
with Grafana's own typed builders (grafana-foundation-sdk), so the JSON is a model Grafana
reads rather than one written by hand. ``--check`` fails when the checked-in file differs
(CI runs it through tests/test_deploy.py). What every server reads from the shared database
is taken with ``max()``, what each counts itself with ``sum()``, as in the alerts.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders.dashboard import Dashboard, DatasourceVariable, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.stat import Panel as Stat
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

OUT = Path(__file__).resolve().parent.parent / "deploy" / "grafana-dashboard.json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "[$__rate_interval]"


@dataclass(frozen=True)
class Chart:
    title: str
    description: str
    unit: str
    # (PromQL, legend) pairs; a legend's {{label}} must be a label its query keeps.
    queries: tuple[tuple[str, str], ...]
    # A single figure (a stat) instead of a line over time.
    figure: bool = False


def _quantiles(histogram: str, by: str = "") -> tuple[tuple[str, str], ...]:
    """p50 and p95 of a histogram over every server's observations."""
    labels = f"le, {by}" if by else "le"
    legend = " ".join(f"{{{{{label.strip()}}}}}" for label in by.split(",")) if by else ""
    return tuple(
        (
            f"histogram_quantile({q}, sum by ({labels}) (rate({histogram}_bucket{RATE})))",
            f"{legend} p{round(q * 100)}".strip(),
        )
        for q in (0.5, 0.95)
    )


ROWS: tuple[tuple[str, tuple[Chart, ...]], ...] = (
    (
        "Jobs",
        (
            Chart(
                "Jobs ended a minute",
                "Jobs that reached each final state, a minute (`hodei_jobs_finished_total`).",
                "short",
                ((f"sum by (state) (rate(hodei_jobs_finished_total{RATE})) * 60", "{{state}}"),),
            ),
            Chart(
                "Jobs failing",
                "The share of ended jobs that FAILED or ran past their timeout (the alert "
                "HodeiJobsFailing fires past half).",
                "percentunit",
                (
                    (
                        f'sum(rate(hodei_jobs_finished_total{{state=~"FAILED|TIMEOUT"}}{RATE})) '
                        f"/ sum(rate(hodei_jobs_finished_total{RATE}))",
                        "failing",
                    ),
                ),
            ),
            Chart(
                "Wait to start",
                "Submission to the job's start on a worker: the queue and the worker's "
                "provisioning (`queue` says why a job waits).",
                "s",
                _quantiles("hodei_job_queued_seconds"),
            ),
            Chart(
                "Run time",
                "How long commands ran, the worker's own start to end.",
                "s",
                _quantiles("hodei_job_run_seconds"),
            ),
            Chart(
                "Submission to end",
                "A job's whole time, submission to its final state.",
                "s",
                _quantiles("hodei_job_seconds"),
            ),
        ),
    ),
    (
        "Providers and queue",
        (
            Chart(
                "Provider healthy",
                "1 when the provider's last probe was healthy (`provider get NAME` says why not).",
                "short",
                (("max by (provider) (hodei_provider_healthy)", "{{provider}}"),),
            ),
            Chart(
                "Waiting in line",
                "Jobs waiting for each provider's capacity and nothing else (`queue`), and how long "
                "the oldest has waited: a line that does not move.",
                "short",
                (
                    ("max by (provider) (hodei_provider_jobs_waiting)", "{{provider}} jobs"),
                    ("max by (provider) (hodei_provider_oldest_waiting_seconds)", "{{provider}} oldest, seconds"),
                ),
            ),
            Chart(
                "Workers in use",
                "Each provider's slots taken (workers not terminated, admitted jobs without one "
                "yet) beside its capacity: `provider list`'s WORKERS.",
                "short",
                (
                    ("max by (provider) (hodei_provider_workers_in_use)", "{{provider}} in use"),
                    ("max by (provider) (hodei_provider_workers)", "{{provider}} capacity"),
                ),
            ),
            Chart(
                "CPU cores and memory asked",
                "What admitted jobs ask for (`--cpu`, `--memory`) over what `provider capacity` "
                "set; empty where no capacity is set.",
                "percentunit",
                (
                    (
                        "max by (provider) (hodei_provider_cpu_cores_asked) "
                        "/ max by (provider) (hodei_provider_cpu_cores)",
                        "{{provider}} CPU",
                    ),
                    (
                        "max by (provider) (hodei_provider_memory_bytes_asked) "
                        "/ max by (provider) (hodei_provider_memory_bytes)",
                        "{{provider}} memory",
                    ),
                ),
            ),
            Chart(
                "Pools",
                "Each pool's jobs admitted and not ended, waiting, and its size (`pool list`).",
                "short",
                (
                    ("max by (pool) (hodei_pool_running)", "{{pool}} running"),
                    ("max by (pool) (hodei_pool_queued)", "{{pool}} waiting"),
                    ("max by (pool) (hodei_pool_size)", "{{pool}} size"),
                ),
            ),
            Chart(
                "Submitters",
                "Each limited submitter's jobs running and waiting, its limit, and its most jobs "
                "not ended before refusals (`limit list`).",
                "short",
                (
                    ("max by (submitter) (hodei_submitter_running)", "{{submitter}} running"),
                    ("max by (submitter) (hodei_submitter_queued)", "{{submitter}} waiting"),
                    ("max by (submitter) (hodei_submitter_limit)", "{{submitter}} limit"),
                    ("max by (submitter) (hodei_submitter_max_submitted)", "{{submitter}} most not ended"),
                ),
            ),
            Chart(
                "Workers lost a minute",
                "Workers declared lost: no heartbeat within their timeout, or their container, pod or "
                "process failed (`job describe ID` of their jobs says which).",
                "short",
                ((f"sum by (provider) (rate(hodei_workers_lost_total{RATE})) * 60", "{{provider}}"),),
            ),
            Chart(
                "Workers connected",
                "Workers with an open stream, to each server.",
                "short",
                (("sum by (instance) (hodei_workers_connected)", "{{instance}}"),),
            ),
        ),
    ),
    (
        "Sagas and outbox",
        (
            Chart(
                "Saga step time p95",
                "Each completed step's duration, by saga and step (`saga list`, `job describe`).",
                "s",
                (
                    (
                        "histogram_quantile(0.95, sum by (le, saga_type, step) "
                        f'(rate(hodei_saga_step_seconds_bucket{{outcome="completed"}}{RATE})))',
                        "{{saga_type}} {{step}}",
                    ),
                ),
            ),
            Chart(
                "Saga steps failed a minute",
                "Steps that failed or were compensated (`saga list --state FAILED`).",
                "short",
                (
                    (
                        "sum by (saga_type, step, outcome) "
                        f'(rate(hodei_saga_step_seconds_count{{outcome!="completed"}}{RATE})) * 60',
                        "{{saga_type}} {{step}} {{outcome}}",
                    ),
                ),
            ),
            Chart(
                "Relay lag",
                "An event's commit to its delivery by the outbox relay.",
                "s",
                _quantiles("hodei_relay_lag_seconds"),
            ),
            Chart(
                "Outbox waiting",
                "Outbox rows waiting for their delivery, and the oldest one's age.",
                "short",
                (
                    ("max(hodei_outbox_backlog)", "rows waiting"),
                    ("max(hodei_outbox_oldest_pending_seconds)", "oldest, seconds"),
                ),
            ),
            Chart(
                "Dead letters",
                "Outbox rows whose delivery gave up: `outbox dead-letters`, then `outbox redrive`.",
                "short",
                (("max(hodei_outbox_dead_letters)", "dead letters"),),
                figure=True,
            ),
            Chart(
                "Database up",
                "Each server's last scrape read PostgreSQL (1) or could not (0).",
                "short",
                (("min by (instance) (hodei_database_up)", "{{instance}}"),),
                figure=True,
            ),
        ),
    ),
    (
        "Logs, artifacts and webhooks",
        (
            Chart(
                "Stored a second",
                "Bytes of job output and of artifacts the servers stored.",
                "Bps",
                (
                    (f"sum(rate(hodei_log_bytes_total{RATE}))", "logs"),
                    (f"sum(rate(hodei_artifact_bytes_total{RATE}))", "artifacts"),
                ),
            ),
            Chart(
                "Log lines lost",
                "Lines of job output a server could not store (its log directory full or unwritable), a minute.",
                "short",
                ((f"sum by (instance) (rate(hodei_log_lines_lost_total{RATE})) * 60", "{{instance}}"),),
            ),
            Chart(
                "Webhook messages",
                "Each webhook's messages kept by state; `failed` were given up on (`webhook redeliver`).",
                "short",
                (("max by (webhook, state) (hodei_webhook_messages)", "{{webhook}} {{state}}"),),
            ),
        ),
    ),
    (
        "Cron jobs",
        (
            Chart(
                "Late",
                "Seconds since a cron job's latest time while that time has no job: no server fired it.",
                "s",
                (("max by (cron) (hodei_cron_job_late_seconds)", "{{cron}}"),),
            ),
            Chart(
                "Newest job failed",
                "1 while a cron job's newest job's state is FAILED.",
                "short",
                (('max by (cron) (hodei_cron_job_last_run_state{state="FAILED"})', "{{cron}}"),),
            ),
            Chart(
                "Times skipped",
                "Times skipped because a job of an earlier time had not ended (`forbid`) or were past "
                "their starting deadline (`deadline`), in the range shown.",
                "short",
                (("max by (cron, reason) (increase(hodei_cron_job_skipped_total[$__range]))", "{{cron}} {{reason}}"),),
            ),
            Chart(
                "Since the newest job, until the next",
                "Seconds since each cron job's newest job was submitted, and until it next submits one.",
                "s",
                (
                    ("time() - max by (cron) (hodei_cron_job_last_run_timestamp_seconds)", "{{cron}} since"),
                    ("max by (cron) (hodei_cron_job_next_run_timestamp_seconds) - time()", "{{cron}} until"),
                ),
            ),
            Chart(
                "Paused",
                "Cron jobs paused (`cron pause`).",
                "short",
                (("sum(max by (cron) (hodei_cron_job_paused))", "paused"),),
                figure=True,
            ),
            Chart(
                "Versions",
                "Servers running each version: more than one while an upgrade rolls out.",
                "short",
                (("count by (version) (hodei_build_info)", "{{version}}"),),
                figure=True,
            ),
        ),
    ),
)


def dashboard() -> Dashboard:
    built = (
        Dashboard("Hodei Jobs")
        .uid("hodei-jobs")
        .tags(["hodei-jobs"])
        .description("The job platform's servers: jobs, providers and queue, sagas and outbox, logs, cron jobs.")
        .refresh("30s")
        .time("now-6h", "now")
        .editable()
        .with_variable(DatasourceVariable("datasource").label("Data source").type("prometheus"))
    )
    ids = iter(range(1, 1000))
    for title, charts in ROWS:
        built = built.with_row(Row(title).id(next(ids)))
        for chart in charts:
            built = built.with_panel(_panel(chart).id(next(ids)))
    return built


def _panel(chart: Chart) -> Timeseries | Stat:
    panel = (Stat() if chart.figure else Timeseries()).title(chart.title).description(chart.description)
    panel = panel.unit(chart.unit).datasource(DATASOURCE).height(8).span(8)
    for ref, (expr, legend) in zip("ABCDEFGH", chart.queries, strict=False):
        panel = panel.with_target(Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE))
    return panel


def render() -> str:
    return json.dumps(json.loads(JSONEncoder().encode(dashboard().build())), indent=2, sort_keys=True) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail when the checked-in dashboard is stale")
    args = parser.parse_args()
    text = render()
    if not args.check:
        OUT.write_text(text)
        return 0
    kept = OUT.read_text() if OUT.exists() else ""
    if kept == text:
        return 0
    sys.stdout.writelines(difflib.unified_diff(kept.splitlines(True), text.splitlines(True), str(OUT), "generated"))
    print(f"{OUT} is stale: run `just dashboard`", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
