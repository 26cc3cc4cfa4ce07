"""A job module's options: read and checked, then obeyed by the dispatcher (real PostgreSQL and
Redis, no worker): its queue, priority and time limits on its messages, and its concurrency cap
over every worker."""

from __future__ import annotations

import base64
import json
import types
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from celery import Celery

from tests.conftest import REDIS_HOST
from worker_bridge import WorkerJobConfig, schedule_jobs
from worker_bridge.bridge import BridgeApp
from worker_bridge.celery_app import create_celery_app
from worker_bridge.dispatcher import Dispatcher
from worker_bridge.errors import JobModuleError
from worker_bridge.job import Job, JobState
from worker_bridge.loader import JobOptions, read_options
from worker_bridge.routing import send_options, within_caps

DUE = datetime(2030, 1, 1, tzinfo=UTC)


def module(**attributes: object) -> types.ModuleType:
    made = types.ModuleType("jobs.example")
    made.__dict__.update(attributes)
    return made


def test_read_options_reads_every_option() -> None:
    options = read_options(
        module(QUEUE="reports", TIME_LIMIT=600, SOFT_TIME_LIMIT=570.5, PRIORITY=9,
               MAX_CONCURRENCY=3, BATCH_SIZE=10)
    )  # fmt: skip
    assert options == JobOptions(
        batch_size=10, queue="reports", time_limit=600.0, soft_time_limit=570.5, priority=9,
        max_concurrency=3,
    )  # fmt: skip
    assert read_options(module()) == JobOptions()


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"QUEUE": ""}, "QUEUE must be a queue name"),
        ({"QUEUE": 5}, "QUEUE must be a queue name"),
        ({"QUEUE": " reports"}, "QUEUE must be a queue name"),
        ({"TIME_LIMIT": 0}, "TIME_LIMIT must be a positive number of seconds"),
        ({"TIME_LIMIT": "60"}, "TIME_LIMIT must be a positive number of seconds"),
        ({"SOFT_TIME_LIMIT": float("inf")}, "SOFT_TIME_LIMIT must be a positive number"),
        ({"TIME_LIMIT": 10, "SOFT_TIME_LIMIT": 10}, "SOFT_TIME_LIMIT must be shorter than"),
        ({"PRIORITY": 10}, "PRIORITY must be an int from 0 to 9"),
        ({"PRIORITY": 5.0}, "PRIORITY must be an int from 0 to 9"),
        ({"PRIORITY": True}, "PRIORITY must be an int from 0 to 9"),
        ({"MAX_CONCURRENCY": 0}, "MAX_CONCURRENCY must be an int of at least 1"),
        ({"MAX_CONCURRENCY": 2.5}, "MAX_CONCURRENCY must be an int of at least 1"),
    ],
)
def test_read_options_names_a_bad_option(attributes: dict[str, object], message: str) -> None:
    with pytest.raises(JobModuleError, match=f"job module jobs.example: {message}"):
        read_options(module(**attributes))


def test_time_limits_must_be_shorter_than_stale_after() -> None:
    with pytest.raises(JobModuleError, match=r"TIME_LIMIT must be shorter than "
                       r"worker_bridge_stale_after \(3600 s; a run still going"):  # fmt: skip
        read_options(module(TIME_LIMIT=3600), max_time_limit=3600)
    with pytest.raises(JobModuleError, match="SOFT_TIME_LIMIT must be shorter than worker_"):
        read_options(module(SOFT_TIME_LIMIT=7200), max_time_limit=3600)
    assert read_options(module(TIME_LIMIT=3599), max_time_limit=3600).time_limit == 3599


def test_send_options() -> None:
    assert send_options(JobOptions()) == {"time_limit": None, "soft_time_limit": None}
    assert send_options(JobOptions(queue="q", priority=0, time_limit=5.0, soft_time_limit=4.0)) == {
        "time_limit": 5.0,
        "soft_time_limit": 4.0,
        "queue": "q",
        "priority": 0,
    }


def test_within_caps_keeps_the_first_rows_up_to_the_room_left() -> None:
    jobs = [
        Job(id=n, type=kind, user_id=n, data={}, due=DUE)
        for n, kind in enumerate(["capped", "echo", "capped", "capped", "echo"], start=1)
    ]
    allowed, over = within_caps(jobs, {"capped": 3}, {"capped": 1})
    assert [job.id for job in allowed] == [1, 2, 3, 5] and [job.id for job in over] == [4]
    allowed, over = within_caps(jobs, {"capped": 3}, {"capped": 3})
    assert [job.id for job in allowed] == [2, 5] and [job.id for job in over] == [1, 3, 4]


# --- the dispatcher obeys them --------------------------------------------------------------


