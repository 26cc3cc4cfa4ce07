"""The Celery side as users meet it: time limits, JSON only, `worker -B`, inspect.

The refusal of a pickled message runs on PostgreSQL + RabbitMQ too.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from kombu import Connection

from tests.acceptance.conftest import ALSO_ON_RABBITMQ, Processes, wait_until
from tests.acceptance.test_forged_messages import publish
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


@ALSO_ON_RABBITMQ
def test_a_pickled_message_is_refused(
    processes: Processes,
    fetch: Fetch,
    job_factory: Callable[..., WorkerJob],
    tmp_path: Path,
) -> None:
    """A pickled message naming a dispatched row under its real token (so that, accepted,
    it would run the job) is dropped with a log line naming its content type and
    accept_content, and nothing runs: no task is received, the row is untouched. The
    worker then runs the next genuine message."""
    worker = processes.worker()
    dispatcher = processes.dispatcher()
    bait = schedule_job(WorkerJobConfig(type="record", user_id=1))
    wait_until(lambda: _finished(fetch, bait.id), 30, "a first job")
    # From here on only the test's messages reach the worker (no recovery re-sends the row).
    processes.stop(dispatcher)
    now = datetime.now(UTC)
    token, genuine_token = f"forged-pickle-{uuid.uuid4()}", f"real-{uuid.uuid4()}"
    target = job_factory(type="record", user_id=3, dispatched_at=now, task_id=token)
    genuine = job_factory(type="echo", user_id=4, dispatched_at=now, task_id=genuine_token)
    broker = processes.env["CELERY_BROKER_URL"]
    with Connection(broker) as connection:
        producer = connection.Producer(serializer="pickle")
        producer.publish(
            [[], {"job_id": target.id, "user_id": 3}, {}],
            routing_key="celery",
            headers={"task": "jobs.record", "id": token, "lang": "py"},
        )
    publish(
        broker, task="jobs.echo", task_id=genuine_token, kwargs={"job_id": genuine.id, "user_id": 4}
    )
    refusal = re.compile(
        rf"task jobs\.record\[{re.escape(token)}\]: refused: content type "
        r"'application/x-python-serialize' is not in accept_content \['json'\]; "
        "dropped without running anything"
    )
    wait_until(
        lambda: refusal.search(processes.log_of(worker)),
        20,
        "the worker to refuse the pickled message, naming its content type",
    )
    assert wait_until(lambda: _finished(fetch, genuine.id), 30, "the genuine message").success
    log = processes.log_of(worker)
    assert f"Task jobs.record[{token}] received" not in log
    assert f"job {target.id}:" not in log  # no attempt was made
    untouched = fetch(target.id)
    assert untouched.state is JobState.DISPATCHED and untouched.task_id == token
    assert untouched.started is None and untouched.attempts == 0
    executions = (tmp_path / "executions.jsonl").read_text().splitlines()
    assert [json.loads(line)["job_id"] for line in executions] == [bait.id]
    assert worker.poll() is None


def test_worker_with_embedded_dispatcher_runs_jobs(processes: Processes, fetch: Fetch) -> None:
    processes.worker("wb", 2, "-B")
    job = schedule_job(WorkerJobConfig(type="echo", user_id=5, data={"via": "-B"}))
    done = wait_until(lambda: _finished(fetch, job.id), 30, "the job under worker -B")
    assert done.state is JobState.SUCCEEDED and done.result["data"] == {"via": "-B"}
