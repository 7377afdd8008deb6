"""One process of the saga engine, for crash tests: runs a job to the end, and kills
itself with SIGKILL right after the commit that completes step CRASH_AFTER (once).

    python -m tests.saga_process DATABASE_URL WORKDIR JOB_ID [CRASH_AFTER]
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from uuid import UUID

from hodei.domain.job import Job
from hodei.domain.saga import Saga, StepState
from hodei.store.db import open_pool
from hodei.testing import query
from tests.sagas_support import Effects, FakeProvider, Harness


def main() -> None:
    url, workdir, job_id = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    crash_after = sys.argv[4] if len(sys.argv) > 4 else None
    marker = workdir / "crashed"

    def after_commit(saga: Saga) -> None:
        if crash_after is None or marker.exists():
            return
        if any(step.name == crash_after and step.state is StepState.COMPLETED for step in saga.steps):
            marker.write_text(crash_after)
            os.kill(os.getpid(), signal.SIGKILL)

    pool = open_pool(url, max_size=10)
    harness = Harness(
        pool, FakeProvider(Effects(workdir / "effects.log")), workdir, lease=1.0, after_commit=after_commit
    )
    if harness.store.find(Job, job_id) is None:
        harness.submit(UUID(job_id))

    def done() -> bool:
        states = query(url, "SELECT state FROM sagas WHERE correlation_id = %s", (job_id,))
        return len(states) == 2 and all(state == "COMPLETED" for (state,) in states)

    harness.run(done, timeout=60)
    harness.close()
    pool.close()


if __name__ == "__main__":
    main()
