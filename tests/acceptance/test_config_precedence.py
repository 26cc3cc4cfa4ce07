"""The application's Celery config module wins over worker_bridge's defaults, end to end.

worker_bridge fills in only what the config module ($CELERY_CONFIG_MODULE) leaves
unset, and refuses at app creation the two settings its guarantees cannot survive
(``pickle`` in ``accept_content``, ``task_acks_late = False``). Proved four ways:

1. in process: ``create_celery_app(module).conf`` reads back what the module set,
   the bridge's value for what it did not, and ConfigurationError for the two;
2. ``schedule_cron_job`` with settings read from a module setting
   ``timezone = "America/New_York"`` puts first fire times on New York's clock,
   across both daylight-saving changes of 2027 (14 March, 7 November);
3. a real worker started under that module writes each cron follow-up at the next
   fire time on New York's clock, across both changes;
4. a real worker started under a module setting ``worker_prefetch_multiplier = 4``
   and ``worker_send_task_events = True`` runs with them (read back over the
   broadcast mailbox with ``inspect``).

Every expected instant below was worked out by hand from the US rules (EST is
UTC-5, EDT is UTC-4; clocks go 02:00 EST -> 03:00 EDT on 2027-03-14 and 02:00 EDT
-> 01:00 EST on 2027-11-07) and the DST rule of worker_bridge/cron.py's docstring
(fixed-time jobs: a skipped time fires at the end of the gap, a repeated time on
its first occurrence only; wildcard jobs: every real instant that matches).
PostgreSQL and Redis only.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery import Celery
from sqlalchemy import Engine, select

from tests.acceptance.conftest import Processes, wait_until
from tests.conftest import TEST_JOBS, utcnow
from worker_bridge import WorkerJobConfig, schedule_cron_job
from worker_bridge.bridge import BridgeApp
from worker_bridge.celery_app import create_celery_app
from worker_bridge.cron import next_fire
from worker_bridge.errors import ConfigurationError
from worker_bridge.job import Job
from worker_bridge.models import WorkerJob
from worker_bridge.settings import Settings

NEW_YORK = "America/New_York"
NEW_YORK_CONFIG = "tests.acceptance.celeryconfig_new_york"
PREFETCH_CONFIG = "tests.acceptance.celeryconfig_prefetch"
PICKLE_CONFIG = "tests.acceptance.celeryconfig_pickle"
NO_ACKS_LATE_CONFIG = "tests.acceptance.celeryconfig_no_acks_late"

JobFactory = Callable[..., WorkerJob]


@pytest.fixture
def backend() -> str:
    """PostgreSQL + Redis only: the embedded back end has no broadcast for ``inspect``."""
    return "postgresql"


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@dataclass(frozen=True)
class Case:
    """A cron expression, an instant, and its next fire time after it in New York."""

    cron: str
    after: datetime
    expected: datetime
    #: ``expected`` on New York's wall clock, as worked out by hand.
    wall: str
    why: str


CASES = [
    Case("0 9 * * *", _utc("2027-01-15T00:00"), _utc("2027-01-15T14:00"),
         "2027-01-15 09:00 EST", "January: EST is UTC-5"),
    Case("0 9 * * *", _utc("2027-07-15T00:00"), _utc("2027-07-15T13:00"),
         "2027-07-15 09:00 EDT", "July: EDT is UTC-4"),
    Case("0 9 * * *", _utc("2027-03-13T14:00"), _utc("2027-03-14T13:00"),
         "2027-03-14 09:00 EDT", "09:00 EST to 09:00 EDT across the spring change: 23 h"),
    Case("30 1 * * *", _utc("2027-03-13T06:30"), _utc("2027-03-14T06:30"),
         "2027-03-14 01:30 EST", "01:30 on 14 March is still EST: the clocks jump at 02:00"),
    Case("30 1 * * *", _utc("2027-03-14T06:30"), _utc("2027-03-15T05:30"),
         "2027-03-15 01:30 EDT", "01:30 EST to 01:30 EDT: 23 h"),
    Case("30 2 * * *", _utc("2027-03-13T07:30"), _utc("2027-03-14T07:00"),
         "2027-03-14 03:00 EDT", "02:30 on 14 March does not exist: the end of the gap"),
    Case("30 2 * * *", _utc("2027-03-14T07:00"), _utc("2027-03-15T06:30"),
         "2027-03-15 02:30 EDT", "after the gap, 02:30 exists again"),
    Case("0 9 * * *", _utc("2027-11-06T13:00"), _utc("2027-11-07T14:00"),
         "2027-11-07 09:00 EST", "09:00 EDT to 09:00 EST across the autumn change: 25 h"),
    Case("30 1 * * *", _utc("2027-11-06T05:30"), _utc("2027-11-07T05:30"),
         "2027-11-07 01:30 EDT", "01:30 on 7 November comes twice: the first one (EDT)"),
    Case("30 1 * * *", _utc("2027-11-07T05:30"), _utc("2027-11-08T06:30"),
         "2027-11-08 01:30 EST", "a fixed-time job does not fire at the second 01:30 (EST)"),
    Case("*/30 1 * * *", _utc("2027-11-07T05:30"), _utc("2027-11-07T06:00"),
         "2027-11-07 01:00 EST", "a wildcard job fires in the repeated hour's second pass"),
]  # fmt: skip


def test_the_cases_are_new_york_wall_times_a_utc_clock_would_miss() -> None:
    """The hand-worked table agrees with zoneinfo, and UTC would give other instants.

    So a worker or scheduler that read cron in UTC (the bug) fails every case below.
    """
    zone = ZoneInfo(NEW_YORK)
    for case in CASES:
        assert case.expected.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z") == case.wall, case
        assert next_fire(case.cron, case.after, "UTC") != case.expected, case


# --- 1. in process: what create_celery_app(module).conf reads back ---------------------


def test_the_config_modules_timezone_wins() -> None:
    assert create_celery_app(NEW_YORK_CONFIG).conf.timezone == NEW_YORK


def test_the_config_modules_worker_settings_win() -> None:
    conf = create_celery_app(PREFETCH_CONFIG).conf
    assert conf.worker_prefetch_multiplier == 4
    assert conf.worker_send_task_events is True


def test_keys_the_config_module_leaves_unset_get_the_bridges_values() -> None:
    # celeryconfig_prefetch sets two keys and nothing else.
    conf = create_celery_app(PREFETCH_CONFIG).conf
    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert list(conf.accept_content) == ["json"]
    assert conf.task_serializer == "json"
    assert conf.task_ignore_result is True
    assert conf.task_send_sent_event is True
    assert conf.beat_scheduler == "worker_bridge.dispatcher:DispatcherScheduler"
    assert conf.timezone == "UTC"


@pytest.mark.parametrize(
    ("config_module", "key"),
    [(PICKLE_CONFIG, "accept_content"), (NO_ACKS_LATE_CONFIG, "task_acks_late")],
)
def test_settings_the_bridge_cannot_work_with_are_refused(config_module: str, key: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        create_celery_app(config_module)
    assert key in str(caught.value)


# --- 2. schedule_cron_job in the config module's zone -------------------------------------


@pytest.fixture(params=["settings from the config module", "timezone set directly"])
def new_york_bridge(
    request: pytest.FixtureRequest, bridge: BridgeApp, database_url: str
) -> Iterator[BridgeApp]:
    """A BridgeApp on the test database whose cron zone is New York.

    First as an application gets it: ``Settings.from_conf`` of the app built on the
    config module (this is what the fix is about); then with the zone set directly,
    which checks the scheduling maths whatever the config module's fate.
    """
    if request.param == "timezone set directly":
        yield BridgeApp(
            settings=replace(bridge.settings, timezone=NEW_YORK),
            engine=bridge.engine,
            session_factory=bridge.session_factory,
        )
        return
    settings = Settings.from_conf(
        create_celery_app(NEW_YORK_CONFIG).conf,
        environ={"WORKER_BRIDGE_DATABASE_URL": database_url, "WORKER_BRIDGE_JOBS": TEST_JOBS},
    )
    assert settings.database_url == database_url
    new_york = BridgeApp.from_settings(settings)
    try:
        yield new_york
    finally:
        new_york.dispose()


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"{case.cron}|{case.after:%m-%dT%H:%M}")
def test_schedule_cron_job_fires_first_on_new_yorks_clock(
    new_york_bridge: BridgeApp, fetch: Callable[[int], WorkerJob], case: Case
) -> None:
    assert new_york_bridge.settings.timezone == NEW_YORK, "the config module's zone was not read"
    job = schedule_cron_job(
        WorkerJobConfig(type="echo", user_id=1, due=case.after), case.cron, bridge=new_york_bridge
    )
    assert job.due == case.expected, case.why
    stored = fetch(job.id)
    assert stored.due == case.expected, case.why
    assert stored.cron_schedule == case.cron


# --- 3. a real worker writes cron follow-ups on New York's clock -------------------------


@contextmanager
def _client_app(config_module: str, broker_url: str) -> Iterator[Celery]:
    """A Celery app of the test process on the test's broker, closed afterwards."""
    app = create_celery_app(config_module)
    app.conf.broker_url = broker_url
    assert app.conf.broker_url == broker_url  # no $CELERY_BROKER_URL of ours in the way
    try:
        yield app
    finally:
        app.close()


