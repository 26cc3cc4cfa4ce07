"""Every public entry survives a database blip: the connections of the test database are
terminated (as a restart or a failover does), then each entry is called once and must
succeed and write exactly what it should; with the caller's own session nothing is
retried; an outage past the patience is a clear error naming the database."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta

import pytest
from celery import Celery
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from tests.conftest import ADMIN_URL, REDIS_HOST, TEST_JOBS
from worker_bridge import WorkerJobConfig, schedule_cron_job, schedule_job, schedule_jobs
from worker_bridge.bridge import BridgeApp, set_bridge
from worker_bridge.celery_app import create_celery_app
from worker_bridge.cli import main
from worker_bridge.dispatcher import Dispatcher
from worker_bridge.errors import DatabaseUnavailableError
from worker_bridge.job import Job, JobState
from worker_bridge.settings import Settings
from worker_bridge.store.schema import PAIR_LOCK_BUCKETS, PAIR_LOCK_CLASS

AllJobs = Callable[[], list[Job]]


@pytest.fixture
def blip_bridge(bridge: BridgeApp, database_url: str) -> Iterator[BridgeApp]:
    """A bridge as an application builds one: no pre-ping, so a dead pooled connection
    is found only when a statement is sent on it. Installed as the process default."""
    app_bridge = BridgeApp.from_settings(
        Settings(database_url=database_url, jobs_package=TEST_JOBS)
    )
    set_bridge(app_bridge)
    try:
        yield app_bridge
    finally:
        set_bridge(bridge)
        app_bridge.dispose()


@pytest.fixture
def terminate_backends(database_url: str) -> Iterator[Callable[[], int]]:
    """Terminate every connection to the test database but the caller's; return how many."""
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = make_url(database_url).database

    def terminate() -> int:
        with admin.connect() as connection:
            killed = connection.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            ).scalar_one()
        return int(killed)

    yield terminate
    admin.dispose()


def _warm(bridge: BridgeApp) -> None:
    """Leave an idle connection in both pools (the transactional and the autocommit one)."""
    for engine in (bridge.engine, bridge.autocommit):
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))


def _pending(all_jobs: AllJobs) -> list[Job]:
    return [job for job in all_jobs() if job.state is JobState.PENDING]


def test_schedule_job_after_the_connections_died(
    blip_bridge: BridgeApp, terminate_backends: Callable[[], int], all_jobs: AllJobs
) -> None:
    _warm(blip_bridge)
    assert terminate_backends() >= 2
    job = schedule_job(WorkerJobConfig(type="echo", user_id=1, data={"n": 1}))
    [row] = all_jobs()
    assert row.id == job.id and row.state is JobState.PENDING and row.data == {"n": 1}


def test_schedule_cron_job_after_the_connections_died(
    blip_bridge: BridgeApp, terminate_backends: Callable[[], int], all_jobs: AllJobs
) -> None:
    _warm(blip_bridge)
    assert terminate_backends() >= 2
    job = schedule_cron_job(WorkerJobConfig(type="echo", user_id=1), "*/5 * * * *")
    [row] = all_jobs()
    assert row.id == job.id and row.cron_schedule == "*/5 * * * *"
    assert row.state is JobState.PENDING


def test_schedule_jobs_after_the_connections_died(
    blip_bridge: BridgeApp, terminate_backends: Callable[[], int], all_jobs: AllJobs
) -> None:
    _warm(blip_bridge)
    assert terminate_backends() >= 2
    jobs = schedule_jobs([WorkerJobConfig(type="echo", user_id=user) for user in range(5)])
    rows = all_jobs()
    assert [row.id for row in rows] == [job.id for job in jobs]
    assert all(row.state is JobState.PENDING for row in rows)


def test_the_cli_after_the_connections_died(
    blip_bridge: BridgeApp,
    terminate_backends: Callable[[], int],
    all_jobs: AllJobs,
    capsys: pytest.CaptureFixture[str],
) -> None:
    job = schedule_job(WorkerJobConfig(type="echo", user_id=7))
    _warm(blip_bridge)
    assert terminate_backends() >= 2
    assert main(["--json", "jobs"]) == 0
    assert [entry["id"] for entry in json.loads(capsys.readouterr().out)] == [job.id]
    assert terminate_backends() >= 1
    assert main(["schedule", "echo", "--user", "8"]) == 0
    assert terminate_backends() >= 1
    assert main(["cancel", str(job.id)]) == 0
    states = {row.user_id: row.state for row in all_jobs()}
    assert states == {7: JobState.CANCELLED, 8: JobState.PENDING}


