"""The dispatcher's pass against real PostgreSQL and Redis (no worker running)."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import Engine

from tests.conftest import REDIS_HOST
from worker_bridge import WorkerJobConfig, schedule_job
from worker_bridge.attempt import Attempt
from worker_bridge.bridge import BridgeApp
from worker_bridge.celery_app import create_celery_app
from worker_bridge.dispatcher import Dispatcher
from worker_bridge.job import Job, NewJob
from worker_bridge.maintenance import REMOVAL_JOB
from worker_bridge.models import JobState, WorkerJob
from worker_bridge.store import store_for
from worker_bridge.wakeup import ListenWaiter
from worker_bridge.worker_process import WorkerProcess

Fetch = Callable[[int], WorkerJob]


@pytest.fixture
def celery_app(redis_db: int) -> Iterator[Celery]:
    app = create_celery_app()
    app.conf.broker_url = f"redis://{REDIS_HOST}:6379/{redis_db}"
    client = redis.Redis(host=REDIS_HOST, db=redis_db)
    client.delete("celery")
    yield app
    client.delete("celery")
    client.close()


@pytest.fixture
def queue(redis_db: int) -> Callable[[], list[dict[str, Any]]]:
    """The messages waiting in the default queue, decoded."""
    client = redis.Redis(host=REDIS_HOST, db=redis_db)

    def read() -> list[dict[str, Any]]:
        messages = []
        for raw in reversed(client.lrange("celery", 0, -1)):
            envelope = json.loads(raw)
            body = json.loads(base64.b64decode(envelope["body"]))
            messages.append(
                {
                    "headers": envelope["headers"],
                    "args": body[0],
                    "kwargs": body[1],
                    "content_type": envelope["content-type"],
                }
            )
        return messages

    return read


def _claim(bridge: BridgeApp, job_id: int, token: str, worker: str) -> Job | None:
    """A worker's claim of the row, as a real attempt makes it (no celery process)."""
    process = WorkerProcess(bridge, one_task_at_a_time=False)
    return Attempt(process, job_id=job_id, token=token, job_type="echo", worker=worker).claim()


def _with_settings(bridge: BridgeApp, **changes: Any) -> BridgeApp:
    return BridgeApp(
        settings=replace(bridge.settings, **changes),
        engine=bridge.engine,
        session_factory=bridge.session_factory,
    )


def test_a_pass_sends_due_rows_and_only_those(
    bridge: BridgeApp,
    celery_app: Celery,
    queue: Callable[[], list[dict[str, Any]]],
    fetch: Fetch,
) -> None:
    due = [schedule_job(WorkerJobConfig(type="echo", user_id=i)) for i in range(3)]
    later = schedule_job(
        WorkerJobConfig(type="echo", user_id=9, due=datetime.now(UTC) + timedelta(hours=1))
    )
    dispatcher = Dispatcher(bridge, celery_app)
    report = dispatcher.run_once(datetime.now(UTC))

    assert sorted(j.id for j in report.sent) == [j.id for j in due]
    assert report.next_due == later.due
    messages = queue()
    assert len(messages) == 3
    for job, message in zip(due, messages, strict=True):
        row = fetch(job.id)
        assert row.state is JobState.DISPATCHED and row.dispatched_at is not None
        assert message["headers"]["task"] == "jobs.echo"
        assert message["headers"]["id"] == row.task_id
        assert message["kwargs"] == {"job_id": job.id, "user_id": job.user_id}
        assert message["content_type"] == "application/json"
    assert fetch(later.id).state is JobState.PENDING
    # A second pass sends nothing again.
    assert dispatcher.run_once(datetime.now(UTC)).sent == []
    assert len(queue()) == 3


