"""schedule_job / schedule_cron_job against a real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from worker_bridge import WorkerJobConfig, schedule_cron_job, schedule_job
from worker_bridge.bridge import BridgeApp
from worker_bridge.models import JobState, WorkerJob

Fetch = Callable[[int], WorkerJob]


def test_schedule_job_writes_a_readable_row(bridge: BridgeApp, fetch: Fetch) -> None:
    before = datetime.now(UTC)
    job = schedule_job(WorkerJobConfig(type="echo", user_id=7, data={"a": [1, 2, {"b": None}]}))
    after = datetime.now(UTC)

    assert job.id > 0
    assert job.type == "echo" and job.user_id == 7
    assert job.data == {"a": [1, 2, {"b": None}]}
    assert before <= job.due <= after and job.due.tzinfo is not None
    assert job.state is JobState.PENDING
    stored = fetch(job.id)
    assert stored.data == job.data and stored.due == job.due
    assert stored.started is None and stored.finished is None and stored.success is None
    assert stored.cron_schedule is None and stored.rescheduled_from_job is None
    assert stored.created_at.tzinfo is not None


def test_config_fields_are_stored(bridge: BridgeApp, fetch: Fetch) -> None:
    due = datetime(2031, 5, 6, 7, 8, 9, tzinfo=ZoneInfo("Asia/Tokyo"))
    job = schedule_job(
        WorkerJobConfig(
            type="echo",
            user_id=0,
            due=due,
            auto_reschedule_on_failure=True,
            auto_reschedule_on_failure_delay=timedelta(seconds=90),
            remove_delay=2500,
        )
    )
    stored = fetch(job.id)
    assert stored.due == due and stored.due.utcoffset() == timedelta(0)
    assert stored.data == {}
    assert stored.auto_reschedule_on_failure is True
    assert stored.auto_reschedule_on_failure_delay == 90_000
    assert stored.remove_delay == 2500


def test_scheduling_cancels_the_matching_pending_job(bridge: BridgeApp, fetch: Fetch) -> None:
    first = schedule_job(WorkerJobConfig(type="echo", user_id=1, data={"n": 1}))
    second = schedule_job(WorkerJobConfig(type="echo", user_id=1, data={"n": 2}))

    old = fetch(first.id)
    assert old.state is JobState.CANCELLED
    assert old.success is False
    assert old.started is not None and old.started == old.finished
    assert old.result["cancelled_by"] == second.id
    assert "cancel" in old.result["error"].lower()
    assert fetch(second.id).state is JobState.PENDING


def test_other_types_users_and_live_or_finished_jobs_are_untouched(
    bridge: BridgeApp, fetch: Fetch, job_factory: Callable[..., WorkerJob]
) -> None:
    now = datetime.now(UTC)
    other_type = schedule_job(WorkerJobConfig(type="other", user_id=1))
    other_user = schedule_job(WorkerJobConfig(type="echo", user_id=2))
    running = job_factory(type="echo", user_id=1, started=now - timedelta(minutes=59))
    done = job_factory(
        type="echo", user_id=1, started=now, finished=now, success=True, result={"ok": 1}
    )
    stale = job_factory(type="echo", user_id=1, started=now - timedelta(minutes=61))

    new = schedule_job(WorkerJobConfig(type="echo", user_id=1))

    assert fetch(other_type.id).state is JobState.PENDING
    assert fetch(other_user.id).state is JobState.PENDING
    assert fetch(running.id).state is JobState.RUNNING
    assert fetch(done.id).result == {"ok": 1}
    cancelled = fetch(stale.id)
    assert cancelled.state is JobState.CANCELLED and cancelled.result["cancelled_by"] == new.id


def test_stale_after_is_configurable(
    session_bridge: BridgeApp,
    bridge: BridgeApp,
    fetch: Fetch,
    job_factory: Callable[..., WorkerJob],
) -> None:
    quick = BridgeApp(
        settings=type(bridge.settings)(
            database_url=bridge.settings.database_url,
            jobs_package=bridge.settings.jobs_package,
            stale_after=timedelta(seconds=30),
        ),
        engine=bridge.engine,
        session_factory=bridge.session_factory,
    )
    started = job_factory(type="echo", user_id=1, started=datetime.now(UTC) - timedelta(seconds=45))
    schedule_job(WorkerJobConfig(type="echo", user_id=1), bridge=quick)
    assert fetch(started.id).state is JobState.CANCELLED


def test_a_dispatched_job_counts_as_pending(
    bridge: BridgeApp, fetch: Fetch, job_factory: Callable[..., WorkerJob]
) -> None:
    sent = job_factory(type="echo", user_id=1, dispatched_at=datetime.now(UTC), task_id="t-1")
    schedule_job(WorkerJobConfig(type="echo", user_id=1))
    cancelled = fetch(sent.id)
    assert cancelled.state is JobState.CANCELLED and cancelled.task_id is None


def test_transactional_enqueue_rolls_back_with_the_caller(
    bridge: BridgeApp, engine: Engine, all_jobs: Callable[[], list[WorkerJob]]
) -> None:
    existing = schedule_job(WorkerJobConfig(type="echo", user_id=3))
    with Session(engine) as session:
        session.execute(text("CREATE TEMP TABLE app_rows (x int)"))
        job = schedule_job(WorkerJobConfig(type="echo", user_id=3), session=session)
        assert job.id > existing.id
        # Not visible outside the caller's transaction yet.
        with engine.connect() as other:
            states = other.execute(select(WorkerJob.id)).scalars().all()
        assert job.id not in states
        session.rollback()
    jobs = all_jobs()
    assert [j.id for j in jobs] == [existing.id]
    assert jobs[0].state is JobState.PENDING  # the cancellation rolled back too


def test_transactional_enqueue_commits_with_the_caller(
    bridge: BridgeApp, engine: Engine, fetch: Fetch
) -> None:
    with engine.connect() as connection:
        connection.execute(text("CREATE TEMP TABLE app_rows (x int)"))
        connection.execute(text("INSERT INTO app_rows VALUES (1)"))
        job = schedule_job(
            WorkerJobConfig(type="echo", user_id=4, data={"k": "v"}), session=connection
        )
        connection.commit()
        assert connection.execute(text("SELECT count(*) FROM app_rows")).scalar() == 1
    assert fetch(job.id).data == {"k": "v"}


def test_session_of_the_wrong_kind_is_refused(bridge: BridgeApp) -> None:
    with pytest.raises(TypeError, match="Session or Connection"):
        schedule_job(WorkerJobConfig(type="echo", user_id=1), session="not a session")  # type: ignore[arg-type]


def test_schedule_cron_job_six_fields(bridge: BridgeApp, fetch: Fetch) -> None:
    before = datetime.now(UTC)
    job = schedule_cron_job(WorkerJobConfig(type="echo", user_id=1), "*/3 * * * * *")
    assert job.cron_schedule == "*/3 * * * * *"
    assert job.due > before
    assert job.due - before <= timedelta(seconds=3)
    assert job.due.second % 3 == 0 and job.due.microsecond == 0
    assert fetch(job.id).due == job.due


def test_schedule_cron_job_five_fields_from_a_given_due(bridge: BridgeApp) -> None:
    start = datetime(2030, 1, 1, 10, 7, 30, tzinfo=UTC)
    job = schedule_cron_job(WorkerJobConfig(type="echo", user_id=1, due=start), "0 12 * * *")
    assert job.due == datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def test_schedule_cron_job_uses_the_app_timezone_across_dst(bridge: BridgeApp) -> None:
    berlin = BridgeApp(
        settings=type(bridge.settings)(
            database_url=bridge.settings.database_url,
            jobs_package=bridge.settings.jobs_package,
            timezone="Europe/Berlin",
        ),
        engine=bridge.engine,
        session_factory=bridge.session_factory,
    )
    # Europe/Berlin leaves CET (UTC+1) for CEST (UTC+2) on 2030-03-31 at 02:00.
    before_change = datetime(2030, 3, 30, 12, 0, tzinfo=UTC)
    job = schedule_cron_job(
        WorkerJobConfig(type="echo", user_id=1, due=before_change), "0 9 * * *", bridge=berlin
    )
    assert job.due == datetime(2030, 3, 31, 7, 0, tzinfo=UTC)  # 09:00 CEST
    job = schedule_cron_job(
        WorkerJobConfig(type="other", user_id=1, due=before_change), "0 13 * * *", bridge=berlin
    )
    # 13:00 CET on the 30th to 13:00 CEST on the 31st is 23 hours of real time.
    assert job.due == before_change + timedelta(hours=23)