@pytest.mark.e2e
def test_a_worker_writes_follow_ups_on_its_config_modules_clock(
    processes: Processes, job_factory: JobFactory, engine: Engine
) -> None:
    worker = processes.worker("ny", 2, env={"CELERY_CONFIG_MODULE": NEW_YORK_CONFIG})
    # Each row as the dispatcher would leave it: dispatched, carrying its message's task
    # id. A claim does not look at `due`, so rows due in 2027 run now, and the follow-up
    # is the next fire time after max(now, due) = due. No dispatcher runs: the follow-ups
    # stay pending in the table.
    rows = [
        job_factory(
            type="echo",
            user_id=user_id,
            cron_schedule=case.cron,
            due=case.after,
            dispatched_at=utcnow(),
            task_id=str(uuid.uuid4()),
        )
        for user_id, case in enumerate(CASES, start=1)
    ]
    with _client_app(NEW_YORK_CONFIG, processes.env["CELERY_BROKER_URL"]) as app:
        for row in rows:
            app.send_task(
                "jobs.echo", kwargs={"job_id": row.id, "user_id": row.user_id}, task_id=row.task_id
            )
    table = WorkerJob.__table__

    def everything_written() -> list[WorkerJob] | None:
        with engine.connect() as connection:
            found = [
                Job.from_row(r) for r in connection.execute(select(table).order_by(table.c.id))
            ]
        done = [j for j in found if j.rescheduled_from_job is None and j.finished is not None]
        follow_ups = [j for j in found if j.rescheduled_from_job is not None]
        return found if len(done) == len(follow_ups) == len(rows) else None

    assert worker.poll() is None, processes.log_of(worker)
    jobs = wait_until(everything_written, 60, "every run and its follow-up", interval=0.2)
    by_id = {job.id: job for job in jobs}
    follow_up_of = {job.rescheduled_from_job: job for job in jobs if job.rescheduled_from_job}
    zone = ZoneInfo(NEW_YORK)

    def on_the_clock(due: datetime) -> str:
        return f"{due.isoformat()} = {due.astimezone(zone):%Y-%m-%d %H:%M %Z}"

    got: list[tuple[str, str]] = []
    wanted: list[tuple[str, str]] = []
    for row, case in zip(rows, CASES, strict=True):
        ran = by_id[row.id]
        assert ran.success is True, ran.result
        assert ran.worker is not None and ran.worker.startswith("ny@")
        follow_up = follow_up_of[row.id]
        assert (follow_up.type, follow_up.user_id) == ("echo", row.user_id)
        assert follow_up.cron_schedule == case.cron
        assert follow_up.started is None and follow_up.finished is None
        what = f"{case.cron} after {case.after.isoformat()} ({case.why})"
        got.append((what, on_the_clock(follow_up.due)))
        wanted.append((what, on_the_clock(case.expected)))
    assert got == wanted