def test_each_sent_job_gets_one_task_sent_event_published_once_per_batch(
    bridge: BridgeApp, celery_app: Celery
) -> None:
    """Flower learns of every dispatched job from its task-sent event; the
    dispatcher publishes a batch's events as one ``task.multi`` message."""
    events: list[dict[str, Any]] = []
    messages: list[int] = []
    with celery_app.connection_for_read() as connection:
        receiver = celery_app.events.Receiver(connection, handlers={"*": events.append})
        receive = receiver._receive

        def count_messages(body: Any, message: Any) -> None:
            messages.append(len(body) if isinstance(body, list) else 1)
            receive(body, message)

        receiver._receive = count_messages  # type: ignore[method-assign]
        thread = threading.Thread(
            target=receiver.capture, kwargs={"wakeup": False}, daemon=True
        )
        thread.start()
        try:
            # Pub/sub keeps nothing for late subscribers: wait until ours hears.
            with celery_app.connection_for_write() as probe_connection:
                probe = celery_app.events.Dispatcher(probe_connection)
                deadline = time.monotonic() + 10
                while not any(e["type"] == "worker-probe" for e in events):
                    assert time.monotonic() < deadline, "the event receiver never subscribed"
                    probe.send("worker-probe")
                    time.sleep(0.05)
                probe.close()
            events.clear()
            messages.clear()

            jobs = [schedule_job(WorkerJobConfig(type="echo", user_id=i)) for i in range(5)]
            report = Dispatcher(bridge, celery_app).run_once(datetime.now(UTC))
            deadline = time.monotonic() + 10
            while len(events) < 5:
                assert time.monotonic() < deadline, f"task-sent events missing: {events}"
                time.sleep(0.02)
        finally:
            receiver.should_stop = True
            thread.join(5)
    assert sorted(j.id for j in report.sent) == sorted(j.id for j in jobs)
    assert [e["type"] for e in events] == ["task-sent"] * 5
    assert sorted(e["uuid"] for e in events) == sorted(j.task_id or "" for j in report.sent)
    assert {(e["name"], e["queue"]) for e in events} == {("jobs.echo", "celery")}
    assert messages == [5], "the batch's events should travel as one message"


def test_a_row_without_a_module_fails_instead_of_being_sent(
    bridge: BridgeApp,
    celery_app: Celery,
    queue: Callable[[], list[dict[str, Any]]],
    fetch: Fetch,
    job_factory: Callable[..., WorkerJob],
) -> None:
    ghost = job_factory(type="ghost", user_id=1)
    report = Dispatcher(bridge, celery_app).run_once(datetime.now(UTC))
    assert [j.id for j in report.failed] == [ghost.id]
    row = fetch(ghost.id)
    assert row.state is JobState.FAILED
    assert "no job module tests.testjobs.ghost" in row.result["error"]
    assert queue() == []


