"""Celery tells the truth: a job's task state matches its row, and cancel stops a running job.

Read with Celery's own event receiver from a real worker (started with ``-E``,
as Flower would switch events on): a failed run is ``task-failed`` with the
job's own exception, a refused message is ``task-rejected``, a success is
``task-succeeded``; and ``cancel_job`` on a running job terminates its run
while its row stays cancelled. PostgreSQL + Redis (events and revokes need a
broker with broadcast).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.acceptance.conftest import Processes, process_gone, wait_until
from tests.acceptance.test_forged_messages import publish
from worker_bridge import WorkerJobConfig, schedule_job
from worker_bridge.celery_app import create_celery_app
from worker_bridge.control import cancel_job
from worker_bridge.job import Job, JobState

Fetch = Callable[[int], Job]


@pytest.fixture
def backend() -> str:
    return "postgresql"


class Events:
    """Every task event of the test's broker, by task id, from Celery's EventReceiver."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._receiver: Any = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)

    def _listen(self) -> None:
        with self.app.connection_for_read() as connection:
            self._receiver = self.app.events.Receiver(connection, handlers={"*": self._on_event})
            self._ready.set()
            # Returns once stop() sets should_stop (checked about once a second).
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("type", "").startswith("task-"):
            self.by_task[event["uuid"]].append(event)

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10), "the event receiver did not start"

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(10)

    def types(self, task_id: str) -> list[str]:
        return [event["type"] for event in self.by_task.get(task_id, [])]

    def ended(self, task_id: str) -> dict[str, Any] | None:
        """The task's last end event (succeeded, failed or rejected), once there is one."""
        ends = [
            event for event in self.by_task.get(task_id, [])
            if event["type"] in ("task-succeeded", "task-failed", "task-rejected")
        ]  # fmt: skip
        return ends[-1] if ends else None


@pytest.fixture
def client(processes: Processes) -> Iterator[Celery]:
    app = create_celery_app("tests.acceptance.celeryconfig_test")
    app.conf.broker_url = processes.env["CELERY_BROKER_URL"]
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def events(client: Celery) -> Iterator[Events]:
    receiver = Events(client)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


def test_each_task_ends_as_its_row_did(
    processes: Processes, events: Events, fetch: Fetch, job_factory: Callable[..., Job]
) -> None:
    worker = processes.worker("w1", 2, "-E")
    processes.wait_ready(worker)
    processes.dispatcher()
    ok = schedule_job(WorkerJobConfig(type="echo", user_id=1, data={"x": 1}))
    bad = schedule_job(WorkerJobConfig(type="fail", user_id=2, data={"message": "nope"}))
    done = [wait_until(lambda job=job: fetch(job.id).finished and fetch(job.id), 30, "a job")
            for job in (ok, bad)]  # fmt: skip
    ok_row, bad_row = done
    assert ok_row.state is JobState.SUCCEEDED and bad_row.state is JobState.FAILED

    succeeded = wait_until(lambda: events.ended(ok_row.task_id or ""), 30, "echo's end event")
    assert succeeded["type"] == "task-succeeded"
    failed = wait_until(lambda: events.ended(bad_row.task_id or ""), 30, "fail's end event")
    assert failed["type"] == "task-failed"
    # The job's own exception, type and message, as run() raised it.
    assert failed["exception"] == "ValueError('nope')"
    assert "ValueError: nope" in failed["traceback"]
    # Recorded before the task failed, and not delivered again: one run, one row.
    assert "task-retried" not in events.types(bad_row.task_id or "")
    assert bad_row.result["exception"] == "ValueError" and bad_row.attempts == 1

    # A refused message: a copy naming a cancelled row, and a duplicate of a done one.
    cancelled = job_factory(
        type="echo", user_id=3, due=datetime.now(UTC) + timedelta(hours=1),
        dispatched_at=datetime.now(UTC), task_id=f"cancelled-{uuid.uuid4()}",
    )  # fmt: skip
    cancel_job(cancelled.id)
    broker = processes.env["CELERY_BROKER_URL"]
    publish(broker, task="jobs.echo", task_id=cancelled.task_id or "",
            kwargs={"job_id": cancelled.id, "user_id": 3})  # fmt: skip
    stranger = f"stranger-{uuid.uuid4()}"
    publish(broker, task="jobs.echo", task_id=stranger, kwargs={"job_id": ok.id, "user_id": 1})
    for task_id in (cancelled.task_id or "", stranger):
        refused = wait_until(lambda task_id=task_id: events.ended(task_id), 30, "a refusal")
        assert refused["type"] == "task-rejected", events.types(task_id)
        assert "task-succeeded" not in events.types(task_id)
    assert fetch(ok.id) == ok_row and fetch(cancelled.id).state is JobState.CANCELLED


def test_cancel_stops_a_running_job_and_its_row_stays_cancelled(
    processes: Processes, client: Celery, fetch: Fetch, tmp_path: Path
) -> None:
    worker = processes.worker("w1", 2)
    processes.wait_ready(worker)
    processes.dispatcher()
    job = schedule_job(WorkerJobConfig(type="record", user_id=1, data={"sleep": 30}))
    running = wait_until(
        lambda: (row := fetch(job.id)).state is JobState.RUNNING and row, 30, "the job to run"
    )
    pool_pid = int((running.worker or "").rsplit(":", 1)[1])

    done = cancel_job(job.id, bridge=None, celery=client)
    assert done.stopped and done.before.state is JobState.RUNNING
    assert done.after.state is JobState.CANCELLED

    wait_until(
        lambda: process_gone(pool_pid), 10, "the pool process running the job to be terminated"
    )
    # Its run ended there: it never recorded an end, and nothing overwrote the row.
    later = schedule_job(WorkerJobConfig(type="echo", user_id=2))
    wait_until(lambda: fetch(later.id).finished, 30, "the worker to run the next job")
    row = fetch(job.id)
    assert row.state is JobState.CANCELLED and row.result == done.after.result
    assert row.recoveries == 0, "the revoked attempt was taken for a lost one"
    record = tmp_path / "executions.jsonl"
    runs = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    assert [entry for entry in runs if entry["job_id"] == job.id] == []
