"""The console's indexes never enter the plans of the hot path's statements.

A plain ``(type, id)`` or ``(due, id)`` index is a trap on a table without
statistics (new, truncated, restored): PostgreSQL's generic plan of the
supersede lookup then picked ``(type, id)`` and read every row of the type on
each ``schedule_job`` (a third of the scheduling rate at a few thousand rows),
and the dispatcher's claim could pick ``(due, id)`` and read every finished
row. The console's indexes are keyed on expressions only its own queries spell
out. Here every statement of scheduling, dispatching, running, finishing,
recovery and removal runs on a truncated table under ``auto_explain``, with
generic plans forced, and no plan may name a console index; the console's own
queries must.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, text

from worker_bridge import WorkerJobConfig, schedule_job, schedule_jobs
from worker_bridge.bridge import BridgeApp
from worker_bridge.job import JobState
from worker_bridge.outcome import decide_outcome
from worker_bridge.settings import Settings
from worker_bridge.store.reports import JobFilter

CONSOLE_INDEXES = (
    "ix_worker_jobs_type_id",
    "ix_worker_jobs_task_id",
    "ix_worker_jobs_user_id_id",
    "ix_worker_jobs_due_id",
    "ix_worker_jobs_finished_id",
    "ix_worker_jobs_data",
    "ix_worker_jobs_live_cron",
)


@pytest.fixture
def explained(bridge: BridgeApp) -> Iterator[tuple[BridgeApp, list[str]]]:
    """A bridge on the test database whose connections report every plan they run."""
    plans: list[str] = []
    watched = BridgeApp.from_settings(
        Settings(database_url=bridge.settings.database_url, jobs_package="tests.testjobs")
    )

    def on_connect(dbapi: Any, _record: Any) -> None:
        dbapi.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))
        with dbapi.cursor() as cursor:
            for setting in (
                "LOAD 'auto_explain'",
                "SET auto_explain.log_min_duration = 0",
                "SET auto_explain.log_level = notice",
                "SET auto_explain.log_nested_statements = on",
                "SET plan_cache_mode = force_generic_plan",
            ):
                cursor.execute(setting)
        if not dbapi.autocommit:
            dbapi.commit()

    for engine in (watched.engine, watched.autocommit):
        event.listen(engine.pool, "connect", on_connect)
    with bridge.engine.begin() as connection:
        connection.execute(text("TRUNCATE worker_jobs, worker_job_minutes RESTART IDENTITY"))
    try:
        yield watched, plans
    finally:
        watched.dispose()


def used(plans: list[str]) -> set[str]:
    return {name for name in CONSOLE_INDEXES for plan in plans if name in plan}


def test_no_hot_path_statement_plans_with_a_console_index(
    explained: tuple[BridgeApp, list[str]],
) -> None:
    bridge, plans = explained
    store = bridge.store
    now = datetime.now(UTC)
    for user in range(400):
        schedule_job(WorkerJobConfig(type="echo", user_id=user), bridge=bridge)
    for _ in range(10):  # each supersedes the one before
        schedule_job(WorkerJobConfig(type="echo", user_id=7), bridge=bridge)
    schedule_jobs([WorkerJobConfig(type="echo", user_id=500 + n) for n in range(50)], bridge=bridge)
    schedule_job(WorkerJobConfig(type="capped", user_id=1), bridge=bridge)
    with bridge.engine.begin() as connection:
        store.lock_types(connection, ["capped"])
        store.count_live_by_type(connection, ["capped", "echo"])
        claimed = store.claim_due_jobs(connection, now=now + timedelta(seconds=1), limit=200)
        store.count_in_flight(connection)
        store.next_due(connection)
    assert claimed
    for job in claimed[:100]:
        assert job.task_id is not None
        with bridge.autocommit.begin() as connection:
            running = store.claim_job(connection, job.id, job.task_id, worker="w:1", now=now)
        assert running is not None
        with bridge.autocommit.begin() as connection:
            store.refresh_heartbeats(connection, [(job.id, job.task_id)], now=now)
        outcome = decide_outcome(
            running, now=now, timezone="UTC", returned={"ok": True}, max_result_bytes=1 << 20
        )
        with bridge.autocommit.begin() as connection:
            store.write_outcome(
                connection, running, job.task_id, outcome, now=now, stale_before=now
            )
    with bridge.engine.begin() as connection:
        store.recover_lost_jobs(
            connection, now=now + timedelta(hours=2), stale_before=now,
            heartbeat_before=now + timedelta(hours=1), redispatch_before=now + timedelta(hours=1),
        )  # fmt: skip
        store.delete_removable_jobs(
            connection, now=now + timedelta(days=8), failed_before=now + timedelta(days=1)
        )
    assert len(plans) > 500
    assert used(plans) == set()


def test_the_console_queries_do_use_them(explained: tuple[BridgeApp, list[str]]) -> None:
    bridge, plans = explained
    schedule_jobs(
        [WorkerJobConfig(type="echo", user_id=n, data={"n": n}) for n in range(3000)],
        bridge=bridge,
    )
    schedule_jobs([WorkerJobConfig(type="other", user_id=n) for n in range(3)], bridge=bridge)
    with bridge.engine.begin() as connection:
        # The console's indexes hold finished rows: finish most of them.
        connection.execute(
            text(
                "UPDATE worker_jobs SET started = now(), finished = now(), success = true, "
                "task_id = 'task-' || id WHERE id % 10 <> 0"
            )
        )
        connection.execute(text("ANALYZE worker_jobs"))
    now = datetime.now(UTC)
    with bridge.engine.connect() as connection:
        store = bridge.store
        # Custom plans here: a generic plan guesses half the rows match any type.
        connection.execute(text("SET plan_cache_mode = force_custom_plan"))
        connection.execute(text("SET enable_seqscan = off"))
        store.list_jobs(connection, JobFilter(job_type="other"))
        store.list_jobs(connection, JobFilter(job_type="echo", status=JobState.SUCCEEDED))
        store.list_jobs(connection, JobFilter(user_id=3))
        store.list_jobs(connection, JobFilter(task_id="task-7"))
        store.list_jobs(connection, JobFilter(data={"n": 3}))
        store.list_jobs(connection, JobFilter(since=now - timedelta(hours=1)))
        store.list_jobs(connection, JobFilter(time_field="finished", until=now))
        store.finished_by_minute(connection, since=now - timedelta(hours=1), until=now)
    assert used(plans) >= set(CONSOLE_INDEXES) - {"ix_worker_jobs_live_cron"}


def test_failed_rows_are_found_through_their_partial_index(
    explained: tuple[BridgeApp, list[str]],
) -> None:
    """Removal's look for failed rows past their retention, and a job's supersede links,
    say "success = false" as the partial index does: "IS false" read the whole table."""
    bridge, plans = explained
    now = datetime.now(UTC)
    with bridge.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO worker_jobs (type, user_id, data, due, started, finished, success) "
                "SELECT 'echo', n, '{}', now(), now(), now(), n % 500 <> 0 "
                "FROM generate_series(1, 20000) AS n"
            )
        )
        connection.execute(text("ANALYZE worker_jobs"))
    job = schedule_job(WorkerJobConfig(type="echo", user_id=1), bridge=bridge)
    plans.clear()
    with bridge.engine.begin() as connection:
        connection.execute(text("SET plan_cache_mode = force_custom_plan"))
        bridge.store.delete_removable_jobs(
            connection, now=now, failed_before=now - timedelta(days=7)
        )
        bridge.store.superseded_by(connection, job)
    scans = [plan for plan in plans if "worker_jobs" in plan]
    assert scans and not [plan for plan in scans if "Seq Scan on worker_jobs" in plan]
    assert sum("ix_worker_jobs_failed_finished" in plan for plan in scans) >= 2
