"""End to end: a batched job type through real `celery` workers and a dispatcher.

The rows of a type whose module declares ``BATCH_SIZE`` travel in shared
messages; every row still ends exactly once with its own result, retry and
lineage. Runs on PostgreSQL + Redis, the embedded default and RabbitMQ.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tests.acceptance.conftest import ALSO_ON_RABBITMQ, Processes, wait_until
from tests.testjobs.batched import BATCH_SIZE
from worker_bridge import WorkerJobConfig, schedule_job, schedule_jobs
from worker_bridge.job import Job
from worker_bridge.models import JobState

Fetch = Callable[[int], Job]


@ALSO_ON_RABBITMQ
def test_a_batched_backlog_runs_each_row_once_in_shared_messages(
    processes: Processes, fetch: Fetch, all_jobs: Callable[[], list[Job]], tmp_path: Path
) -> None:
    processes.worker()
    processes.dispatcher()
    rows = schedule_jobs(
        [WorkerJobConfig(type="batched", user_id=user, data={"n": user}) for user in range(1, 121)]
        + [
            WorkerJobConfig(
                type="batched",
                user_id=500,
                data={"fail": True},
                auto_reschedule_on_failure=True,
                auto_reschedule_on_failure_delay=60_000,
            )
        ]
    )

    def all_finished() -> list[Job] | None:
        done = [fetch(row.id) for row in rows]
        return done if all(job.finished is not None for job in done) else None

    done = wait_until(all_finished, 90, "the batched backlog to drain", interval=0.2)
    assert [job.state for job in done[:-1]] == [JobState.SUCCEEDED] * 120
    assert all(job.result["job_id"] == job.id for job in done[:-1])
    messages = Counter(job.task_id for job in done)
    assert len(messages) < len(done) / 2, f"rows did not share messages: {messages}"
    assert max(messages.values()) <= BATCH_SIZE

    failed = done[-1]
    assert failed.state is JobState.FAILED and failed.result["error"] == "failing on purpose"
    retries = [job for job in all_jobs() if job.rescheduled_from_job == failed.id]
    assert [(job.state, job.data) for job in retries] == [(JobState.PENDING, {"fail": True})]

    executions = Counter(
        json.loads(line)["job_id"]
        for line in (tmp_path / "executions.jsonl").read_text().splitlines()
    )
    assert all(executions[row.id] == 1 for row in rows), "a row ran more than once"


def test_a_lone_due_row_of_a_batched_type_goes_alone(processes: Processes, fetch: Fetch) -> None:
    processes.worker()
    processes.dispatcher()
    first = schedule_job(WorkerJobConfig(type="batched", user_id=1))
    done = wait_until(lambda: fetch(first.id).finished, 30, "the lone row to run")
    assert done
    second = schedule_job(WorkerJobConfig(type="batched", user_id=2))
    wait_until(lambda: fetch(second.id).finished, 30, "the second lone row to run")
    assert fetch(first.id).task_id != fetch(second.id).task_id
    assert fetch(first.id).state is JobState.SUCCEEDED is fetch(second.id).state
