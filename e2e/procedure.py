"""``just e2e``: the seed's whole procedure against a running server (``just dev``),
ending with a pass/fail table like the seed's Expected Results Summary.

    python -m e2e.procedure [--kubernetes]

Reads DATABASE_URL and HODEI_SERVER (default localhost:50051). Exits 1 if a row fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from rich.console import Console
from rich.table import Table

from e2e.seed import SEED_SERVICES, SEED_TABLES, SeedJob, check_job_get, check_phase6, phase5_jobs, submit
from hodei.domain.provider import PROVIDER_IDS, ProviderType
from hodei.logs import LogStore
from hodei.testing import Cli, query, wait_settled


@dataclass
class Row:
    test: str
    provider: str
    expected: str
    validation: str
    passed: bool = False
    detail: str = ""


class Procedure:
    def __init__(self, url: str, server: str) -> None:
        self.url = url
        self.cli = Cli(server)
        self.server = server
        self.rows: list[Row] = []

    def check(self, row: Row, body: Callable[[], str | None]) -> None:
        started = time.monotonic()
        try:
            detail = body()
            row.passed = True
            row.detail = detail or f"{time.monotonic() - started:.1f}s"
        except Exception as exc:
            row.detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            if os.environ.get("HODEI_E2E_DEBUG"):
                traceback.print_exc()
        self.rows.append(row)
        mark = "PASS" if row.passed else "FAIL"
        print(f"[{mark}] {row.test} ({row.provider}): {row.detail}", file=sys.stderr, flush=True)

    def infrastructure(self) -> None:
        def tables() -> str:
            found = [
                r[0]
                for r in query(
                    self.url, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
                )
            ]
            assert sorted(found) == sorted(SEED_TABLES), found
            return "9 tables in public"

        def providers() -> str:
            rows = query(
                self.url, "SELECT id::text, provider_type, status FROM provider_configs ORDER BY provider_type"
            )
            wanted = [(str(PROVIDER_IDS[t]), t.value, "ACTIVE") for t in (ProviderType.DOCKER, ProviderType.KUBERNETES)]
            assert all(w in rows for w in wanted), rows
            return "docker 1111…, kubernetes 2222… ACTIVE"

        def services() -> str:
            found = set(ProtoReflectionDescriptorDatabase(grpc.insecure_channel(self.server)).get_services())
            assert found >= SEED_SERVICES, found
            return "six hodei.jobs services listed by reflection"

        self.check(Row("Schema (1.2)", "-", "9 tables", "information_schema"), tables)
        self.check(Row("Providers (4.1)", "-", "ACTIVE", "provider_configs"), providers)
        self.check(Row("gRPC services (3.2)", "-", "listed", "server reflection"), services)

    def seed_jobs(self, provider: str, validations: dict[str, str]) -> None:
        provider_id = str(PROVIDER_IDS[ProviderType(provider)])
        submitted: list[tuple[SeedJob, str | Exception]] = []
        for job in phase5_jobs(provider):
            try:
                submitted.append((job, submit(self.cli, job)))
            except Exception as exc:
                submitted.append((job, exc))
        for job, job_id in submitted:

            def verify(job: SeedJob = job, job_id: str | Exception = job_id) -> str:
                if isinstance(job_id, Exception):
                    raise job_id
                wait_settled(self.url, job_id, timeout=180)
                check_job_get(self.cli, job_id)
                check_phase6(self.url, job_id, provider, provider_id, job)
                detail = f"job {job_id[:8]}…: logs, worker TERMINATED, sagas COMPLETED"
                if provider == "kubernetes":
                    detail += self.pod_output_matches(job_id)
                return detail

            label = job.title.capitalize() if job.title != "env vars" else "Env vars"
            self.check(Row(label, provider.capitalize(), "SUCCEEDED", validations.get(job.title, "Phase 6")), verify)

    def pod_output_matches(self, job_id: str) -> str:
        """Seed 7.4: what the pod printed equals the stored log. The pod is deleted after
        its job; the emulated kubelet copies a deleted pod's output, a real cluster does not."""
        (pod,) = query(self.url, "SELECT provider_resource_id FROM workers WHERE job_id = %s", (job_id,))[0]
        kept = Path(".hodei/kube") / f"{pod}.out"
        if not kept.exists():
            return "; pod output not kept (a real cluster deletes it with the pod)"
        (uri,) = query(self.url, "SELECT storage_uri FROM job_log_files WHERE job_id = %s", (job_id,))[0]
        stored = [entry.text for entry in LogStore(Path(uri.removeprefix("file://")).parent).read(job_id).entries]
        printed = [line for line in kept.read_text().splitlines() if not line.startswith("[hodei-worker]")]
        assert printed == stored, f"pod printed {printed}, the database log holds {stored}"
        return "; pod output = stored log"

    def batch(self, provider: str, count: int, title: str) -> None:
        def run() -> str:
            ids = [
                self.cli.cli(
                    "job",
                    "run",
                    "--name",
                    f"batch-test-{i}-{int(time.time())}",
                    "--provider",
                    provider,
                    "--command",
                    f"echo 'Batch test {i}'",
                    "--timeout",
                    "60",
                    check=True,
                ).stdout.strip()
                for i in range(1, count + 1)
            ]
            for job_id in ids:
                wait_settled(self.url, job_id, timeout=300)
            states = query(
                self.url, "SELECT state, count(*) FROM jobs WHERE id = ANY(%s::uuid[]) GROUP BY state", (ids,)
            )
            assert states == [("SUCCEEDED", count)], states
            return f"{count} x SUCCEEDED"

        self.check(Row(title, provider.capitalize(), "SUCCEEDED", f"{count} jobs"), run)

    def table(self) -> Table:
        table = Table(
            "Test", "Provider", "Expected Status", "Validation", "Result", "Detail", title="Expected Results Summary"
        )
        for row in self.rows:
            result = "[green]PASS[/green]" if row.passed else "[red]FAIL[/red]"
            table.add_row(row.test, row.provider, row.expected, row.validation, result, row.detail)
        return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubernetes", action="store_true", help="also run the Kubernetes rows")
    parser.add_argument("--local", action="store_true", help="also run the seed's jobs as local processes")
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL", "postgres://postgres:postgres@localhost:5432/hodei_jobs")
    procedure = Procedure(url, os.environ.get("HODEI_SERVER", "localhost:50051"))
    procedure.infrastructure()
    procedure.seed_jobs(
        "docker",
        {
            "echo": "Logs present, worker terminated",
            "multi-command": "Multiple log entries",
            "long-running": "Duration > 10s",
            "env vars": "Env variables processed",
            "arguments": "Arguments passed correctly",
        },
    )
    if args.local:
        procedure.seed_jobs("local", {})
    if args.kubernetes:
        procedure.seed_jobs(
            "kubernetes", {"echo": "Pod created, logs present", "multi-command": "Pod logs match database"}
        )
    procedure.batch("docker", 5, "Batch (8.1)")
    procedure.batch("docker", 20, "Concurrency")
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(procedure.table())
    failed = [row for row in procedure.rows if not row.passed]
    print(f"{len(procedure.rows) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
