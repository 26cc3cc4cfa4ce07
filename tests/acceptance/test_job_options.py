"""End to end: a job type declared on its own queue, with its own limits, runs there under them."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.acceptance.conftest import Processes, wait_until
from worker_bridge import WorkerJobConfig, schedule_job
from worker_bridge.job import Job, JobState

Fetch = Callable[[int], Job]


@pytest.fixture
def backend() -> str:
    return "postgresql"


def test_a_type_on_its_own_queue_runs_there_under_its_own_limits(
    processes: Processes, fetch: Fetch
) -> None:
    default = processes.worker("wd", 1)
    reports = processes.worker("wr", 1, "-Q", "reports")
    processes.wait_ready(default)
    processes.wait_ready(reports)
    processes.dispatcher()
    quick = schedule_job(WorkerJobConfig(type="routed", user_id=1))
    # Past the type's 1.5 s soft limit, far within the workers' own (3240 s).
    slow = schedule_job(WorkerJobConfig(type="routed", user_id=2, data={"sleep": 3}))
    plain = schedule_job(WorkerJobConfig(type="echo", user_id=3))

    def ended(job: Job) -> Job | None:
        row = fetch(job.id)
        return row if row.finished is not None else None

    rows = [wait_until(lambda j=job: ended(j), 30, f"job {job.id} to end")
            for job in (quick, slow, plain)]  # fmt: skip
    quick_row, slow_row, plain_row = rows
    assert quick_row.state is JobState.SUCCEEDED and (quick_row.worker or "").startswith("wr@")
    assert slow_row.state is JobState.FAILED and (slow_row.worker or "").startswith("wr@")
    assert slow_row.result["exception"] == "SoftTimeLimitExceeded"
    assert "soft time limit (1.5 s)" in slow_row.result["error"]
    assert plain_row.state is JobState.SUCCEEDED and (plain_row.worker or "").startswith("wd@")