# --- 4. a running worker runs with the config module's settings -------------------------


@pytest.mark.e2e
def test_a_running_worker_uses_the_config_modules_prefetch_and_events(
    processes: Processes,
) -> None:
    concurrency = 2
    worker = processes.worker(
        "prefetch", concurrency, env={"CELERY_CONFIG_MODULE": PREFETCH_CONFIG}
    )
    with _client_app(
        "tests.acceptance.celeryconfig_test", processes.env["CELERY_BROKER_URL"]
    ) as app:

        def reply(command: str, **arguments: Any) -> dict[str, Any] | None:
            assert worker.poll() is None, processes.log_of(worker)
            answers = getattr(app.control.inspect(timeout=1), command)(**arguments) or {}
            ours = [value for node, value in answers.items() if node.startswith("prefetch@")]
            return ours[0] if ours else None

        conf = wait_until(
            lambda: reply("conf", with_defaults=True),
            60,
            "the worker to answer inspect conf",
            interval=0.5,
        )
        stats = wait_until(lambda: reply("stats"), 30, "the worker to answer inspect stats")
    assert conf["worker_prefetch_multiplier"] == 4
    assert conf["worker_send_task_events"] is True
    assert stats["prefetch_count"] == concurrency * 4
    assert stats["pool"]["max-concurrency"] == concurrency
    assert ".> task events: ON" in processes.log_of(worker)