def test_concurrent_dispatchers_send_each_row_once(
    bridge: BridgeApp,
    celery_app: Celery,
    queue: Callable[[], list[dict[str, Any]]],
) -> None:
    small_batches = _with_settings(bridge, dispatch_batch_size=25)
    due = datetime.now(UTC) + timedelta(seconds=1)
    with bridge.engine.begin() as connection:
        for i in range(600):
            store_for(connection).supersede_and_insert(
                connection,
                store_job("echo", i, due),
                now=datetime.now(UTC),
                stale_before=datetime.now(UTC) - timedelta(hours=1),
            )
    dispatchers = [Dispatcher(small_batches, celery_app) for _ in range(4)]
    barrier = threading.Barrier(len(dispatchers))
    sent: list[list[int]] = [[] for _ in dispatchers]

    def run(index: int) -> None:
        barrier.wait()
        # The pass's clock is pinned at the due time: no waiting for the wall clock.
        sent[index] = [j.id for j in dispatchers[index].run_once(due).sent]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(dispatchers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    all_sent = [job_id for ids in sent for job_id in ids]
    assert len(all_sent) == 600 and len(set(all_sent)) == 600
    assert sum(1 for ids in sent if ids) >= 2, "the dispatchers should have shared the work"
    ids_in_queue = [m["kwargs"]["job_id"] for m in queue()]
    assert sorted(ids_in_queue) == sorted(all_sent)


def store_job(job_type: str, user_id: int, due: datetime) -> Any:
    return NewJob(type=job_type, user_id=user_id, data={}, due=due)


def test_a_crash_before_commit_leaves_rows_pending_and_the_messages_refused(
    bridge: BridgeApp, fetch: Fetch, engine: Engine
) -> None:
    job = schedule_job(WorkerJobConfig(type="echo", user_id=1))
    with engine.connect() as connection:
        claimed = store_for(connection).claim_due_jobs(connection, now=datetime.now(UTC), limit=10)
        published_token = claimed[0].task_id
        connection.rollback()  # the dispatcher died after publishing
    assert fetch(job.id).state is JobState.PENDING
    assert published_token is not None
    assert _claim(bridge, job.id, published_token, "w:1") is None
    row = fetch(job.id)
    assert row.state is JobState.PENDING and row.attempts == 0


def test_a_claim_that_outruns_the_dispatch_commit_waits_for_it(
    bridge: BridgeApp, fetch: Fetch, engine: Engine
) -> None:
    job = schedule_job(WorkerJobConfig(type="echo", user_id=1))
    claimed_token: list[str] = []
    published = threading.Event()

    def dispatcher() -> None:
        with engine.begin() as connection:
            rows = store_for(connection).claim_due_jobs(connection, now=datetime.now(UTC), limit=10)
            assert rows[0].task_id is not None
            claimed_token.append(rows[0].task_id)
            published.set()
            time.sleep(0.5)  # publishing the rest of a batch

    thread = threading.Thread(target=dispatcher)
    thread.start()
    assert published.wait(10)
    claimed = _claim(bridge, job.id, claimed_token[0], "w:1")
    thread.join(10)
    assert claimed is not None and claimed.id == job.id
    assert fetch(job.id).state is JobState.RUNNING


def _dispatch_and_claim(bridge: BridgeApp, engine: Engine, job: WorkerJob) -> str:
    with engine.begin() as connection:
        [row] = store_for(connection).claim_due_jobs(connection, now=datetime.now(UTC), limit=10)
    assert row.task_id is not None
    assert _claim(bridge, job.id, row.task_id, "w:1") is not None
    return row.task_id


def test_recovery_of_a_dead_worker_refuses_the_old_attempt(
    bridge: BridgeApp, celery_app: Celery, fetch: Fetch, engine: Engine
) -> None:
    job = schedule_job(WorkerJobConfig(type="echo", user_id=1))
    old_token = _dispatch_and_claim(bridge, engine, job)
    later = datetime.now(UTC) + bridge.settings.heartbeat_timeout + timedelta(seconds=1)

    recovered = Dispatcher(bridge, celery_app).recovery.run_once(later)

    assert [(r.job_id, r.reason) for r in recovered] == [
        (job.id, "heartbeat older than heartbeat_timeout")
    ]
    row = fetch(job.id)
    assert row.state is JobState.PENDING and row.recoveries == 1 and row.task_id is None
    new_token = _dispatch_and_claim(bridge, engine, job)
    with engine.begin() as connection:
        # The presumed-dead worker comes back: its heartbeat and result are refused.
        assert (
            store_for(connection).refresh_heartbeats(connection, [(job.id, old_token)], now=datetime.now(UTC))
            == set()
        )
        assert not store_for(connection).finish_job(
            connection,
            job.id,
            old_token,
            now=datetime.now(UTC),
            success=True,
            result={"late": True},
            remove_at=None,
        )
        assert store_for(connection).finish_job(
            connection,
            job.id,
            new_token,
            now=datetime.now(UTC),
            success=True,
            result={"current": True},
            remove_at=None,
        )
    final = fetch(job.id)
    assert final.result == {"current": True} and final.attempts == 2


def test_lost_messages_are_resent_only_when_the_queue_is_empty(
    redis_db: int,
    bridge: BridgeApp,
    celery_app: Celery,
    fetch: Fetch,
    queue: Callable[[], list[dict[str, Any]]],
) -> None:
    job = schedule_job(WorkerJobConfig(type="echo", user_id=1))
    dispatcher = Dispatcher(bridge, celery_app)
    dispatcher.run_once(datetime.now(UTC))
    first_token = fetch(job.id).task_id
    later = datetime.now(UTC) + bridge.settings.redispatch_after + timedelta(seconds=1)
    # The message still waits in the queue: not lost.
    assert dispatcher.recovery.run_once(later) == []
    redis.Redis(host=REDIS_HOST, db=redis_db).delete("celery")  # the broker lost it
    [recovered] = dispatcher.recovery.run_once(later)
    assert recovered.reason == "dispatched but not started"
    dispatcher.run_once(datetime.now(UTC))
    row = fetch(job.id)
    assert row.recoveries == 1 and row.task_id not in (None, first_token)
    assert [m["headers"]["id"] for m in queue()] == [row.task_id]


def test_stale_started_rows_are_recovered_even_with_a_live_heartbeat(
    bridge: BridgeApp,
    celery_app: Celery,
    fetch: Fetch,
    job_factory: Callable[..., WorkerJob],
) -> None:
    now = datetime.now(UTC)
    stale = job_factory(
        type="echo",
        user_id=1,
        started=now - timedelta(hours=2),
        heartbeat=now,
        task_id="t",
        dispatched_at=now - timedelta(hours=2),
    )
    [recovered] = Dispatcher(bridge, celery_app).recovery.run_once(now)
    assert recovered.job_id == stale.id
    assert recovered.reason == "started longer than stale_after ago"
    assert fetch(stale.id).state is JobState.PENDING


def test_a_lost_job_with_a_newer_pending_job_is_cancelled_not_reset(
    bridge: BridgeApp, celery_app: Celery, fetch: Fetch, engine: Engine
) -> None:
    job = schedule_job(WorkerJobConfig(type="echo", user_id=1))
    _dispatch_and_claim(bridge, engine, job)
    newer = schedule_job(WorkerJobConfig(type="echo", user_id=1))  # job is running: kept
    assert fetch(job.id).state is JobState.RUNNING
    later = datetime.now(UTC) + bridge.settings.heartbeat_timeout + timedelta(seconds=1)
    [recovered] = Dispatcher(bridge, celery_app).recovery.run_once(later)
    assert recovered.cancelled_by == newer.id
    row = fetch(job.id)
    assert row.state is JobState.CANCELLED and row.result["cancelled_by"] == newer.id
    assert fetch(newer.id).state is JobState.PENDING


def test_max_in_flight_holds_the_backlog_in_the_table(
    bridge: BridgeApp,
    celery_app: Celery,
    queue: Callable[[], list[dict[str, Any]]],
) -> None:
    for i in range(25):
        schedule_job(WorkerJobConfig(type="echo", user_id=i))
    dispatcher = Dispatcher(_with_settings(bridge, max_in_flight=10), celery_app)
    report = dispatcher.run_once(datetime.now(UTC))
    assert len(report.sent) == 10 and report.throttled
    assert dispatcher.seconds_until_next_pass(report, datetime.now(UTC)) < 0.1
    assert len(queue()) == 10
    assert dispatcher.run_once(datetime.now(UTC)).sent == []


def test_the_wait_runs_until_the_next_due_time_within_max_interval(
    bridge: BridgeApp, celery_app: Celery
) -> None:
    dispatcher = Dispatcher(bridge, celery_app)
    now = datetime.now(UTC)
    schedule_job(WorkerJobConfig(type="echo", user_id=1, due=now + timedelta(seconds=2)))
    report = dispatcher.run_once(now)
    assert 1.5 < dispatcher.seconds_until_next_pass(report, now) <= 2.0
    schedule_job(WorkerJobConfig(type="echo", user_id=1, due=now + timedelta(hours=2)))
    report = dispatcher.run_once(now)
    wait = dispatcher.seconds_until_next_pass(report, now)
    assert wait <= bridge.settings.max_interval.total_seconds()


def test_the_removal_job_is_ensured_once_and_a_live_one_is_left_alone(
    bridge: BridgeApp,
    celery_app: Celery,
    all_jobs: Callable[[], list[WorkerJob]],
    engine: Engine,
) -> None:
    with_removal = _with_settings(bridge, jobs_package="jobs")
    dispatcher = Dispatcher(with_removal, celery_app)
    created = dispatcher.removal.ensure_job(datetime.now(UTC))
    assert created is not None
    assert created.type == REMOVAL_JOB and created.user_id == 0
    assert created.cron_schedule == "* * * * *" and created.auto_reschedule_on_failure
    with engine.begin() as connection:  # it is running now
        [row] = store_for(connection).claim_due_jobs(connection, now=created.due, limit=5)
    assert row.task_id is not None
    assert _claim(with_removal, created.id, row.task_id, "w:1") is not None
    assert Dispatcher(with_removal, celery_app).removal.ensure_job(datetime.now(UTC)) is None
    jobs = all_jobs()
    assert len(jobs) == 1 and jobs[0].state is JobState.RUNNING


def test_listen_wakes_the_dispatcher_when_a_job_is_scheduled(
    bridge: BridgeApp,
) -> None:
    waiter = ListenWaiter(bridge.engine)
    try:
        assert waiter.wait(0.05) is False  # connects and LISTENs
        woke: list[tuple[bool, float]] = []

        def wait() -> None:
            start = time.monotonic()
            woke.append((waiter.wait(10), time.monotonic() - start))

        thread = threading.Thread(target=wait)
        thread.start()
        time.sleep(0.2)
        schedule_job(WorkerJobConfig(type="echo", user_id=1))
        thread.join(15)
        [(notified, elapsed)] = woke
        assert notified and elapsed < 2
    finally:
        waiter.close()
