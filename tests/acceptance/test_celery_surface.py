"""The Celery side as users meet it: time limits, JSON only, `worker -B`, inspect."""

from __future__ import annotations

from collections.abc import Callable

from kombu import Connection

from tests.acceptance.conftest import Processes, wait_until
from worker_bridge import WorkerJobConfig, schedule_job
from worker_bridge.models import JobState, WorkerJob

Fetch = Callable[[int], WorkerJob]
TIMEOUTS = {"CELERY_CONFIG_MODULE": "tests.acceptance.celeryconfig_timeouts"}


def _finished(fetch: Fetch, job_id: int) -> WorkerJob | None:
    job = fetch(job_id)
    return job if job.finished is not None else None


def test_a_job_past_the_soft_time_limit_is_recorded_as_timed_out(
    processes: Processes, fetch: Fetch
) -> None:
    processes.worker(env=TIMEOUTS)
    processes.dispatcher()
    job = schedule_job(
        WorkerJobConfig(
            type="sleep",
            user_id=1,
            data={"seconds": 10},
            auto_reschedule_on_failure=True,
            auto_reschedule_on_failure_delay=3_600_000,
        )
    )
    done = wait_until(lambda: _finished(fetch, job.id), 30, "the soft time limit")
    assert done.success is False
    assert done.result["exception"] == "SoftTimeLimitExceeded"
    assert "soft time limit (1 s)" in done.result["error"]
    assert (done.finished - done.started).total_seconds() < 5


def test_a_job_past_the_hard_time_limit_is_recorded_and_retried(
    processes: Processes, fetch: Fetch
) -> None:
    processes.worker(env=TIMEOUTS)
    processes.dispatcher()
    job = schedule_job(
        WorkerJobConfig(
            type="sleep",
            user_id=1,
            data={"seconds": 10, "ignore_soft_limit": True},
            auto_reschedule_on_failure=True,
            auto_reschedule_on_failure_delay=3_600_000,
        )
    )
    done = wait_until(lambda: _finished(fetch, job.id), 30, "the hard time limit")
    assert done.success is False
    assert done.result["exception"] == "TimeLimitExceeded"
    assert "hard time limit" in done.result["error"]
    assert done.recoveries == 0  # recorded at once, not found later by the heartbeat check
    retry = wait_until(lambda: _retry_of(fetch, job.id, done.id + 5), 10, "the retry row")
    assert retry.due > done.finished


def _retry_of(fetch: Fetch, parent: int, up_to: int) -> WorkerJob | None:
    for candidate in range(parent + 1, up_to):
        try:
            job = fetch(candidate)
        except AssertionError:
            continue
        if job.rescheduled_from_job == parent:
            return job
    return None


def test_a_pickled_message_is_refused(processes: Processes, fetch: Fetch) -> None:
    worker = processes.worker()
    processes.dispatcher()
    bait = schedule_job(WorkerJobConfig(type="record", user_id=1))
    wait_until(lambda: _finished(fetch, bait.id), 30, "a first job")
    with Connection(processes.env["CELERY_BROKER_URL"]) as connection:
        producer = connection.Producer(serializer="pickle")
        producer.publish(
            [[], {"job_id": bait.id, "user_id": 1}, {}],
            routing_key="celery",
            headers={"task": "jobs.record", "id": "forged-pickle", "lang": "py"},
        )
    wait_until(
        lambda: (
            "forged-pickle" in processes.log_of(worker)
            or "application/x-python-serialize" in processes.log_of(worker)
        ),
        20,
        "the worker to refuse the pickled message",
    )
    after = schedule_job(WorkerJobConfig(type="echo", user_id=2))
    assert wait_until(lambda: _finished(fetch, after.id), 30, "a job after it").success
    assert fetch(bait.id).attempts == 1


def test_worker_with_embedded_dispatcher_runs_jobs(processes: Processes, fetch: Fetch) -> None:
    processes.worker("wb", 2, "-B")
    job = schedule_job(WorkerJobConfig(type="echo", user_id=5, data={"via": "-B"}))
    done = wait_until(lambda: _finished(fetch, job.id), 30, "the job under worker -B")
    assert done.state is JobState.SUCCEEDED and done.result["data"] == {"via": "-B"}
