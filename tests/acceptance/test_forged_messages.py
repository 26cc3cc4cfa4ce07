"""Forged Celery messages against a real worker: refused with a log line, no row changed.

Messages are published with kombu straight into the worker's queue, bypassing the
dispatcher: an unknown task name, rows that do not exist, wrong argument shapes, a
valid-looking message for an existing row under the wrong task id (the attempt token),
and messages Celery itself cannot read. No dispatcher runs while they are handled, so
the table must be exactly as before. Afterwards the genuine message of a dispatched row
still runs it, and a job scheduled the normal way still runs.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from kombu import Connection

from tests.acceptance.conftest import Processes, wait_until
from worker_bridge import WorkerJobConfig, schedule_job
from worker_bridge.models import JobState, WorkerJob

Fetch = Callable[[int], WorkerJob]
AllJobs = Callable[[], list[WorkerJob]]
QUEUE = "celery"
MISSING_ROW = 987_654_321
#: The same on the embedded back end (checked by hand); PostgreSQL alone keeps the run short.
POSTGRESQL_ONLY = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


def publish(
    broker_url: str,
    *,
    task: str | None,
    task_id: str,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    body: Any = None,
    content_type: str | None = None,
) -> None:
    """Publish one protocol-2 task message, as Celery would, unless ``body`` overrides it."""
    headers: dict[str, Any] = {
        "lang": "py",
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "timelimit": [None, None],
        "argsrepr": repr(args),
        "kwargsrepr": repr(kwargs),
        "origin": "forger@test",
    }
    if task is not None:
        headers["task"] = task
    if body is None:
        body = [args or [], kwargs or {}, {"callbacks": None, "errbacks": None, "chain": None}]
    options: dict[str, Any] = {}
    if content_type is not None:  # a raw body, sent as is
        options = {"content_type": content_type, "content_encoding": "utf-8"}
    with Connection(broker_url) as connection:
        producer = connection.Producer(serializer="json")
        producer.publish(
            body,
            routing_key=QUEUE,
            headers=headers,
            correlation_id=task_id,
            retry=True,
            **options,
        )


@dataclass
class Forgery:
    """One forged message and the log line that must show the worker refused it."""

    name: str
    expected_log: Callable[[str], str]
    message: dict[str, Any] = field(default_factory=dict)
    task_id: str = ""


def _refused_arguments(task_id: str) -> str:
    return f"task jobs.echo[{task_id}]: refused: expected keyword arguments job_id (int)"


def forgeries(rows: dict[str, WorkerJob]) -> list[Forgery]:
    """The forged messages, given the bait rows they name."""
    dispatched, pending, done, running = (
        rows["dispatched"],
        rows["pending"],
        rows["succeeded"],
        rows["running"],
    )
    echo = "jobs.echo"
    return [
        Forgery(
            "unknown task name",
            lambda _: "Received unregistered task of type 'jobs.nope'",
            {"task": "jobs.nope", "kwargs": {"job_id": dispatched.id, "user_id": 1}},
        ),
        Forgery(
            "row that does not exist",
            lambda _: f"job {MISSING_ROW}: skipped: the row does not exist",
            {"task": echo, "kwargs": {"job_id": MISSING_ROW, "user_id": 1}},
        ),
        Forgery(
            "job_id a string",
            _refused_arguments,
            {"task": echo, "kwargs": {"job_id": str(dispatched.id), "user_id": 1}},
        ),
        Forgery(
            "job_id a list",
            _refused_arguments,
            {"task": echo, "kwargs": {"job_id": [dispatched.id], "user_id": 1}},
        ),
        Forgery(
            "job_id a float",
            _refused_arguments,
            {"task": echo, "kwargs": {"job_id": float(dispatched.id), "user_id": 1}},
        ),
        Forgery("job_id a bool", _refused_arguments, {"task": echo, "kwargs": {"job_id": True}}),
        Forgery("job_id missing", _refused_arguments, {"task": echo, "kwargs": {"user_id": 1}}),
        Forgery(
            "extra kwargs",
            _refused_arguments,
            {"task": echo, "kwargs": {"job_id": dispatched.id, "user_id": 1, "sql": "1=1"}},
        ),
        Forgery(
            "positional args naming a dispatched row",
            lambda _: f"job {dispatched.id}: skipped: the message is outdated",
            {"task": echo, "args": [dispatched.id, 1]},
        ),
        Forgery(
            "wrong task id for a dispatched row",
            lambda _: f"job {dispatched.id}: skipped: the message is outdated",
            {"task": echo, "kwargs": {"job_id": dispatched.id, "user_id": 1}},
        ),
        Forgery(
            "a pending row never dispatched",
            lambda _: f"job {pending.id}: skipped: the message is outdated",
            {"task": echo, "kwargs": {"job_id": pending.id, "user_id": 1}},
        ),
        Forgery(
            "a finished row",
            lambda _: f"job {done.id}: skipped: the row is already succeeded",
            {"task": echo, "kwargs": {"job_id": done.id, "user_id": 1}},
        ),
        Forgery(
            "a duplicate of a running row's message",
            lambda _: f"job {running.id}: skipped: the row is already running",
            {"task": echo, "kwargs": {"job_id": running.id, "user_id": 1}},
            task_id=str(running.task_id),
        ),
        Forgery(
            "another type's task naming the row",
            lambda _: f"job {dispatched.id}: skipped: the message is outdated",
            {"task": "jobs.fail", "kwargs": {"job_id": dispatched.id, "user_id": 1}},
        ),
        Forgery(
            "body not JSON",
            lambda task_id: f"task jobs.echo[{task_id}]: refused: malformed message body",
            {"task": echo, "body": b"{not json", "content_type": "application/json"},
        ),
        Forgery(
            "no task header",
            lambda _: "Received and deleted unknown message",
            {"task": None, "kwargs": {"job_id": dispatched.id}},
        ),
    ]


def bait_rows(job_factory: Callable[..., WorkerJob]) -> dict[str, WorkerJob]:
    """One row per state a forged message may name; none of them may change."""
    now = datetime.now(UTC)
    return {
        "dispatched": job_factory(
            type="echo", user_id=1, dispatched_at=now, task_id=f"real-{uuid.uuid4()}"
        ),
        "pending": job_factory(type="echo", user_id=2),
        "succeeded": job_factory(
            type="echo",
            user_id=3,
            started=now,
            finished=now,
            success=True,
            result={"ok": True},
            task_id="done-token",
            attempts=1,
        ),
        "running": job_factory(
            type="echo",
            user_id=4,
            dispatched_at=now,
            started=now,
            heartbeat=now,
            task_id=f"running-{uuid.uuid4()}",
            attempts=1,
            worker="elsewhere@host:1",
        ),
    }


def _columns(jobs: list[WorkerJob]) -> list[dict[str, Any]]:
    keys = [column.key for column in WorkerJob.__table__.columns]
    return [{key: getattr(job, key) for key in keys} for job in jobs]


def test_forged_messages_are_refused_and_change_nothing(
    processes: Processes,
    fetch: Fetch,
    all_jobs: AllJobs,
    job_factory: Callable[..., WorkerJob],
) -> None:
    """Every forged message gets its own clear log line from the worker, the worker main
    process survives them all, and no row changes (no dispatcher runs meanwhile). Then the
    genuine message of the dispatched bait row runs it, and a normally scheduled job runs."""
    broker = processes.env["CELERY_BROKER_URL"]
    worker = processes.worker("wf", 2)
    rows = bait_rows(job_factory)
    before = _columns(all_jobs())
    cases = forgeries(rows)
    for case in cases:
        case.task_id = case.task_id or f"forged-{uuid.uuid4()}"
        publish(broker, task_id=case.task_id, **case.message)

    def missing() -> list[str]:
        log = processes.log_of(worker)
        return [c.name for c in cases if c.expected_log(c.task_id) not in log]

    wait_until(lambda: not missing(), 45, "a log line for every forged message")
    assert worker.poll() is None, "the worker main process died"
    log = processes.log_of(worker)
    # Refusals are log lines, not task errors (Celery's own reports of an unregistered task
    # and of an undecodable body do quote a traceback; they come from the consumer).
    assert "raised unexpected" not in log and "Unrecoverable error" not in log, log[-4000:]
    assert _columns(all_jobs()) == before

    # The row's own message (its real attempt token) still runs it.
    dispatched = rows["dispatched"]
    publish(
        broker,
        task="jobs.echo",
        task_id=str(dispatched.task_id),
        kwargs={"job_id": dispatched.id, "user_id": 1},
    )
    ran = wait_until(
        lambda: (job := fetch(dispatched.id)).finished is not None and job, 30, "the real message"
    )
    assert ran.state is JobState.SUCCEEDED and ran.attempts == 1
    assert ran.result["job_id"] == dispatched.id
    for name in ("pending", "succeeded", "running"):
        assert _columns([fetch(rows[name].id)]) == [
            row for row in before if row["id"] == rows[name].id
        ]

    processes.dispatcher()
    after = schedule_job(WorkerJobConfig(type="echo", user_id=9, data={"after": "forgeries"}))
    done = wait_until(
        lambda: (job := fetch(after.id)).finished is not None and job, 30, "a normal job"
    )
    assert done.success is True and done.result["data"] == {"after": "forgeries"}
    assert worker.poll() is None


def _run_genuine(processes: Processes, fetch: Fetch, job_factory: Callable[..., WorkerJob]) -> None:
    """A dispatched row and its real message: the worker must still run it."""
    token = f"real-{uuid.uuid4()}"
    row = job_factory(type="echo", user_id=77, dispatched_at=datetime.now(UTC), task_id=token)
    publish(
        processes.env["CELERY_BROKER_URL"],
        task="jobs.echo",
        task_id=token,
        kwargs={"job_id": row.id, "user_id": 77},
    )
    ran = wait_until(
        lambda: (job := fetch(row.id)).finished is not None and job, 30, "the genuine message"
    )
    assert ran.state is JobState.SUCCEEDED


@POSTGRESQL_ONLY
def test_a_job_id_beyond_bigint_is_refused_with_one_line(
    processes: Processes,
    fetch: Fetch,
    all_jobs: AllJobs,
    job_factory: Callable[..., WorkerJob],
) -> None:
    """job_id = 2**80 is an int, but no row id can be that large: the worker must refuse it
    with its one-line refusal, as for any other bad job_id, not fail the task with the
    database's 'bigint out of range' and a traceback quoting the SQL."""
    worker = processes.worker("wb", 1)
    bait = job_factory(type="echo", user_id=1)
    before = _columns(all_jobs())
    task_id = f"forged-{uuid.uuid4()}"
    huge = 2**80
    publish(
        processes.env["CELERY_BROKER_URL"],
        task="jobs.echo",
        task_id=task_id,
        kwargs={"job_id": huge, "user_id": 1},
    )
    wait_until(
        lambda: (
            f"Task jobs.echo[{task_id}] " in processes.log_of(worker)
            and any(
                end in processes.log_of(worker) for end in (" succeeded in ", "raised", " ignored")
            )
        ),
        30,
        "the worker to handle the message",
    )
    log = processes.log_of(worker)
    refused = f"task jobs.echo[{task_id}]: refused" in log or f"job {huge}: skipped" in log
    assert refused, log[-3000:]
    assert "bigint out of range" not in log and "Traceback" not in log, log[-3000:]
    assert _columns(all_jobs()) == before and bait.id == before[0]["id"]
    _run_genuine(processes, fetch, job_factory)


