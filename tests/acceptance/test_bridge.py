"""End to end: real `celery` workers and dispatchers, PostgreSQL and Redis.

Every test runs on PostgreSQL + Redis and on the embedded default; those marked
``ALSO_ON_RABBITMQ`` (a one-off job, a retry lineage, a cron chain, a killed pool
process) run on PostgreSQL + RabbitMQ too, as does the message delivered twice.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from tests.acceptance.conftest import ALSO_ON_RABBITMQ, RABBITMQ, Processes, wait_until
from tests.acceptance.test_forged_messages import publish
from worker_bridge import WorkerJobConfig, schedule_cron_job, schedule_job
from worker_bridge.job import Job
from worker_bridge.models import JobState, WorkerJob
from worker_bridge.store import store_for

Fetch = Callable[[int], WorkerJob]


def _finished(fetch: Fetch, job_id: int) -> WorkerJob | None:
    job = fetch(job_id)
    return job if job.finished is not None else None


def _executions(tmp_path: Path) -> list[dict[str, float]]:
    path = tmp_path / "executions.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@ALSO_ON_RABBITMQ
def test_one_off_jobs_run_and_their_result_lands(processes: Processes, fetch: Fetch) -> None:
    processes.worker()
    processes.dispatcher()
    job = schedule_job(WorkerJobConfig(type="echo", user_id=42, data={"a": [1, "b"]}))
    async_job = schedule_job(WorkerJobConfig(type="async_echo", user_id=42, data={"n": 5}))

    done = wait_until(lambda: _finished(fetch, job.id), 30, "the echo job to finish")
    assert done.success is True
    assert done.started is not None and done.started <= done.finished
    # The data, the user id and the job's own row reach run() as params.job.
    assert done.result == {"data": {"a": [1, "b"]}, "user_id": 42, "job_id": job.id, "type": "echo"}
    assert done.attempts == 1 and done.worker and done.task_id and done.dispatched_at

    done_async = wait_until(lambda: _finished(fetch, async_job.id), 30, "the async job")
    assert done_async.success is True
    assert done_async.result == {"async": True, "data": {"n": 5}}


@ALSO_ON_RABBITMQ
def test_failure_with_auto_retry_gives_a_lineage(
    processes: Processes, fetch: Fetch, engine: Engine
) -> None:
    worker = processes.worker()
    processes.dispatcher()
    first = schedule_job(
        WorkerJobConfig(
            type="fail",
            user_id=1,
            data={"message": "nope"},
            auto_reschedule_on_failure=True,
            auto_reschedule_on_failure_delay=1500,
        )
    )

    def retry_of(job_id: int) -> WorkerJob | None:
        with engine.connect() as connection:
            row = connection.execute(
                select(WorkerJob.__table__).where(
                    WorkerJob.__table__.c.rescheduled_from_job == job_id
                )
            ).one_or_none()
        return None if row is None else Job.from_row(row)

    retry = wait_until(lambda: retry_of(first.id), 30, "the retry row")
    failed = fetch(first.id)
    assert failed.success is False
    assert failed.result["error"] == "nope"
    assert failed.result["exception"] == "ValueError"
    assert "Traceback" in failed.result["traceback"]
    assert retry.rescheduled_from_job == first.id
    assert failed.finished is not None
    expected_due = failed.finished + timedelta(milliseconds=1500)
    assert abs((retry.due - expected_due).total_seconds()) < 0.5
    assert retry.auto_reschedule_on_failure and retry.data == {"message": "nope"}
    # The retry runs (and fails, and is retried) in its turn.
    second_retry = wait_until(lambda: retry_of(retry.id), 30, "the retry's retry")
    assert fetch(retry.id).started >= retry.due
    assert second_retry.rescheduled_from_job == retry.id
    # One line at the start and one at the end, naming the retry's row.
    log = processes.log_of(worker)
    assert f"job {first.id} (fail, user 1) started" in log
    assert re.search(
        rf"job {first.id} \(fail, user 1\) failed: nope in [0-9.]+s; retry is job {retry.id} due ",
        log,
    )


def _chain(engine: Engine, job_type: str) -> list[WorkerJob]:
    table = WorkerJob.__table__
    with engine.connect() as connection:
        rows = connection.execute(
            select(table).where(table.c.type == job_type).order_by(table.c.id)
        )
        return [Job.from_row(row) for row in rows]


@ALSO_ON_RABBITMQ
def test_six_field_cron_job_chains_its_runs(processes: Processes, engine: Engine) -> None:
    worker = processes.worker()
    processes.dispatcher()
    first = schedule_cron_job(WorkerJobConfig(type="echo", user_id=9, data={"c": 1}), "* * * * * *")

    def finished_runs() -> list[WorkerJob] | None:
        done = [j for j in _chain(engine, "echo") if j.success]
        return done if len(done) >= 3 else None

    runs = wait_until(finished_runs, 30, "three runs of the cron job")
    chain = _chain(engine, "echo")
    assert chain[0].id == first.id
    for earlier, later in itertools.pairwise(chain):
        assert later.rescheduled_from_job == earlier.id
        assert later.cron_schedule == "* * * * * *"
        assert later.due > earlier.due
        assert later.due.microsecond == 0
    for run in runs:
        assert run.started is not None and run.started >= run.due
    assert re.search(
        rf"job {first.id} \(echo, user 9\) succeeded in [0-9.]+s; next run is job {chain[1].id} ",
        processes.log_of(worker),
    )


def test_failing_cron_job_keeps_its_schedule(processes: Processes, engine: Engine) -> None:
    processes.worker()
    processes.dispatcher()
    schedule_cron_job(WorkerJobConfig(type="fail", user_id=9), "* * * * * *")

    def failed_runs() -> list[WorkerJob] | None:
        done = [j for j in _chain(engine, "fail") if j.finished is not None]
        return done if len(done) >= 2 else None

    runs = wait_until(failed_runs, 30, "two failed runs of the cron job")
    assert all(run.success is False for run in runs)
    assert runs[1].rescheduled_from_job == runs[0].id
    assert runs[1].cron_schedule == "* * * * * *"


def test_a_future_job_does_not_run_before_it_is_due(processes: Processes, fetch: Fetch) -> None:
    processes.worker()
    processes.dispatcher()
    due = datetime.now(UTC) + timedelta(seconds=3)
    job = schedule_job(WorkerJobConfig(type="echo", user_id=1, due=due))
    done = wait_until(lambda: _finished(fetch, job.id), 30, "the future job")
    assert done.started is not None and done.started >= due
    assert done.dispatched_at is not None and done.dispatched_at >= due


def test_a_job_cancelled_after_dispatch_never_runs(
    processes: Processes, fetch: Fetch, engine: Engine, tmp_path: Path
) -> None:
    processes.dispatcher()
    job = schedule_job(WorkerJobConfig(type="record", user_id=1))
    wait_until(lambda: fetch(job.id).dispatched_at, 30, "the job to be dispatched")
    with engine.begin() as connection:
        assert store_for(connection).cancel_job(
            connection, job.id, now=datetime.now(UTC), reason="by the test"
        )
    worker = processes.worker()
    marker = schedule_job(WorkerJobConfig(type="echo", user_id=1))
    wait_until(lambda: _finished(fetch, marker.id), 30, "a later job to run")
    wait_until(
        lambda: f"job {job.id}: skipped" in processes.log_of(worker),
        10,
        "the worker to log that it skipped the cancelled job",
    )
    cancelled = fetch(job.id)
    assert cancelled.state is JobState.CANCELLED and cancelled.attempts == 0
    assert _executions(tmp_path) == []


@ALSO_ON_RABBITMQ
def test_a_job_whose_worker_process_is_killed_runs_again(
    processes: Processes, fetch: Fetch, tmp_path: Path
) -> None:
    processes.worker("w1", 1)
    processes.dispatcher()
    job = schedule_job(WorkerJobConfig(type="record", user_id=1, data={"sleep": 2}))
    running = wait_until(
        lambda: fetch(job.id).state is JobState.RUNNING and fetch(job.id), 30, "the job to start"
    )
    pool_pid = int(running.worker.rsplit(":", 1)[1])
    os.kill(pool_pid, signal.SIGKILL)

    done = wait_until(lambda: _finished(fetch, job.id), 60, "the job to run again and finish")
    assert done.success is True
    assert done.recoveries >= 1
    assert done.attempts == 2
    assert done.result["pid"] != pool_pid
    assert len(_executions(tmp_path)) == 1  # the killed run never reached its end


@pytest.mark.parametrize("backend", ["postgresql", RABBITMQ])
def test_a_message_delivered_twice_runs_its_job_once(
    processes: Processes, fetch: Fetch, job_factory: Callable[..., WorkerJob], tmp_path: Path
) -> None:
    """The broker delivers a dispatched row's message twice (a redelivery, a duplicate
    publish): the copy that arrives while the job runs is skipped with one line, and the
    job runs once. No dispatcher runs, so no other message names the row."""
    worker = processes.worker("w1", 2)
    processes.wait_ready(worker)  # RabbitMQ drops a message published before its queue exists
    token = f"real-{uuid.uuid4()}"
    row = job_factory(
        type="record",
        user_id=1,
        data={"sleep": 1.5},
        dispatched_at=datetime.now(UTC),
        task_id=token,
    )
    for _ in range(2):
        publish(
            processes.env["CELERY_BROKER_URL"],
            task="jobs.record",
            task_id=token,
            kwargs={"job_id": row.id, "user_id": 1},
        )
    done = wait_until(lambda: _finished(fetch, row.id), 30, "the job to finish")
    wait_until(
        lambda: f"job {row.id}: skipped: the row is already" in processes.log_of(worker),
        15,
        "the worker to skip the second copy",
    )
    assert done.state is JobState.SUCCEEDED and done.attempts == 1 and done.task_id == token
    assert [e["job_id"] for e in _executions(tmp_path)] == [row.id]
    assert worker.poll() is None


def test_a_killed_worker_main_process_is_replaced_and_the_job_reruns(
    processes: Processes, fetch: Fetch
) -> None:
    worker = processes.worker("w1", 1)
    processes.dispatcher()
    job = schedule_job(WorkerJobConfig(type="record", user_id=1, data={"sleep": 2}))
    wait_until(lambda: fetch(job.id).state is JobState.RUNNING, 30, "the job to start")
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)
    processes.worker("w2", 1)
    done = wait_until(lambda: _finished(fetch, job.id), 60, "the job to run again and finish")
    assert done.success is True and done.recoveries >= 1 and done.worker.startswith("w2@")


def test_unknown_type_and_unstorable_result_fail_with_a_clear_error(
    processes: Processes, fetch: Fetch, job_factory: Callable[..., WorkerJob]
) -> None:
    processes.worker()
    processes.dispatcher()
    ghost = job_factory(type="ghost_type", user_id=1)
    bad = schedule_job(WorkerJobConfig(type="not_json", user_id=1))
    after = schedule_job(WorkerJobConfig(type="echo", user_id=1))

    failed_ghost = wait_until(lambda: _finished(fetch, ghost.id), 30, "the ghost row")
    assert failed_ghost.success is False
    assert "no job module tests.testjobs.ghost_type" in failed_ghost.result["error"]
    assert failed_ghost.attempts == 0

    failed_bad = wait_until(lambda: _finished(fetch, bad.id), 30, "the not-JSON job")
    assert failed_bad.success is False
    assert "cannot be stored" in failed_bad.result["error"]
    assert "object" in failed_bad.result["error"]
    # The worker keeps serving.
    assert wait_until(lambda: _finished(fetch, after.id), 30, "a job after them").success