def test_a_dispatcher_pass_after_the_connections_died(
    blip_bridge: BridgeApp,
    terminate_backends: Callable[[], int],
    all_jobs: AllJobs,
    redis_db: int,
) -> None:
    celery: Celery = create_celery_app()
    celery.conf.broker_url = f"redis://{REDIS_HOST}:6379/{redis_db}"
    dispatcher = Dispatcher(blip_bridge, celery)
    try:
        dispatcher.pass_once()  # warms the pools
        job = schedule_job(WorkerJobConfig(type="echo", user_id=1))
        assert terminate_backends() >= 1
        dispatcher.pass_once()
        [row] = all_jobs()
        assert row.id == job.id and row.state is JobState.DISPATCHED
    finally:
        dispatcher.close()


def test_a_statement_whose_connection_died_before_it_ran_is_run_again_once(
    blip_bridge: BridgeApp,
    terminate_backends: Callable[[], int],
    all_jobs: AllJobs,
    database_url: str,
) -> None:
    """The statement reached the server and waited there (for the pair's lock, held by
    another session) when its connection was terminated: it never ran, so the retry is
    the only run. One pending job, no cancelled duplicate."""
    holder = create_engine(database_url)
    key = text(
        "SELECT pg_advisory_xact_lock(:c, (hashtext('echo') # hashint4(1)) & :m)"
    ).bindparams(c=PAIR_LOCK_CLASS, m=PAIR_LOCK_BUCKETS - 1)
    done: list[Job] = []
    errors: list[BaseException] = []
    connection = holder.connect()
    try:
        transaction = connection.begin()
        connection.execute(key)

        def schedule() -> None:
            try:
                done.append(schedule_job(WorkerJobConfig(type="echo", user_id=1)))
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=schedule)
        thread.start()
        deadline = time.monotonic() + 10
        with holder.connect() as probe:
            waiting = text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            while not (pids := probe.execute(waiting).scalars().all()):
                assert time.monotonic() < deadline, "schedule_job never waited for the lock"
                time.sleep(0.02)
            probe.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pids[0]})
            probe.commit()
        transaction.commit()
        thread.join(20)
    finally:
        connection.close()
        holder.dispose()
    assert errors == [] and len(done) == 1
    [row] = all_jobs()
    assert row.id == done[0].id and row.state is JobState.PENDING


def test_a_reply_lost_after_the_commit_makes_the_retry_supersede_the_first_row(
    blip_bridge: BridgeApp, all_jobs: AllJobs
) -> None:
    """What a retry does when the lost connection had committed the insert (the reply was
    lost, not the statement): the second run supersedes the first, exactly as scheduling
    the job twice does, so one pending job is left and the first row says which one."""
    config = WorkerJobConfig(type="echo", user_id=1, data={"n": 1})
    first = schedule_job(config)
    retried = schedule_job(config)
    rows = {row.id: row for row in all_jobs()}
    assert [row.id for row in _pending(all_jobs)] == [retried.id]
    assert rows[first.id].state is JobState.CANCELLED
    assert rows[first.id].result["cancelled_by"] == retried.id


def test_with_the_callers_session_nothing_is_retried_and_the_error_says_why(
    blip_bridge: BridgeApp, terminate_backends: Callable[[], int], all_jobs: AllJobs
) -> None:
    with Session(blip_bridge.engine) as session:
        session.execute(text("SELECT 1"))
        assert terminate_backends() >= 1
        with pytest.raises(OperationalError) as raised:
            schedule_job(WorkerJobConfig(type="echo", user_id=1), session=session)
        assert any("nothing was retried" in note for note in raised.value.__notes__)
    assert all_jobs() == []


def test_an_outage_past_the_patience_names_the_database_without_its_password(
    bridge: BridgeApp, database_url: str
) -> None:
    url = make_url(database_url).set(password="s3cret-blip", port=1)
    settings = replace(
        bridge.settings,
        database_url=url.render_as_string(hide_password=False),
        reconnect_patience=timedelta(seconds=0.5),
    )
    down = BridgeApp.from_settings(settings)
    started = time.monotonic()
    try:
        with pytest.raises(DatabaseUnavailableError) as raised:
            schedule_job(WorkerJobConfig(type="echo", user_id=1), bridge=down)
    finally:
        down.dispose()
    elapsed = time.monotonic() - started
    message = str(raised.value)
    assert message.startswith("cannot reach the database at postgresql+psycopg://postgres:***@")
    assert "s3cret-blip" not in message and "worker_bridge_reconnect_patience" in message
    assert 0.4 < elapsed < 5.0
    assert isinstance(raised.value.__cause__, OperationalError)