@POSTGRESQL_ONLY
def test_a_body_that_is_not_a_protocol_2_list_does_not_kill_the_worker(
    processes: Processes,
    fetch: Fetch,
    all_jobs: AllJobs,
    job_factory: Callable[..., WorkerJob],
) -> None:
    """A JSON message for jobs.echo whose body is an object, not [args, kwargs, embed]: the
    worker must log it and drop it, and keep serving. (Celery's Request unpacks the body
    without checking it: the worker main process dies with 'Unrecoverable error', and the
    message, restored to the queue, kills the next worker that takes it too.)"""
    worker = processes.worker("wm", 1)
    bait = job_factory(type="echo", user_id=1)
    before = _columns(all_jobs())
    task_id = f"forged-{uuid.uuid4()}"
    publish(
        processes.env["CELERY_BROKER_URL"],
        task="jobs.echo",
        task_id=task_id,
        body={"job_id": bait.id, "user_id": 1},
    )
    wait_until(
        lambda: task_id in processes.log_of(worker) or worker.poll() is not None,
        30,
        "a log line naming the message",
    )
    assert "Unrecoverable error" not in processes.log_of(worker), processes.log_of(worker)[-3000:]
    assert worker.poll() is None, "the worker main process died"
    _run_genuine(processes, fetch, job_factory)
    assert worker.poll() is None
    assert [row for row in _columns(all_jobs()) if row["id"] == bait.id] == before