@pytest.fixture
def broker(redis_db: int) -> Iterator[redis.Redis]:
    client = redis.Redis(host=REDIS_HOST, db=redis_db)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def dispatcher(bridge: BridgeApp, redis_db: int, broker: redis.Redis) -> Iterator[Dispatcher]:
    app: Celery = create_celery_app()
    app.conf.broker_url = f"redis://{REDIS_HOST}:6379/{redis_db}"
    made = Dispatcher(bridge, app)
    yield made
    made.close()
    app.close()


def messages(broker: redis.Redis, queue: str) -> list[dict[str, Any]]:
    """The messages waiting in ``queue``, over the lists kombu keeps per priority step."""
    raws = []
    for key in sorted(broker.keys(f"{queue}*")):
        if key == queue.encode() or key.startswith(queue.encode() + b"\x06\x16"):
            raws.extend(reversed(broker.lrange(key, 0, -1)))
    decoded = []
    for raw in raws:
        envelope = json.loads(raw)
        body = json.loads(base64.b64decode(envelope["body"]))
        decoded.append(
            {"headers": envelope["headers"], "properties": envelope["properties"],
             "kwargs": body[1]}
        )  # fmt: skip
    return decoded


def test_a_types_messages_carry_its_queue_priority_and_time_limits(
    dispatcher: Dispatcher, broker: redis.Redis
) -> None:
    routed, plain = schedule_jobs(
        [WorkerJobConfig(type="routed", user_id=1), WorkerJobConfig(type="echo", user_id=2)]
    )
    report = dispatcher.run_once(datetime.now(UTC) + timedelta(seconds=1))
    assert sorted(job.id for job in report.sent) == [routed.id, plain.id]

    [on_reports] = messages(broker, "reports")
    assert on_reports["kwargs"] == {"job_id": routed.id, "user_id": 1}
    assert on_reports["headers"]["task"] == "jobs.routed"
    assert on_reports["headers"]["timelimit"] == [4.0, 1.5]
    assert on_reports["properties"]["priority"] == 7
    [on_default] = messages(broker, "celery")
    assert on_default["kwargs"] == {"job_id": plain.id, "user_id": 2}
    # Unset limits are the worker's own: the message carries none.
    assert on_default["headers"]["timelimit"] == [None, None]


def test_the_lost_message_check_counts_the_types_queues(dispatcher: Dispatcher) -> None:
    assert {"celery", "reports"} <= dispatcher.job_queues()


def test_max_concurrency_caps_the_rows_sent_or_running_over_all_workers(
    bridge: BridgeApp, dispatcher: Dispatcher, fetch: Callable[[int], Job]
) -> None:
    capped = schedule_jobs([WorkerJobConfig(type="capped", user_id=n) for n in range(1, 6)])
    other = schedule_jobs([WorkerJobConfig(type="echo", user_id=n) for n in range(1, 4)])
    now = datetime.now(UTC) + timedelta(seconds=1)

    first = dispatcher.run_once(now)
    sent = sorted(job.id for job in first.sent)
    # Two of the capped type (the first due), and every other row: none starved.
    assert sent == sorted([capped[0].id, capped[1].id, *(job.id for job in other)])
    waiting = [fetch(job.id) for job in capped[2:]]
    assert all(job.state is JobState.PENDING for job in waiting)
    assert all(job.task_id is None and job.dispatched_at is None for job in waiting)

    assert dispatcher.run_once(now).sent == []  # at the cap: nothing more goes

    with bridge.engine.begin() as connection:
        assert bridge.store.cancel_job(connection, capped[0].id, now=now, reason="done")
    third = dispatcher.run_once(now)
    assert [job.id for job in third.sent] == [capped[2].id]
    assert dispatcher.run_once(now).sent == []


def test_dispatchers_fill_a_capped_type_one_at_a_time(bridge: BridgeApp) -> None:
    # While one dispatcher's transaction holds the type's lock, another cannot take it:
    # the second counts the type's live rows only after the first has committed its sends.
    from sqlalchemy import text

    from worker_bridge.store.schema import TYPE_LOCK_CLASS

    with bridge.engine.begin() as first:
        bridge.store.lock_types(first, ["capped", "routed"])
        with bridge.engine.begin() as second:
            taken = second.execute(
                text("SELECT pg_try_advisory_xact_lock(:c, hashtext('capped'))"),
                {"c": TYPE_LOCK_CLASS},
            ).scalar_one()
            other = second.execute(
                text("SELECT pg_try_advisory_xact_lock(:c, hashtext('echo'))"),
                {"c": TYPE_LOCK_CLASS},
            ).scalar_one()
    assert taken is False and other is True
