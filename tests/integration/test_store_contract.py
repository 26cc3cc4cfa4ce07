"""One contract suite for ``worker_bridge.store.base.Store``, run on PostgreSQL and on SQLite.

Every test takes ``contract_bridge``, parametrized over both databases, and
checks the behaviour that ``Store``'s docstrings promise, by reading the rows
back and comparing them whole (every column) with what the contract says they
must hold. A test that passes on one database and fails on the other points
at the implementation that breaks the contract, not at the test.

Rows in a given state are written straight into the table (``_put``); every
operation gets a fixed, timezone-aware ``now``. Transactions are handled as a
caller would: ``bridge.engine.begin()`` around writes of several statements,
``bridge.autocommit.begin()`` around the single-statement ones (claim,
heartbeat, finish, outcome).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import Engine, create_mock_engine, select

from worker_bridge.bridge import BridgeApp
from worker_bridge.errors import ConfigurationError
from worker_bridge.job import Job, JobState, NewJob
from worker_bridge.outcome import FollowUpReason, Outcome, decide_outcome
from worker_bridge.settings import Settings
from worker_bridge.store import (
    JobStats,
    JobSummary,
    Lineage,
    PostgreSQLStore,
    Recovered,
    SQLiteStore,
    Store,
    WrittenOutcome,
    store_for,
)
from worker_bridge.store.schema import (
    LOST_HEARTBEAT,
    LOST_MESSAGE,
    STALE_START,
    all_columns,
    jobs_table,
)

DATABASES = ["postgresql", "sqlite"]
STORE_CLASSES: dict[str, type[Store]] = {"postgresql": PostgreSQLStore, "sqlite": SQLiteStore}

#: The ``now`` every operation is given.
NOW = datetime(2030, 3, 1, 12, 2, tzinfo=UTC)
#: When the rows written by ``_put`` were created (and last changed).
CREATED = datetime(2030, 3, 1, 9, 0, tzinfo=UTC)
STALE_BEFORE = NOW - timedelta(hours=1)
HEARTBEAT_BEFORE = NOW - timedelta(seconds=60)
REDISPATCH_BEFORE = NOW - timedelta(seconds=60)
FAILED_BEFORE = NOW - timedelta(days=7)
WORKER = "worker-host:4242"
MAX_RESULT_BYTES = 1024 * 1024
HAND_REASON = "Cancelled by hand."

# The texts the contract fixes (store/schema.py), spelled out.
DISPATCHED_NOT_STARTED = "dispatched but not started"
STARTED_TOO_LONG_AGO = "started longer than stale_after ago"
HEARTBEAT_TOO_OLD = "heartbeat older than heartbeat_timeout"
ABSENT_ROW = "the row does not exist (removed, or a forged message)"
OUTDATED_TOKEN = "the message is outdated: the row was sent again under another task id"
ALREADY_RUNNING = "the row is already running"


# --- the two databases ---------------------------------------------------------------


@pytest.fixture(params=DATABASES)
def contract_bridge(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BridgeApp]:
    """A bridge on an empty ``worker_jobs``: the test run's PostgreSQL, or a fresh SQLite file."""
    if request.param == "postgresql":
        yield cast(BridgeApp, request.getfixturevalue("bridge"))
        return
    bridge = BridgeApp.from_settings(
        Settings(
            database_url=f"sqlite:///{tmp_path / 'contract.sqlite3'}",
            jobs_package="tests.testjobs",
        )
    )
    bridge.store.ensure_schema(bridge.engine)
    try:
        yield bridge
    finally:
        bridge.dispose()


# --- rows in a given state ----------------------------------------------------------


def _put(bridge: BridgeApp, **values: Any) -> Job:
    """Insert one row as given (an echo job of user 1, due a minute ago, by default)."""
    row: dict[str, Any] = {
        "type": "echo",
        "user_id": 1,
        "data": {},
        "due": NOW - timedelta(minutes=1),
        "created_at": CREATED,
        "updated_at": CREATED,
    }
    row.update(values)
    with bridge.engine.begin() as connection:
        written = connection.execute(
            jobs_table.insert().values(**row).returning(*all_columns)
        ).one()
    return Job.from_row(written)


def _dispatched(token: str, *, at: datetime = NOW - timedelta(seconds=30)) -> dict[str, Any]:
    return {"dispatched_at": at, "task_id": token}


def _running(
    token: str,
    *,
    started: datetime = NOW - timedelta(minutes=5),
    heartbeat: datetime | None = NOW - timedelta(seconds=5),
    attempts: int = 1,
) -> dict[str, Any]:
    return {
        "dispatched_at": started - timedelta(seconds=1),
        "task_id": token,
        "started": started,
        "heartbeat": heartbeat,
        "worker": WORKER,
        "attempts": attempts,
    }


def _succeeded(
    *, finished: datetime = NOW - timedelta(hours=2), remove_at: datetime | None = None
) -> dict[str, Any]:
    return {
        "dispatched_at": finished - timedelta(minutes=2),
        "task_id": "t-succeeded",
        "started": finished - timedelta(minutes=1),
        "finished": finished,
        "success": True,
        "result": {"ok": True},
        "remove_at": remove_at,
        "worker": WORKER,
        "attempts": 1,
    }


def _failed(*, finished: datetime = NOW - timedelta(hours=2)) -> dict[str, Any]:
    return {
        "dispatched_at": finished - timedelta(minutes=2),
        "task_id": "t-failed",
        "started": finished - timedelta(minutes=1),
        "finished": finished,
        "success": False,
        "result": {"error": "boom", "exception": "RuntimeError", "traceback": None},
        "worker": WORKER,
        "attempts": 1,
    }


def _cancelled(*, finished: datetime = NOW - timedelta(hours=2)) -> dict[str, Any]:
    return {
        "started": finished,
        "finished": finished,
        "success": False,
        "result": {"error": HAND_REASON, "cancelled": True, "cancelled_by": None},
    }


#: Live rows by state, for the tests that take each in turn.
LIVE_STATES: dict[str, dict[str, Any]] = {
    "pending": {},
    "dispatched": _dispatched("t-live"),
    "running": _running("t-live"),
    "stale running": _running("t-live", started=STALE_BEFORE - timedelta(minutes=1)),
}
FINISHED_STATES: dict[str, dict[str, Any]] = {
    "succeeded": _succeeded(),
    "failed": _failed(),
    "cancelled": _cancelled(),
}


def _get(bridge: BridgeApp, job_id: int) -> Job | None:
    with bridge.engine.connect() as connection:
        return bridge.store.get_job(connection, job_id)


def _rows(bridge: BridgeApp) -> list[Job]:
    """Every row, in id order."""
    with bridge.engine.connect() as connection:
        rows = connection.execute(select(*all_columns).order_by(jobs_table.c.id))
        return [Job.from_row(row) for row in rows]


def _fields(value: Any) -> Any:
    """A job, or a list of jobs, as one flat dict of its columns, for comparisons.

    ``Job``'s repr names only a few fields; flat dicts make a failed assertion
    name the very column that differs (``"[2] task_id"``: the third job's).
    Other values pass unchanged.
    """
    if isinstance(value, Job):
        return dataclasses.asdict(value)
    if isinstance(value, list) and all(isinstance(item, Job) for item in value):
        flat: dict[str, Any] = {"number of jobs": len(value)}
        for index, job in enumerate(value):
            flat.update({f"[{index}] {name}": v for name, v in dataclasses.asdict(job).items()})
        return flat
    return value


def _new(**overrides: Any) -> NewJob:
    values: dict[str, Any] = {
        "type": "echo",
        "user_id": 1,
        "data": {"n": 1},
        "due": NOW + timedelta(minutes=1),
    }
    values.update(overrides)
    return NewJob(**values)


def _inserted(job_id: int, job: NewJob, now: datetime = NOW) -> Job:
    """The row an insert of ``job`` at ``now`` must leave."""
    return Job(id=job_id, **dataclasses.asdict(job), created_at=now, updated_at=now)


def _superseded(old: Job, by: int, now: datetime = NOW) -> Job:
    """``old`` as the supersede rule leaves it, cancelled by job ``by``."""
    return dataclasses.replace(
        old,
        started=now,
        finished=now,
        success=False,
        result={
            "error": f"Cancelled: superseded by job {by} of the same type and user.",
            "cancelled": True,
            "cancelled_by": by,
        },
        task_id=None,
        heartbeat=None,
        updated_at=now,
    )


def _reset(old: Job, now: datetime = NOW) -> Job:
    """``old`` as recovery leaves it when it puts the row back to pending."""
    return dataclasses.replace(
        old,
        started=None,
        dispatched_at=None,
        task_id=None,
        worker=None,
        heartbeat=None,
        recoveries=old.recoveries + 1,
        updated_at=now,
    )


def _summary(job: Job) -> JobSummary:
    return JobSummary(
        id=job.id,
        type=job.type,
        user_id=job.user_id,
        status=job.state,
        due=job.due,
        started=job.started,
        finished=job.finished,
        attempts=job.attempts,
        cron_schedule=job.cron_schedule,
        rescheduled_from_job=job.rescheduled_from_job,
    )


def _outcome(job: Job, **run: Any) -> Outcome:
    return decide_outcome(job, now=NOW, timezone="UTC", max_result_bytes=MAX_RESULT_BYTES, **run)


# --- choosing the store ---------------------------------------------------------------


def test_store_for_picks_the_store_of_the_database(contract_bridge: BridgeApp) -> None:
    name = contract_bridge.engine.dialect.name
    expected = STORE_CLASSES[name]
    url = contract_bridge.engine.url.render_as_string(hide_password=False)
    assert type(store_for(contract_bridge.engine)) is expected
    assert type(store_for(contract_bridge.autocommit)) is expected
    assert type(store_for(url)) is expected
    with contract_bridge.engine.connect() as connection:
        assert type(store_for(connection)) is expected
    assert type(contract_bridge.store) is expected
    assert contract_bridge.store is store_for(contract_bridge.engine)
    assert contract_bridge.store.dialect == name


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+psycopg://user@db.example/jobs", PostgreSQLStore),
        ("postgresql://user@db.example/jobs", PostgreSQLStore),
        ("sqlite:///worker_bridge.sqlite3", SQLiteStore),
        ("sqlite://", SQLiteStore),
    ],
)
def test_store_for_reads_the_database_from_a_url(url: str, expected: type[Store]) -> None:
    assert type(store_for(url)) is expected


@pytest.mark.parametrize(
    "url", ["mysql+pymysql://user@db.example/jobs", "mssql+pyodbc://user@db.example/jobs"]
)
def test_store_for_refuses_another_database(url: str) -> None:
    name = url.split("+", maxsplit=1)[0]
    with pytest.raises(ConfigurationError, match=f"PostgreSQL or SQLite, not '{name}'"):
        store_for(url)
    engine = cast(Engine, create_mock_engine(url, lambda *_args, **_kw: None))
    with pytest.raises(ConfigurationError, match=f"PostgreSQL or SQLite, not '{name}'"):
        store_for(engine)


def test_store_for_refuses_what_is_not_a_url() -> None:
    with pytest.raises(ConfigurationError, match="not a SQLAlchemy URL"):
        store_for("not a database url")


# --- reading --------------------------------------------------------------------------


def test_get_job_and_get_jobs(contract_bridge: BridgeApp) -> None:
    first = _put(contract_bridge, user_id=1)
    second = _put(contract_bridge, user_id=2, **_running("t"))
    third = _put(contract_bridge, user_id=3, **_succeeded())
    store = contract_bridge.store
    with contract_bridge.engine.connect() as connection:
        assert store.get_job(connection, second.id) == second
        assert store.get_job(connection, third.id + 100) is None
        assert store.get_jobs(connection, [third.id, first.id, third.id + 100]) == [first, third]
        assert store.get_jobs(connection, []) == []


# --- supersede_and_insert -------------------------------------------------------------


def test_supersede_and_insert_cancels_the_pending_rows_of_its_pair(
    contract_bridge: BridgeApp,
) -> None:
    pending = _put(contract_bridge, data={"old": True})
    stale = _put(
        contract_bridge, **_running("t-stale", started=STALE_BEFORE - timedelta(seconds=1))
    )
    # Started exactly at stale_before is not "before" it.
    recent = _put(contract_bridge, **_running("t-recent", started=STALE_BEFORE))
    finished = _put(contract_bridge, **_succeeded())
    other_user = _put(contract_bridge, user_id=2)
    other_type = _put(contract_bridge, type="other")
    new = _new(data={"n": 2}, remove_delay=1_000)
    with contract_bridge.engine.begin() as connection:
        job = contract_bridge.store.supersede_and_insert(
            connection, new, now=NOW, stale_before=STALE_BEFORE
        )
    assert _fields(job) == _fields(_inserted(job.id, new))
    assert job.state is JobState.PENDING
    assert _fields(_rows(contract_bridge)) == _fields(
        [
            _superseded(pending, job.id),
            _superseded(stale, job.id),
            recent,
            finished,
            other_user,
            other_type,
            job,
        ]
    )


def test_supersede_and_insert_cancels_a_dispatched_row_and_clears_its_token(
    contract_bridge: BridgeApp,
) -> None:
    sent = _put(contract_bridge, **_dispatched("t-sent"))
    new = _new()
    with contract_bridge.engine.begin() as connection:
        job = contract_bridge.store.supersede_and_insert(
            connection, new, now=NOW, stale_before=STALE_BEFORE
        )
    cancelled = _superseded(sent, job.id)
    assert cancelled.task_id is None
    assert cancelled.dispatched_at == sent.dispatched_at
    assert _fields(_rows(contract_bridge)) == _fields([cancelled, job])
    with contract_bridge.autocommit.begin() as connection:
        claimed = contract_bridge.store.claim_job(
            connection, sent.id, "t-sent", worker=WORKER, now=NOW
        )
    assert claimed is None
    assert _fields(_rows(contract_bridge)) == _fields([cancelled, job])


def test_supersede_and_insert_without_serialize_on_an_autocommit_connection(
    contract_bridge: BridgeApp,
) -> None:
    pending = _put(contract_bridge)
    new = _new(cron_schedule="*/5 * * * *")
    with contract_bridge.autocommit.begin() as connection:
        job = contract_bridge.store.supersede_and_insert(
            connection, new, now=NOW, stale_before=STALE_BEFORE, serialize=False
        )
    assert _fields(job) == _fields(_inserted(job.id, new))
    assert _fields(_rows(contract_bridge)) == _fields([_superseded(pending, job.id), job])
    # And again: the row just inserted is now the pending one.
    again = _new(data={"n": 2})
    with contract_bridge.autocommit.begin() as connection:
        second = contract_bridge.store.supersede_and_insert(
            connection, again, now=NOW, stale_before=STALE_BEFORE, serialize=False
        )
    assert _fields(_rows(contract_bridge)) == _fields(
        [
            _superseded(pending, job.id),
            _superseded(job, second.id),
            _inserted(second.id, again),
        ]
    )


def test_supersede_and_insert_writes_every_column_of_the_new_job(
    contract_bridge: BridgeApp,
) -> None:
    parent = _put(contract_bridge, **_failed())
    new = NewJob(
        type="other",
        user_id=7,
        data={"nested": {"list": [1, 2.5, "three", None, True]}},
        due=datetime(2030, 3, 1, 14, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2))),
        cron_schedule="0 * * * *",
        auto_reschedule_on_failure=True,
        auto_reschedule_on_failure_delay=45_000,
        remove_delay=86_400_000,
        rescheduled_from_job=parent.id,
    )
    with contract_bridge.engine.begin() as connection:
        job = contract_bridge.store.supersede_and_insert(
            connection, new, now=NOW, stale_before=STALE_BEFORE
        )
    assert _fields(job) == _fields(_inserted(job.id, new))
    assert job.due == datetime(2030, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    assert job.due.tzinfo is UTC
    assert _fields(_rows(contract_bridge)) == _fields([parent, job])


def test_writes_in_a_rolled_back_transaction_leave_nothing(contract_bridge: BridgeApp) -> None:
    pending = _put(contract_bridge)
    running = _put(contract_bridge, user_id=2, **_running("t"))
    before = _rows(contract_bridge)
    store = contract_bridge.store
    with (
        pytest.raises(RuntimeError, match="roll back"),
        contract_bridge.engine.begin() as connection,
    ):
        job = store.supersede_and_insert(connection, _new(), now=NOW, stale_before=STALE_BEFORE)
        assert store.cancel_job(connection, running.id, now=NOW, reason=HAND_REASON)
        assert _fields(store.get_job(connection, pending.id)) == _fields(
            _superseded(pending, job.id)
        )
        raise RuntimeError("roll back")
    assert _fields(_rows(contract_bridge)) == _fields(before)


# --- supersede_and_insert_many --------------------------------------------------------


def test_supersede_and_insert_many_is_supersede_and_insert_in_turn(
    contract_bridge: BridgeApp,
) -> None:
    pending_1 = _put(contract_bridge, user_id=1)
    running_1 = _put(contract_bridge, user_id=1, **_running("t-1"))
    stale_2 = _put(
        contract_bridge, user_id=2, **_running("t-2", started=STALE_BEFORE - timedelta(minutes=1))
    )
    pending_3 = _put(contract_bridge, user_id=3)
    batch = [
        _new(user_id=1, data={"n": 1}),
        _new(user_id=2, data={"n": 2}),
        _new(user_id=1, data={"n": 3}, due=NOW + timedelta(minutes=3)),
        _new(type="other", user_id=1, data={"n": 4}),
        _new(user_id=1, data={"n": 5}, due=NOW - timedelta(minutes=3)),
    ]
    with contract_bridge.engine.begin() as connection:
        jobs = contract_bridge.store.supersede_and_insert_many(
            connection, batch, now=NOW, stale_before=STALE_BEFORE
        )
    # In the order of the input, with ids drawn in that order.
    assert [(j.type, j.user_id, j.data, j.due) for j in jobs] == [
        (n.type, n.user_id, n.data, n.due) for n in batch
    ]
    ids = [j.id for j in jobs]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert min(ids) > pending_3.id
    a, b, c, d, e = (_inserted(job.id, new) for job, new in zip(jobs, batch, strict=True))
    # The rows come back as stored: the batch's jobs superseded by a later one of their
    # pair are cancelled already, on both databases.
    stored = {row.id: row for row in _rows(contract_bridge)}
    assert _fields(jobs) == _fields([stored[job.id] for job in jobs])
    assert _fields(_rows(contract_bridge)) == _fields(
        [
            _superseded(pending_1, a.id),
            running_1,
            _superseded(stale_2, b.id),
            pending_3,
            _superseded(a, c.id),
            b,
            _superseded(c, e.id),
            d,
            e,
        ]
    )
    # The last job of each pair is returned as written.
    assert [jobs[1], jobs[3], jobs[4]] == [b, d, e]


def test_supersede_and_insert_many_writes_every_column_of_each_job(
    contract_bridge: BridgeApp,
) -> None:
    parent = _put(contract_bridge, user_id=9, **_failed())
    batch = [
        NewJob(
            type="other",
            user_id=7,
            data={"nested": {"list": [1, 2.5, "three", None, True]}},
            due=datetime(2030, 3, 1, 14, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2))),
            cron_schedule="0 * * * *",
            auto_reschedule_on_failure=True,
            auto_reschedule_on_failure_delay=45_000,
            remove_delay=86_400_000,
            rescheduled_from_job=parent.id,
        ),
        _new(user_id=8),
    ]
    with contract_bridge.engine.begin() as connection:
        jobs = contract_bridge.store.supersede_and_insert_many(
            connection, batch, now=NOW, stale_before=STALE_BEFORE
        )
    expected = [_inserted(job.id, new) for job, new in zip(jobs, batch, strict=True)]
    assert _fields(jobs) == _fields(expected)
    assert _fields(_rows(contract_bridge)) == _fields([parent, *expected])


def test_supersede_and_insert_many_of_nothing_writes_nothing(contract_bridge: BridgeApp) -> None:
    pending = _put(contract_bridge)
    with contract_bridge.engine.begin() as connection:
        jobs = contract_bridge.store.supersede_and_insert_many(
            connection, [], now=NOW, stale_before=STALE_BEFORE
        )
    assert jobs == []
    assert _fields(_rows(contract_bridge)) == _fields([pending])


# --- insert_unless_live ---------------------------------------------------------------


def test_insert_unless_live_inserts_when_the_pair_has_no_live_row(
    contract_bridge: BridgeApp,
) -> None:
    done = [_put(contract_bridge, **state) for state in FINISHED_STATES.values()]
    other_user = _put(contract_bridge, user_id=2, **_running("t"))
    other_type = _put(contract_bridge, type="other")
    new = _new(cron_schedule="* * * * *", auto_reschedule_on_failure=True)
    with contract_bridge.engine.begin() as connection:
        job = contract_bridge.store.insert_unless_live(connection, new, now=NOW)
    assert job is not None
    assert _fields(job) == _fields(_inserted(job.id, new))
    assert _fields(_rows(contract_bridge)) == _fields([*done, other_user, other_type, job])


@pytest.mark.parametrize("state", LIVE_STATES, ids=list(LIVE_STATES))
def test_insert_unless_live_writes_nothing_beside_a_live_row(
    contract_bridge: BridgeApp, state: str
) -> None:
    _put(contract_bridge, **FINISHED_STATES["succeeded"])
    _put(contract_bridge, **LIVE_STATES[state])
    before = _rows(contract_bridge)
    with contract_bridge.engine.begin() as connection:
        job = contract_bridge.store.insert_unless_live(connection, _new(), now=NOW)
    assert job is None
    assert _fields(_rows(contract_bridge)) == _fields(before)


# --- cancel_job -----------------------------------------------------------------------


@pytest.mark.parametrize("state", LIVE_STATES, ids=list(LIVE_STATES))
def test_cancel_job_cancels_a_live_row(contract_bridge: BridgeApp, state: str) -> None:
    row = _put(contract_bridge, **LIVE_STATES[state])
    other = _put(contract_bridge, user_id=2, **_dispatched("t-other"))
    store = contract_bridge.store
    with contract_bridge.autocommit.begin() as connection:
        assert store.cancel_job(connection, row.id, now=NOW, reason="no longer wanted") is True
    expected = dataclasses.replace(
        row,
        started=row.started if row.started is not None else NOW,
        finished=NOW,
        success=False,
        result={"error": "no longer wanted", "cancelled": True, "cancelled_by": None},
        task_id=None,
        heartbeat=None,
        updated_at=NOW,
    )
    assert _fields(_rows(contract_bridge)) == _fields([expected, other])
    assert expected.state is JobState.CANCELLED
    # The attempt that carried the token may neither start nor finish now.
    with contract_bridge.autocommit.begin() as connection:
        assert store.claim_job(connection, row.id, "t-live", worker=WORKER, now=NOW) is None
        assert not store.finish_job(
            connection, row.id, "t-live", now=NOW, success=True, result=1, remove_at=NOW
        )
    with contract_bridge.engine.connect() as connection:
        assert (
            store.describe_refusal(connection, row.id, "t-live") == "the row is already cancelled"
        )
    assert _fields(_rows(contract_bridge)) == _fields([expected, other])


@pytest.mark.parametrize("state", FINISHED_STATES, ids=list(FINISHED_STATES))
def test_cancel_job_leaves_a_finished_row_alone(contract_bridge: BridgeApp, state: str) -> None:
    row = _put(contract_bridge, **FINISHED_STATES[state])
    with contract_bridge.autocommit.begin() as connection:
        assert contract_bridge.store.cancel_job(connection, row.id, now=NOW, reason="x") is False
        assert (
            contract_bridge.store.cancel_job(connection, row.id + 1, now=NOW, reason="x") is False
        )
    assert _fields(_rows(contract_bridge)) == _fields([row])


# --- claim_due_jobs -------------------------------------------------------------------


def test_claim_due_jobs_takes_due_unsent_rows_in_due_order(contract_bridge: BridgeApp) -> None:
    a = _put(contract_bridge, user_id=1, due=NOW - timedelta(minutes=3))
    b = _put(contract_bridge, user_id=2, due=NOW - timedelta(minutes=1))
    c = _put(contract_bridge, user_id=3, due=NOW - timedelta(minutes=2), recoveries=1)
    d = _put(contract_bridge, user_id=4, due=NOW)
    not_due = _put(contract_bridge, user_id=5, due=NOW + timedelta(seconds=1))
    old = NOW - timedelta(minutes=10)
    sent = _put(contract_bridge, user_id=6, due=old, **_dispatched("t-sent"))
    running = _put(contract_bridge, user_id=7, due=old, **_running("t-running"))
    done = _put(contract_bridge, user_id=8, due=old, **_succeeded())
    cancelled = _put(contract_bridge, user_id=9, due=old, **_cancelled())
    store = contract_bridge.store

    with contract_bridge.engine.begin() as connection:
        claimed = store.claim_due_jobs(connection, now=NOW, limit=3)
    assert [job.id for job in claimed] == [a.id, c.id, b.id]
    tokens = [job.task_id for job in claimed]
    assert all(isinstance(token, str) and token for token in tokens)
    assert len(set(tokens)) == 3
    assert not {"t-sent", "t-running", "t-succeeded"} & set(tokens)
    expected = [
        dataclasses.replace(row, dispatched_at=NOW, task_id=job.task_id, updated_at=NOW)
        for row, job in zip([a, c, b], claimed, strict=True)
    ]
    assert _fields(claimed) == _fields(expected)
    assert all(job.state is JobState.DISPATCHED for job in claimed)
    ea, ec, eb = expected
    assert _fields(_rows(contract_bridge)) == _fields(
        [ea, eb, ec, d, not_due, sent, running, done, cancelled]
    )

    later = NOW + timedelta(seconds=5)
    with contract_bridge.engine.begin() as connection:
        rest = store.claim_due_jobs(connection, now=later, limit=10)
    assert [job.id for job in rest] == [d.id, not_due.id]
    assert len({*tokens, *(job.task_id for job in rest)}) == 5
    assert _fields(rest) == _fields(
        [
            dataclasses.replace(row, dispatched_at=later, task_id=job.task_id, updated_at=later)
            for row, job in zip([d, not_due], rest, strict=True)
        ]
    )
    with contract_bridge.engine.begin() as connection:
        assert store.claim_due_jobs(connection, now=later, limit=10) == []


# --- claim_job and describe_refusal ---------------------------------------------------


def test_claim_job_applies_once_with_the_current_token(contract_bridge: BridgeApp) -> None:
    row = _put(contract_bridge, user_id=1, attempts=2, recoveries=2)
    other = _put(contract_bridge, user_id=2)
    store = contract_bridge.store
    with contract_bridge.engine.begin() as connection:
        (sent,) = store.claim_due_jobs(connection, now=NOW, limit=1)
    token = sent.task_id
    assert token is not None
    refused_token = f"{token}-not"
    start = NOW + timedelta(seconds=2)

    with contract_bridge.autocommit.begin() as connection:
        assert store.claim_job(connection, row.id, refused_token, worker=WORKER, now=start) is None
    assert _fields(_rows(contract_bridge)) == _fields([sent, other])
    with contract_bridge.engine.connect() as connection:
        assert store.describe_refusal(connection, row.id, refused_token) == OUTDATED_TOKEN

    with contract_bridge.autocommit.begin() as connection:
        claimed = store.claim_job(connection, row.id, token, worker=WORKER, now=start)
    expected = dataclasses.replace(
        sent, started=start, heartbeat=start, worker=WORKER, attempts=3, updated_at=start
    )
    assert _fields(claimed) == _fields(expected)
    assert claimed.state is JobState.RUNNING
    assert _fields(_rows(contract_bridge)) == _fields([expected, other])

    with contract_bridge.autocommit.begin() as connection:
        again = store.claim_job(
            connection, row.id, token, worker="another:1", now=start + timedelta(seconds=1)
        )
    assert again is None
    assert _fields(_rows(contract_bridge)) == _fields([expected, other])
    with contract_bridge.engine.connect() as connection:
        assert store.describe_refusal(connection, row.id, token) == ALREADY_RUNNING
        assert store.describe_refusal(connection, row.id, refused_token) == OUTDATED_TOKEN


def test_claim_job_refuses_an_unsent_or_absent_row(contract_bridge: BridgeApp) -> None:
    pending = _put(contract_bridge)
    store = contract_bridge.store
    with contract_bridge.autocommit.begin() as connection:
        assert store.claim_job(connection, pending.id, "t", worker=WORKER, now=NOW) is None
        assert store.claim_job(connection, pending.id + 1, "t", worker=WORKER, now=NOW) is None
    assert _fields(_rows(contract_bridge)) == _fields([pending])
    with contract_bridge.engine.connect() as connection:
        assert store.describe_refusal(connection, pending.id + 1, "t") == ABSENT_ROW
        assert store.describe_refusal(connection, pending.id, "t") == OUTDATED_TOKEN


@pytest.mark.parametrize("state", FINISHED_STATES, ids=list(FINISHED_STATES))
def test_claim_job_refuses_a_finished_row(contract_bridge: BridgeApp, state: str) -> None:
    row = _put(contract_bridge, **FINISHED_STATES[state])
    token = row.task_id or "t-any"
    store = contract_bridge.store
    with contract_bridge.autocommit.begin() as connection:
        assert store.claim_job(connection, row.id, token, worker=WORKER, now=NOW) is None
    assert _fields(_rows(contract_bridge)) == _fields([row])
    with contract_bridge.engine.connect() as connection:
        assert store.describe_refusal(connection, row.id, token) == f"the row is already {state}"


def test_claim_job_refuses_a_row_cancelled_after_dispatch(contract_bridge: BridgeApp) -> None:
    row = _put(contract_bridge, **_dispatched("t-sent"))
    store = contract_bridge.store
    with contract_bridge.autocommit.begin() as connection:
        assert store.cancel_job(connection, row.id, now=NOW, reason=HAND_REASON)
    cancelled = _get(contract_bridge, row.id)
    with contract_bridge.autocommit.begin() as connection:
        assert store.claim_job(connection, row.id, "t-sent", worker=WORKER, now=NOW) is None
    assert _fields(_rows(contract_bridge)) == _fields([cancelled])
    with contract_bridge.engine.connect() as connection:
        assert (
            store.describe_refusal(connection, row.id, "t-sent") == "the row is already cancelled"
        )


# --- refresh_heartbeats ---------------------------------------------------------------


def test_refresh_heartbeats_touches_only_the_attempts_still_current(
    contract_bridge: BridgeApp,
) -> None:
    first = _put(
        contract_bridge, user_id=1, **_running("t-1", heartbeat=NOW - timedelta(minutes=1))
    )
    second = _put(contract_bridge, user_id=2, **_running("t-2", heartbeat=None))
    replaced = _put(contract_bridge, user_id=3, **_running("t-3-new"))
    done = _put(contract_bridge, user_id=4, **_succeeded())
    cancelled = _put(contract_bridge, user_id=5, **_running("t-5"))
    store = contract_bridge.store
    with contract_bridge.autocommit.begin() as connection:
        assert store.cancel_job(connection, cancelled.id, now=NOW, reason=HAND_REASON)
    cancelled = cast(Job, _get(contract_bridge, cancelled.id))
    with contract_bridge.autocommit.begin() as connection:
        alive = store.refresh_heartbeats(
            connection,
            [
                (first.id, "t-1"),
                (second.id, "t-2"),
                (replaced.id, "t-3-old"),
                (done.id, "t-succeeded"),
                (cancelled.id, "t-5"),
                (done.id + 100, "t-gone"),
            ],
            now=NOW,
        )
    assert alive == {first.id, second.id}
    assert _fields(_rows(contract_bridge)) == _fields(
        [
            dataclasses.replace(first, heartbeat=NOW),
            dataclasses.replace(second, heartbeat=NOW),
            replaced,
            done,
            cancelled,
        ]
    )
    with contract_bridge.autocommit.begin() as connection:
        assert store.refresh_heartbeats(connection, [], now=NOW) == set()


def test_refresh_heartbeats_writes_back_a_lost_claim(contract_bridge: BridgeApp) -> None:
    # The claim was lost (a server crash): the row shows the token but no start.
    lost = _put(contract_bridge, **_dispatched("t-lost", at=NOW - timedelta(minutes=10)))
    store = contract_bridge.store
    with contract_bridge.autocommit.begin() as connection:
        assert store.refresh_heartbeats(connection, [(lost.id, "t-lost")], now=NOW) == {lost.id}
    written = dataclasses.replace(lost, started=NOW, heartbeat=NOW)
    assert _fields(_rows(contract_bridge)) == _fields([written])
    assert written.state is JobState.RUNNING
    # Recovery no longer takes it for a lost message.
    with contract_bridge.engine.begin() as connection:
        recovered = store.recover_lost_jobs(
            connection,
            now=NOW + timedelta(seconds=1),
            stale_before=STALE_BEFORE,
            heartbeat_before=HEARTBEAT_BEFORE,
            redispatch_before=NOW,
        )
    assert recovered == []
    # And its attempt finishes normally.
    with contract_bridge.autocommit.begin() as connection:
        assert store.finish_job(
            connection, lost.id, "t-lost", now=NOW, success=True, result=None, remove_at=NOW
        )


# --- finish_job -----------------------------------------------------------------------


def test_finish_job_writes_the_end_of_the_current_attempt_once(contract_bridge: BridgeApp) -> None:
    row = _put(contract_bridge, **_running("t-1"))
    other = _put(contract_bridge, user_id=2, **_running("t-2"))
    store = contract_bridge.store
    remove_at = NOW + timedelta(hours=1)
    with contract_bridge.autocommit.begin() as connection:
        assert store.finish_job(
            connection, row.id, "t-1", now=NOW, success=True, result={"answer": [42]},
            remove_at=remove_at,
        )  # fmt: skip
    expected = dataclasses.replace(
        row,
        finished=NOW,
        success=True,
        result={"answer": [42]},
        remove_at=remove_at,
        heartbeat=None,
        updated_at=NOW,
    )
    assert _fields(_rows(contract_bridge)) == _fields([expected, other])
    assert expected.state is JobState.SUCCEEDED
    with contract_bridge.autocommit.begin() as connection:
        assert not store.finish_job(
            connection, row.id, "t-1", now=NOW + timedelta(seconds=1), success=False,
            result={"error": "again"}, remove_at=None,
        )  # fmt: skip
    assert _fields(_rows(contract_bridge)) == _fields([expected, other])


def test_finish_job_writes_a_failure(contract_bridge: BridgeApp) -> None:
    row = _put(contract_bridge, **_running("t-1"))
    error = {"error": "boom", "exception": "RuntimeError", "traceback": "Traceback ..."}
    with contract_bridge.autocommit.begin() as connection:
        assert contract_bridge.store.finish_job(
            connection, row.id, "t-1", now=NOW, success=False, result=error, remove_at=None
        )
    expected = dataclasses.replace(
        row, finished=NOW, success=False, result=error, heartbeat=None, updated_at=NOW
    )
    assert _fields(_rows(contract_bridge)) == _fields([expected])
    assert expected.state is JobState.FAILED


def test_finish_job_refuses_an_attempt_that_is_not_current(contract_bridge: BridgeApp) -> None:
    replaced = _put(contract_bridge, user_id=1, **_running("t-new"))
    unclaimed = _put(contract_bridge, user_id=2, **_dispatched("t-sent"))
    done = _put(contract_bridge, user_id=3, **_succeeded())
    before = _rows(contract_bridge)
    store = contract_bridge.store
    with contract_bridge.autocommit.begin() as connection:
        for job_id, token in [
            (replaced.id, "t-old"),
            (unclaimed.id, "t-sent"),
            (done.id, "t-succeeded"),
            (done.id + 100, "t-gone"),
        ]:
            assert not store.finish_job(
                connection, job_id, token, now=NOW, success=True, result=1, remove_at=NOW
            ), job_id
    assert _fields(_rows(contract_bridge)) == _fields(before)


# --- write_outcome --------------------------------------------------------------------


def test_write_outcome_without_a_follow_up(contract_bridge: BridgeApp) -> None:
    job = _put(contract_bridge, remove_delay=90_000, **_running("t-1"))
    pending_other = _put(contract_bridge, user_id=2)
    outcome = _outcome(job, returned={"answer": 42})
    assert outcome == Outcome(
        success=True, result={"answer": 42}, remove_at=NOW + timedelta(seconds=90)
    )
    store = contract_bridge.store
    with contract_bridge.autocommit.begin() as connection:
        written = store.write_outcome(
            connection, job, "t-1", outcome, now=NOW, stale_before=STALE_BEFORE
        )
    assert written == WrittenOutcome(True, None)
    expected = dataclasses.replace(
        job,
        finished=NOW,
        success=True,
        result={"answer": 42},
        remove_at=NOW + timedelta(seconds=90),
        heartbeat=None,
        updated_at=NOW,
    )
    assert _fields(_rows(contract_bridge)) == _fields([expected, pending_other])
    with contract_bridge.autocommit.begin() as connection:
        again = store.write_outcome(
            connection, job, "t-1", outcome, now=NOW, stale_before=STALE_BEFORE
        )
    assert again == WrittenOutcome(False, None)
    assert _fields(_rows(contract_bridge)) == _fields([expected, pending_other])


def test_write_outcome_with_a_retry(contract_bridge: BridgeApp) -> None:
    # Started before stale_before: the supersede rule would match it, but the
    # row being finished is ended with its outcome, never cancelled.
    job = _put(
        contract_bridge,
        data={"n": 7},
        auto_reschedule_on_failure=True,
        auto_reschedule_on_failure_delay=30_000,
        remove_delay=5_000,
        **_running("t-1", started=STALE_BEFORE - timedelta(minutes=5)),
    )
    sibling = _put(contract_bridge, data={"sibling": True})
    other_pair = _put(contract_bridge, user_id=2)
    outcome = _outcome(job, error=RuntimeError("boom"))
    assert outcome.follow_up_reason is FollowUpReason.RETRY
    assert outcome.success is False
    assert outcome.remove_at is None
    assert outcome.result["error"] == "boom"
    assert outcome.result["exception"] == "RuntimeError"
    store = contract_bridge.store
    with contract_bridge.autocommit.begin() as connection:
        written = store.write_outcome(
            connection, job, "t-1", outcome, now=NOW, stale_before=STALE_BEFORE
        )
    assert written.written is True
    follow_up = written.follow_up
    assert follow_up is not None
    assert _fields(follow_up) == _fields(
        Job(
            id=follow_up.id,
            type="echo",
            user_id=1,
            data={"n": 7},
            due=NOW + timedelta(seconds=30),
            auto_reschedule_on_failure=True,
            auto_reschedule_on_failure_delay=30_000,
            remove_delay=5_000,
            rescheduled_from_job=job.id,
            created_at=NOW,
            updated_at=NOW,
        )
    )
    finished = dataclasses.replace(
        job,
        finished=NOW,
        success=False,
        result=outcome.result,
        heartbeat=None,
        updated_at=NOW,
    )
    assert finished.state is JobState.FAILED
    assert _fields(_rows(contract_bridge)) == _fields(
        [
            finished,
            _superseded(sibling, follow_up.id),
            other_pair,
            follow_up,
        ]
    )
    # The same attempt's outcome a second time: refused, no second follow-up.
    with contract_bridge.autocommit.begin() as connection:
        again = store.write_outcome(
            connection, job, "t-1", outcome, now=NOW + timedelta(seconds=1),
            stale_before=STALE_BEFORE,
        )  # fmt: skip
    assert again == WrittenOutcome(False, None)
    assert _fields(_rows(contract_bridge)) == _fields(
        [
            finished,
            _superseded(sibling, follow_up.id),
            other_pair,
            follow_up,
        ]
    )


def test_write_outcome_with_the_next_cron_run(contract_bridge: BridgeApp) -> None:
    job = _put(
        contract_bridge,
        due=datetime(2030, 3, 1, 12, 0, tzinfo=UTC),
        cron_schedule="*/5 * * * *",
        data={"report": "daily"},
        remove_delay=60_000,
        **_running("t-1"),
    )
    stale_sibling = _put(
        contract_bridge, **_running("t-old", started=STALE_BEFORE - timedelta(seconds=1))
    )
    recent_sibling = _put(contract_bridge, **_running("t-recent"))
    outcome = _outcome(job, returned={"rows": 3})
    assert outcome.follow_up_reason is FollowUpReason.NEXT_RUN
    assert outcome.follow_up is not None
    assert outcome.follow_up.due == datetime(2030, 3, 1, 12, 5, tzinfo=UTC)
    with contract_bridge.autocommit.begin() as connection:
        written = contract_bridge.store.write_outcome(
            connection, job, "t-1", outcome, now=NOW, stale_before=STALE_BEFORE
        )
    assert written.written is True
    follow_up = written.follow_up
    assert follow_up is not None
    assert _fields(follow_up) == _fields(
        Job(
            id=follow_up.id,
            type="echo",
            user_id=1,
            data={"report": "daily"},
            due=datetime(2030, 3, 1, 12, 5, tzinfo=UTC),
            cron_schedule="*/5 * * * *",
            remove_delay=60_000,
            rescheduled_from_job=job.id,
            created_at=NOW,
            updated_at=NOW,
        )
    )
    assert _fields(_rows(contract_bridge)) == _fields(
        [
            dataclasses.replace(
                job,
                finished=NOW,
                success=True,
                result={"rows": 3},
                remove_at=NOW + timedelta(minutes=1),
                heartbeat=None,
                updated_at=NOW,
            ),
            _superseded(stale_sibling, follow_up.id),
            recent_sibling,
            follow_up,
        ]
    )


@pytest.mark.parametrize("with_follow_up", [True, False], ids=["retry", "no follow-up"])
def test_write_outcome_refuses_a_stale_attempt(
    contract_bridge: BridgeApp, with_follow_up: bool
) -> None:
    # The worker still holds the row as it claimed it; the row was sent again since.
    held = _put(contract_bridge, auto_reschedule_on_failure=with_follow_up, **_running("t-old"))
    with contract_bridge.engine.begin() as connection:
        connection.execute(
            jobs_table.update().where(jobs_table.c.id == held.id).values(task_id="t-new")
        )
    sibling = _put(contract_bridge)
    before = _rows(contract_bridge)
    outcome = _outcome(held, error=RuntimeError("late"))
    assert (outcome.follow_up is not None) is with_follow_up
    store = contract_bridge.store
    with contract_bridge.autocommit.begin() as connection:
        written = store.write_outcome(
            connection, held, "t-old", outcome, now=NOW, stale_before=STALE_BEFORE
        )
    assert written == WrittenOutcome(False, None)
    assert _fields(_rows(contract_bridge)) == _fields(before)
    assert _fields(_get(contract_bridge, sibling.id)) == _fields(sibling)


def test_write_outcome_in_a_transaction_is_part_of_it(contract_bridge: BridgeApp) -> None:
    job = _put(contract_bridge, auto_reschedule_on_failure=True, **_running("t-1"))
    sibling = _put(contract_bridge)
    before = _rows(contract_bridge)
    outcome = _outcome(job, error=RuntimeError("boom"))
    store = contract_bridge.store
    with (
        pytest.raises(RuntimeError, match="roll back"),
        contract_bridge.engine.begin() as connection,
    ):
        written = store.write_outcome(
            connection, job, "t-1", outcome, now=NOW, stale_before=STALE_BEFORE
        )
        assert written.written is True
        assert written.follow_up is not None
        assert _fields(store.get_job(connection, sibling.id)) == _fields(
            _superseded(sibling, written.follow_up.id)
        )
        raise RuntimeError("roll back")
    assert _fields(_rows(contract_bridge)) == _fields(before)
    with contract_bridge.engine.begin() as connection:
        written = store.write_outcome(
            connection, job, "t-1", outcome, now=NOW, stale_before=STALE_BEFORE
        )
    assert written.written is True
    assert written.follow_up is not None
    assert written.follow_up.rescheduled_from_job == job.id
    assert _fields([row.id for row in _rows(contract_bridge)]) == _fields(
        [job.id, sibling.id, written.follow_up.id]
    )


def test_an_attempt_from_schedule_to_follow_up(contract_bridge: BridgeApp) -> None:
    store = contract_bridge.store
    new = _new(due=NOW - timedelta(minutes=2), cron_schedule="*/5 * * * *")
    with contract_bridge.engine.begin() as connection:
        scheduled = store.supersede_and_insert(connection, new, now=NOW, stale_before=STALE_BEFORE)
    with contract_bridge.engine.begin() as connection:
        (sent,) = store.claim_due_jobs(connection, now=NOW, limit=10)
        assert store.count_in_flight(connection) == 1
    token = cast(str, sent.task_id)
    with contract_bridge.autocommit.begin() as connection:
        claimed = store.claim_job(connection, scheduled.id, token, worker=WORKER, now=NOW)
    assert claimed is not None
    with contract_bridge.autocommit.begin() as connection:
        assert store.refresh_heartbeats(connection, [(claimed.id, token)], now=NOW) == {claimed.id}
        assert store.count_in_flight(connection) == 0
    later = NOW + timedelta(seconds=30)
    outcome = decide_outcome(
        claimed, now=later, timezone="UTC", returned=None, max_result_bytes=MAX_RESULT_BYTES
    )
    with contract_bridge.autocommit.begin() as connection:
        written = store.write_outcome(
            connection, claimed, token, outcome, now=later, stale_before=STALE_BEFORE
        )
    follow_up = cast(Job, written.follow_up)
    assert follow_up.due == datetime(2030, 3, 1, 12, 5, tzinfo=UTC)
    assert follow_up.rescheduled_from_job == scheduled.id
    with contract_bridge.engine.begin() as connection:
        assert store.claim_due_jobs(connection, now=later, limit=10) == []
        assert store.next_due(connection) == follow_up.due
        lineage = store.job_lineage(connection, follow_up.id)
    done = cast(Job, _get(contract_bridge, scheduled.id))
    assert done.state is JobState.SUCCEEDED
    assert done.attempts == 1
    assert lineage == Lineage(earlier=[_summary(done)], later=[], truncated=False)


# --- dispatcher bookkeeping -----------------------------------------------------------


def test_count_in_flight_counts_sent_unstarted_live_rows(contract_bridge: BridgeApp) -> None:
    store = contract_bridge.store
    with contract_bridge.engine.connect() as connection:
        assert store.count_in_flight(connection) == 0
    _put(contract_bridge, user_id=1)
    _put(contract_bridge, user_id=2, **_dispatched("t-2"))
    _put(contract_bridge, user_id=3, **_dispatched("t-3", at=NOW - timedelta(hours=3)))
    _put(contract_bridge, user_id=4, **_running("t-4"))
    _put(contract_bridge, user_id=5, **_succeeded())
    _put(contract_bridge, user_id=6, dispatched_at=NOW, **_cancelled())
    with contract_bridge.engine.connect() as connection:
        assert store.count_in_flight(connection) == 2


def test_next_due_is_the_earliest_unsent_pending_row_in_utc(contract_bridge: BridgeApp) -> None:
    store = contract_bridge.store
    with contract_bridge.engine.connect() as connection:
        assert store.next_due(connection) is None
    earlier = NOW - timedelta(hours=1)
    _put(contract_bridge, user_id=1, due=earlier, **_dispatched("t-1"))
    _put(contract_bridge, user_id=2, due=earlier, **_running("t-2"))
    _put(contract_bridge, user_id=3, due=earlier, **_succeeded())
    _put(contract_bridge, user_id=4, due=earlier, **_cancelled())
    _put(contract_bridge, user_id=5, due=NOW + timedelta(minutes=5))
    with contract_bridge.engine.connect() as connection:
        assert store.next_due(connection) == NOW + timedelta(minutes=5)
    # Given in another zone, with microseconds: read back as the same instant, in UTC.
    _put(
        contract_bridge,
        user_id=6,
        due=datetime(2030, 3, 1, 14, 3, 0, 250_000, tzinfo=timezone(timedelta(hours=2))),
    )
    with contract_bridge.engine.connect() as connection:
        due = store.next_due(connection)
    assert due == datetime(2030, 3, 1, 12, 3, 0, 250_000, tzinfo=UTC)
    assert due is not None
    assert due.tzinfo is UTC


def test_fail_unsendable_fails_the_live_rows_named(contract_bridge: BridgeApp) -> None:
    pending = _put(contract_bridge, user_id=1)
    sent = _put(contract_bridge, user_id=2, **_dispatched("t-2"))
    done = _put(contract_bridge, user_id=3, **_succeeded())
    unnamed = _put(contract_bridge, user_id=4)
    store = contract_bridge.store
    error = "no job module 'gone' in the jobs package 'tests.testjobs'"
    with contract_bridge.engine.begin() as connection:
        store.fail_unsendable(
            connection, [pending.id, sent.id, done.id, unnamed.id + 100], now=NOW, error=error
        )
    result = {"error": error, "exception": "UnknownJobTypeError"}

    def failed(row: Job) -> Job:
        return dataclasses.replace(
            row, started=NOW, finished=NOW, success=False, result=result, task_id=None,
            updated_at=NOW,
        )  # fmt: skip

    expected = [failed(pending), failed(sent), done, unnamed]
    assert _fields(_rows(contract_bridge)) == _fields(expected)
    assert {row.state for row in expected[:2]} == {JobState.FAILED}
    with contract_bridge.engine.begin() as connection:
        store.fail_unsendable(connection, [], now=NOW, error=error)
    assert _fields(_rows(contract_bridge)) == _fields(expected)


# --- recover_lost_jobs ----------------------------------------------------------------


def test_recovery_reason_texts() -> None:
    assert LOST_MESSAGE == DISPATCHED_NOT_STARTED
    assert STALE_START == STARTED_TOO_LONG_AGO
    assert LOST_HEARTBEAT == HEARTBEAT_TOO_OLD


@pytest.mark.parametrize("redispatch", [True, False], ids=["redispatch", "no redispatch"])
def test_recover_lost_jobs(contract_bridge: BridgeApp, redispatch: bool) -> None:
    ten_minutes_ago = NOW - timedelta(minutes=10)
    lost_message = _put(
        contract_bridge,
        user_id=1,
        **_dispatched("t-1", at=REDISPATCH_BEFORE - timedelta(seconds=1)),
    )
    fresh_message = _put(contract_bridge, user_id=2, **_dispatched("t-2", at=REDISPATCH_BEFORE))
    dead = _put(
        contract_bridge,
        user_id=3,
        **_running(
            "t-3", started=ten_minutes_ago, heartbeat=HEARTBEAT_BEFORE - timedelta(seconds=1)
        ),
    )
    never_beat = _put(
        contract_bridge, user_id=4, **_running("t-4", started=ten_minutes_ago, heartbeat=None)
    )
    stale = _put(
        contract_bridge,
        user_id=5,
        recoveries=2,
        **_running("t-5", started=STALE_BEFORE - timedelta(seconds=1), heartbeat=NOW),
    )
    alive = _put(
        contract_bridge,
        user_id=6,
        **_running("t-6", started=ten_minutes_ago, heartbeat=HEARTBEAT_BEFORE),
    )
    dead_with_sibling = _put(
        contract_bridge,
        user_id=7,
        **_running(
            "t-7", started=ten_minutes_ago, heartbeat=HEARTBEAT_BEFORE - timedelta(minutes=1)
        ),
    )
    sibling_7 = _put(contract_bridge, user_id=7)
    stale_with_sibling = _put(
        contract_bridge,
        user_id=8,
        **_running("t-8", started=STALE_BEFORE - timedelta(minutes=1), heartbeat=NOW),
    )
    sibling_8 = _put(contract_bridge, user_id=8, **_dispatched("t-8-sibling", at=NOW))
    pending = _put(contract_bridge, user_id=9, due=NOW - timedelta(days=1))
    old = NOW - timedelta(days=1)
    done = _put(contract_bridge, user_id=10, **_succeeded(finished=old))
    cancelled = _put(contract_bridge, user_id=11, **_cancelled(finished=old))

    with contract_bridge.engine.begin() as connection:
        recovered = contract_bridge.store.recover_lost_jobs(
            connection,
            now=NOW,
            stale_before=STALE_BEFORE,
            heartbeat_before=HEARTBEAT_BEFORE,
            redispatch_before=REDISPATCH_BEFORE if redispatch else None,
        )

    def lost_for(row: Job, sibling: Job) -> Job:
        return dataclasses.replace(
            row,
            finished=NOW,
            success=False,
            result={
                "error": (
                    f"Cancelled: its worker was lost and job {sibling.id} "
                    "of the same type and user is already pending."
                ),
                "cancelled": True,
                "cancelled_by": sibling.id,
            },
            task_id=None,
            heartbeat=None,
            recoveries=row.recoveries + 1,
            updated_at=NOW,
        )

    expected = [
        Recovered(dead.id, "echo", 3, HEARTBEAT_TOO_OLD, None),
        Recovered(never_beat.id, "echo", 4, HEARTBEAT_TOO_OLD, None),
        Recovered(stale.id, "echo", 5, STARTED_TOO_LONG_AGO, None),
        Recovered(dead_with_sibling.id, "echo", 7, HEARTBEAT_TOO_OLD, sibling_7.id),
        Recovered(stale_with_sibling.id, "echo", 8, STARTED_TOO_LONG_AGO, sibling_8.id),
    ]
    if redispatch:
        expected.insert(0, Recovered(lost_message.id, "echo", 1, DISPATCHED_NOT_STARTED, None))
    assert _fields(sorted(recovered, key=lambda r: r.job_id)) == _fields(expected)
    assert _fields(_rows(contract_bridge)) == _fields(
        [
            _reset(lost_message) if redispatch else lost_message,
            fresh_message,
            _reset(dead),
            _reset(never_beat),
            _reset(stale),
            alive,
            lost_for(dead_with_sibling, sibling_7),
            sibling_7,
            lost_for(stale_with_sibling, sibling_8),
            sibling_8,
            pending,
            done,
            cancelled,
        ]
    )
    # The attempts taken back may no longer finish.
    with contract_bridge.autocommit.begin() as connection:
        for row in (dead, stale, dead_with_sibling):
            assert not contract_bridge.store.finish_job(
                connection, row.id, cast(str, row.task_id), now=NOW, success=True, result=None,
                remove_at=NOW,
            )  # fmt: skip


def test_recover_lost_jobs_honours_limit(contract_bridge: BridgeApp) -> None:
    dead = [
        _put(
            contract_bridge,
            user_id=user_id,
            **_running(f"t-{user_id}", heartbeat=HEARTBEAT_BEFORE - timedelta(seconds=1)),
        )
        for user_id in (1, 2, 3)
    ]
    store = contract_bridge.store
    with contract_bridge.engine.begin() as connection:
        first = store.recover_lost_jobs(
            connection, now=NOW, stale_before=STALE_BEFORE, heartbeat_before=HEARTBEAT_BEFORE,
            redispatch_before=None, limit=2,
        )  # fmt: skip
    assert len(first) == 2
    with contract_bridge.engine.begin() as connection:
        rest = store.recover_lost_jobs(
            connection, now=NOW, stale_before=STALE_BEFORE, heartbeat_before=HEARTBEAT_BEFORE,
            redispatch_before=None, limit=2,
        )  # fmt: skip
    assert len(rest) == 1
    assert sorted(r.job_id for r in [*first, *rest]) == [row.id for row in dead]
    assert _fields(_rows(contract_bridge)) == _fields([_reset(row) for row in dead])


# --- delete_removable_jobs ------------------------------------------------------------


def test_delete_removable_jobs_removes_what_is_due_and_nothing_else(
    contract_bridge: BridgeApp,
) -> None:
    long_ago = NOW - timedelta(days=30)
    gone_success = _put(
        contract_bridge,
        **_succeeded(finished=NOW - timedelta(hours=2), remove_at=NOW - timedelta(seconds=1)),
    )
    kept_success = _put(
        contract_bridge, **_succeeded(finished=long_ago, remove_at=NOW + timedelta(seconds=1))
    )
    kept_forever = _put(contract_bridge, **_succeeded(finished=long_ago, remove_at=None))
    gone_failed = _put(contract_bridge, **_failed(finished=FAILED_BEFORE - timedelta(seconds=1)))
    kept_failed = _put(contract_bridge, **_failed(finished=FAILED_BEFORE + timedelta(seconds=1)))
    gone_cancelled = _put(
        contract_bridge, **_cancelled(finished=FAILED_BEFORE - timedelta(seconds=1))
    )
    kept_cancelled = _put(
        contract_bridge, **_cancelled(finished=FAILED_BEFORE + timedelta(seconds=1))
    )
    pending = _put(contract_bridge, user_id=2, due=long_ago, created_at=long_ago)
    running = _put(
        contract_bridge, user_id=3, **_running("t", started=long_ago, heartbeat=long_ago)
    )
    child_of_success = _put(contract_bridge, user_id=4, rescheduled_from_job=gone_success.id)
    child_of_failed = _put(
        contract_bridge, user_id=5, rescheduled_from_job=gone_failed.id, **_running("t-5")
    )
    child_of_kept = _put(contract_bridge, user_id=6, rescheduled_from_job=kept_failed.id)

    with contract_bridge.engine.begin() as connection:
        deleted = contract_bridge.store.delete_removable_jobs(
            connection, now=NOW, failed_before=FAILED_BEFORE
        )
    assert deleted == 3
    assert _fields(_rows(contract_bridge)) == _fields(
        [
            kept_success,
            kept_forever,
            kept_failed,
            kept_cancelled,
            pending,
            running,
            dataclasses.replace(child_of_success, rescheduled_from_job=None),
            dataclasses.replace(child_of_failed, rescheduled_from_job=None),
            child_of_kept,
        ]
    )
    assert {gone_success.id, gone_failed.id, gone_cancelled.id}.isdisjoint(
        row.id for row in _rows(contract_bridge)
    )
    with contract_bridge.engine.begin() as connection:
        assert (
            contract_bridge.store.delete_removable_jobs(
                connection, now=NOW, failed_before=FAILED_BEFORE
            )
            == 0
        )


def test_delete_removable_jobs_honours_limit(contract_bridge: BridgeApp) -> None:
    old = FAILED_BEFORE - timedelta(days=1)
    removable = [
        _put(contract_bridge, **_succeeded(finished=old, remove_at=old)),
        _put(contract_bridge, **_failed(finished=old)),
        _put(contract_bridge, **_cancelled(finished=old)),
    ]
    kept = _put(contract_bridge, user_id=2)
    store = contract_bridge.store
    counts = []
    left = []
    for _ in range(3):
        with contract_bridge.engine.begin() as connection:
            counts.append(
                store.delete_removable_jobs(
                    connection, now=NOW, failed_before=FAILED_BEFORE, limit=2
                )
            )
        left.append([row for row in _rows(contract_bridge) if row != kept])
    assert counts == [2, 1, 0]
    assert len(left[0]) == 1
    assert left[0][0] in removable
    assert left[1:] == [[], []]
    assert _fields(_rows(contract_bridge)) == _fields([kept])


def test_removed_rows_stay_in_the_chart_of_finished_rows(contract_bridge: BridgeApp) -> None:
    """Removal deletes finished rows and adds them to the minutes in one transaction:
    the chart counts each finished row once, before and after its removal."""
    minute = datetime(2030, 3, 1, 11, 40, tzinfo=UTC)
    at = minute + timedelta(seconds=20)
    due = at - timedelta(minutes=1, seconds=10)  # started 10 s after due
    _put(contract_bridge, due=due, **_succeeded(finished=at, remove_at=NOW - timedelta(seconds=1)))
    slower = due - timedelta(seconds=30)  # started 40 s after due
    _put(contract_bridge, due=slower, user_id=2, **_succeeded(finished=at, remove_at=None))
    _put(contract_bridge, due=due, user_id=3, **_failed(finished=at + timedelta(seconds=30)))
    _put(contract_bridge, user_id=4, **_cancelled(finished=at))
    later = minute + timedelta(minutes=1)
    _put(contract_bridge, type="other", user_id=5, **_succeeded(finished=later))
    _put(contract_bridge, user_id=6, **_succeeded(finished=minute - timedelta(hours=2)))
    _put(contract_bridge, user_id=7)  # pending: not finished

    def chart() -> list[Any]:
        with contract_bridge.engine.connect() as connection:
            return contract_bridge.store.finished_by_minute(
                connection, since=minute - timedelta(minutes=5), until=NOW
            )

    before = chart()
    assert [(c.minute, c.type, c.succeeded, c.failed, c.cancelled, c.ran) for c in before] == [
        (minute, "echo", 2, 1, 1, 3),
        (minute + timedelta(minutes=1), "other", 1, 0, 0, 1),
    ]
    assert before[0].lag_max == pytest.approx(40.0)
    # The failed row started a minute before its finish, 30 s later: 40 s after due.
    assert before[0].lag_sum == pytest.approx(10.0 + 40.0 + 40.0)
    with contract_bridge.engine.begin() as connection:
        deleted = contract_bridge.store.delete_removable_jobs(
            connection, now=NOW, failed_before=NOW
        )
    assert deleted == 3  # the removable success, the failed, the cancelled
    assert chart() == before
    # A second removal adds nothing twice.
    with contract_bridge.engine.begin() as connection:
        contract_bridge.store.delete_removable_jobs(connection, now=NOW, failed_before=NOW)
    assert chart() == before


# --- reports --------------------------------------------------------------------------


def _report_rows(bridge: BridgeApp) -> dict[str, Job]:
    """A few rows of every state, two types, three users."""
    shared_due = NOW + timedelta(minutes=10)
    rows: dict[str, Job] = {}
    rows["echo-1-succeeded"] = _put(bridge, user_id=1, **_succeeded())
    rows["echo-1-pending"] = _put(bridge, user_id=1, due=shared_due)
    rows["echo-2-failed"] = _put(bridge, user_id=2, **_failed())
    rows["other-1-cancelled"] = _put(bridge, type="other", user_id=1, **_cancelled())
    rows["other-2-running"] = _put(bridge, type="other", user_id=2, **_running("t", attempts=4))
    rows["other-3-dispatched"] = _put(
        bridge, type="other", user_id=3, due=NOW - timedelta(days=1), **_dispatched("t")
    )
    rows["echo-3-pending"] = _put(
        bridge,
        user_id=3,
        due=shared_due,
        cron_schedule="*/5 * * * *",
        rescheduled_from_job=rows["echo-1-succeeded"].id,
    )
    return rows


def test_list_jobs_filters_and_orders_newest_first(contract_bridge: BridgeApp) -> None:
    rows = _report_rows(contract_bridge)
    ordered = sorted(rows.values(), key=lambda job: job.id, reverse=True)
    store = contract_bridge.store

    def listed(**filters: Any) -> list[str]:
        with contract_bridge.engine.connect() as connection:
            summaries = store.list_jobs(connection, **filters)
        names = {job.id: name for name, job in rows.items()}
        assert summaries == [
            _summary(job) for job in ordered if job.id in {s.id for s in summaries}
        ]
        return [names[summary.id] for summary in summaries]

    everything = [name for name, job in sorted(rows.items(), key=lambda i: -i[1].id)]
    assert listed() == everything
    assert listed(limit=2) == everything[:2]
    assert listed(job_type="echo") == [
        "echo-3-pending", "echo-2-failed", "echo-1-pending", "echo-1-succeeded",
    ]  # fmt: skip
    assert listed(user_id=1) == ["other-1-cancelled", "echo-1-pending", "echo-1-succeeded"]
    assert listed(status=JobState.PENDING) == ["echo-3-pending", "echo-1-pending"]
    assert listed(status=JobState.DISPATCHED) == ["other-3-dispatched"]
    assert listed(status=JobState.RUNNING) == ["other-2-running"]
    assert listed(status=JobState.SUCCEEDED) == ["echo-1-succeeded"]
    assert listed(status=JobState.FAILED) == ["echo-2-failed"]
    assert listed(status=JobState.CANCELLED) == ["other-1-cancelled"]
    assert listed(job_type="other", user_id=2) == ["other-2-running"]
    assert listed(job_type="echo", user_id=1, status=JobState.PENDING) == ["echo-1-pending"]
    assert listed(job_type="echo", status=JobState.CANCELLED) == []
    assert listed(job_type="nothing") == []
    with contract_bridge.engine.connect() as connection:
        summaries = store.list_jobs(connection, job_type="other", limit=1)
    assert summaries == [_summary(rows["other-3-dispatched"])]


def test_job_lineage_follows_the_chain_both_ways(contract_bridge: BridgeApp) -> None:
    first = _put(contract_bridge, **_succeeded())
    second = _put(contract_bridge, rescheduled_from_job=first.id, **_failed())
    third = _put(contract_bridge, rescheduled_from_job=second.id)
    unrelated = _put(contract_bridge, user_id=2, rescheduled_from_job=None)
    a, b, c = (_summary(job) for job in (first, second, third))
    store = contract_bridge.store
    with contract_bridge.engine.connect() as connection:
        assert store.job_lineage(connection, second.id) == Lineage([a], [c], False)
        assert store.job_lineage(connection, first.id) == Lineage([], [b, c], False)
        assert store.job_lineage(connection, third.id) == Lineage([a, b], [], False)
        assert store.job_lineage(connection, unrelated.id) == Lineage([], [], False)
        assert store.job_lineage(connection, third.id, limit=2) == Lineage([a, b], [], False)
        assert store.job_lineage(connection, third.id, limit=1) == Lineage([b], [], True)
        assert store.job_lineage(connection, first.id, limit=1) == Lineage([], [b], True)
        assert store.job_lineage(connection, second.id, limit=1) == Lineage([a], [c], False)
        assert store.job_lineage(connection, unrelated.id + 100) == Lineage([], [], False)


def test_job_stats_counts_and_oldest_pending(contract_bridge: BridgeApp) -> None:
    store = contract_bridge.store
    with contract_bridge.engine.connect() as connection:
        assert store.job_stats(connection) == JobStats(counts={}, oldest_pending=None)
    rows = _report_rows(contract_bridge)
    _put(contract_bridge, user_id=4, **_failed())
    with contract_bridge.engine.connect() as connection:
        stats = store.job_stats(connection)
    assert stats == JobStats(
        counts={
            "echo": {JobState.SUCCEEDED: 1, JobState.PENDING: 2, JobState.FAILED: 2},
            "other": {JobState.CANCELLED: 1, JobState.RUNNING: 1, JobState.DISPATCHED: 1},
        },
        # Two pending rows share the earliest due time: the lower id wins; the
        # dispatched row, due earlier, is not pending.
        oldest_pending=_summary(rows["echo-1-pending"]),
    )


# --- the console's reports and actions ------------------------------------------------


def test_each_state_filter_selects_exactly_the_rows_in_that_state(
    contract_bridge: BridgeApp,
) -> None:
    from worker_bridge.store.reports import JobFilter

    rows = [
        _put(contract_bridge, user_id=1),
        _put(contract_bridge, user_id=2, **_dispatched("t-2")),
        _put(contract_bridge, user_id=3, **_running("t-3")),
        _put(contract_bridge, user_id=4, **_succeeded()),
        _put(contract_bridge, user_id=5, **_failed()),
        _put(contract_bridge, user_id=6, **_cancelled()),
        _put(contract_bridge, user_id=7, started=NOW, finished=NOW, success=False, result=None),
    ]
    store = contract_bridge.store
    with contract_bridge.engine.connect() as connection:
        for state in JobState:
            where = JobFilter(status=state)
            listed = {row.id for row in store.list_jobs(connection, where)}
            assert listed == {row.id for row in rows if row.state is state}, state
            count = store.count_jobs(connection, where, cap=10)
            assert (count.value, count.exact) == (len(listed), True)
        capped = store.count_jobs(connection, JobFilter(), cap=3)
        assert (capped.value, capped.exact) == (3, False)
        live = store.count_jobs(connection, JobFilter(job_type="echo"), live=True)
        assert live.value == 3


def test_time_ranges_and_data_containment(contract_bridge: BridgeApp) -> None:
    from worker_bridge.store.reports import JobFilter

    early = _put(contract_bridge, user_id=1, due=NOW - timedelta(hours=3), data={"k": "a"})
    late = _put(contract_bridge, user_id=2, due=NOW - timedelta(hours=1), data={"k": "b"})
    finished = _put(contract_bridge, user_id=3, data={"k": "a", "n": [1, 2]}, **_succeeded())
    store = contract_bridge.store
    with contract_bridge.engine.connect() as connection:

        def ids(where: JobFilter) -> list[int]:
            return [row.id for row in store.list_jobs(connection, where)]

        window = JobFilter(since=NOW - timedelta(hours=4), until=NOW - timedelta(hours=2))
        assert ids(window) == [early.id]
        assert ids(JobFilter(since=NOW - timedelta(hours=1))) == [finished.id, late.id]
        on_finish = JobFilter(time_field="finished", until=NOW)
        assert ids(on_finish) == [finished.id]
        contains = JobFilter(data={"n": [2]})
        if contract_bridge.store.dialect == "postgresql":
            assert ids(contains) == [finished.id]
            assert ids(JobFilter(data={"k": "a"})) == [finished.id, early.id]
        else:
            with pytest.raises(ConfigurationError, match="needs PostgreSQL"):
                ids(contains)
    with pytest.raises(ValueError, match="time_field must be one of"):
        JobFilter(time_field="started")


def test_cron_series_pages_by_type_and_user_with_their_history(
    contract_bridge: BridgeApp,
) -> None:
    def chain(job_type: str, user_id: int, length: int) -> list[Job]:
        rows: list[Job] = []
        for n in range(length):
            done = _succeeded() if n < length - 1 else {}
            follows = rows[-1].id if rows else None
            rows.append(
                _put(
                    contract_bridge,
                    type=job_type,
                    user_id=user_id,
                    cron_schedule="0 * * * *",
                    rescheduled_from_job=follows,
                    **done,
                )
            )
        return rows

    b = chain("echo", 2, 3)
    a = chain("echo", 1, 8)
    c = chain("other", 1, 1)
    _put(contract_bridge, user_id=5)  # not cron
    store = contract_bridge.store
    with contract_bridge.engine.connect() as connection:
        page = store.cron_series(connection, limit=2, history=5)
        assert [s.live.id for s in page] == [a[-1].id, b[-1].id]
        assert [row.id for row in page[0].history] == [row.id for row in reversed(a[2:7])]
        assert [row.id for row in page[1].history] == [b[1].id, b[0].id]
        last = page[-1].live
        rest = store.cron_series(connection, after=(last.type, last.user_id, last.id))
        assert [(s.live.id, s.history) for s in rest] == [(c[0].id, [])]
        assert [s.live.id for s in store.cron_series(connection, user_id=2)] == [b[-1].id]
        assert store.follow_up_of(connection, a[0].id) == a[1].id
        assert store.follow_up_of(connection, a[-1].id) is None


def test_run_now_moves_only_a_pending_row_not_yet_due(contract_bridge: BridgeApp) -> None:
    later = _put(contract_bridge, user_id=1, due=NOW + timedelta(hours=1))
    due = _put(contract_bridge, user_id=2, due=NOW - timedelta(minutes=1))
    sent = _put(contract_bridge, user_id=3, due=NOW + timedelta(hours=1), **_dispatched("t-3"))
    store = contract_bridge.store
    with contract_bridge.engine.begin() as connection:
        assert store.run_now(connection, later.id, now=NOW)
        assert not store.run_now(connection, due.id, now=NOW)
        assert not store.run_now(connection, sent.id, now=NOW)
    after = {row.id: row for row in _rows(contract_bridge)}
    assert after[later.id] == dataclasses.replace(later, due=NOW, updated_at=NOW)
    assert after[due.id] == due and after[sent.id] == sent


def test_cancel_jobs_cancels_the_live_rows_of_a_list(contract_bridge: BridgeApp) -> None:
    from worker_bridge.store.reports import JobFilter

    pending = _put(contract_bridge, user_id=1)
    running = _put(contract_bridge, user_id=2, **_running("t-2"))
    done = _put(contract_bridge, user_id=3, **_succeeded())
    store = contract_bridge.store
    with contract_bridge.engine.begin() as connection:
        ids = store.live_ids(connection, JobFilter(job_type="echo"), limit=10)
        assert ids == [pending.id, running.id]
        assert store.live_ids(connection, JobFilter(), limit=10, up_to=pending.id) == [pending.id]
        assert store.cancel_jobs(connection, [*ids, done.id], now=NOW, reason="bulk") == 2
        assert store.last_id(connection) == done.id
    rows = {row.id: row for row in _rows(contract_bridge)}
    assert rows[pending.id].state is JobState.CANCELLED
    assert rows[running.id].state is JobState.CANCELLED and rows[running.id].task_id is None
    assert rows[running.id].result == {"error": "bulk", "cancelled": True, "cancelled_by": None}
    assert rows[done.id] == done


def test_run_again_and_bulk_cancel_through_control(contract_bridge: BridgeApp) -> None:
    from worker_bridge import control
    from worker_bridge.errors import JobStateError
    from worker_bridge.store.reports import JobFilter

    failed = _put(contract_bridge, user_id=1, data={"x": 1}, **_failed())
    pending = _put(contract_bridge, user_id=1, due=NOW + timedelta(days=1))
    new = control.run_again(failed.id, bridge=contract_bridge)
    assert (new.rescheduled_from_job, new.data, new.state) == (failed.id, {"x": 1}, JobState.PENDING)
    rows = {row.id: row for row in _rows(contract_bridge)}
    # Scheduled as schedule_job schedules: the pair's pending job is superseded.
    assert rows[pending.id].state is JobState.CANCELLED
    assert rows[pending.id].result["cancelled_by"] == new.id
    with pytest.raises(JobStateError, match=f"already has a follow-up, job {new.id}"):
        control.run_again(failed.id, bridge=contract_bridge)
    with pytest.raises(JobStateError, match="only a finished job can be run again"):
        control.run_again(new.id, bridge=contract_bridge)
    with pytest.raises(ValueError, match="needs a filter"):
        control.cancel_jobs(JobFilter(), bridge=contract_bridge)
    done = control.cancel_jobs(JobFilter(user_id=1), bridge=contract_bridge)
    assert (done.cancelled, done.stopped) == (1, 0)
    assert {row.id: row for row in _rows(contract_bridge)}[new.id].state is JobState.CANCELLED


def test_a_time_range_lists_by_that_time_and_pages_on_it(contract_bridge: BridgeApp) -> None:
    from worker_bridge.store.reports import JobFilter

    # Ids against time: the newest id is due earliest, and two rows share a due time.
    dues = [NOW - timedelta(minutes=m) for m in (1, 5, 5, 9, 30)]
    rows = [_put(contract_bridge, user_id=n, due=due) for n, due in enumerate(reversed(dues))]
    by_time = sorted(rows, key=lambda row: (row.due, row.id), reverse=True)
    where = JobFilter(since=NOW - timedelta(minutes=20), until=NOW)
    store = contract_bridge.store
    pages: list[list[int]] = []
    with contract_bridge.engine.connect() as connection:
        before: tuple[datetime, int] | None = None
        while True:
            page = store.list_jobs(
                connection, where, limit=2,
                before_id=before[1] if before else None, before_at=before[0] if before else None,
            )  # fmt: skip
            if not page:
                break
            pages.append([row.id for row in page])
            before = (page[-1].due, page[-1].id)
    assert pages == [[by_time[0].id, by_time[1].id], [by_time[2].id, by_time[3].id]]


def test_a_time_range_pages_across_live_and_finished_rows_with_ties(
    contract_bridge: BridgeApp,
) -> None:
    """The list merges finished and live rows; a page boundary inside a run of equal
    times, with live and finished rows on both sides, neither skips nor repeats a row."""
    from worker_bridge.store.reports import JobFilter

    at = NOW - timedelta(minutes=10)
    rows = []
    for n in range(9):
        finished = _succeeded(finished=NOW) if n % 2 else {}
        due = at if n < 6 else at - timedelta(minutes=1)
        rows.append(_put(contract_bridge, user_id=n, due=due, **finished))
    expected = [row.id for row in sorted(rows, key=lambda r: (r.due, r.id), reverse=True)]
    where = JobFilter(since=NOW - timedelta(hours=1))
    seen: list[int] = []
    with contract_bridge.engine.connect() as connection:
        before: tuple[datetime, int] | None = None
        for _ in range(10):
            page = contract_bridge.store.list_jobs(
                connection, where, limit=2,
                before_id=before[1] if before else None, before_at=before[0] if before else None,
            )  # fmt: skip
            if not page:
                break
            seen += [row.id for row in page]
            before = (page[-1].due, page[-1].id)
    assert seen == expected
    assert JobFilter(data={}).is_empty and not JobFilter(data={"a": 1}).is_empty


def test_bulk_cancel_goes_on_past_one_chunk(
    contract_bridge: BridgeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker_bridge import control
    from worker_bridge.store.reports import JobFilter

    monkeypatch.setattr(control, "BULK_CHUNK", 3)
    live = [_put(contract_bridge, user_id=n) for n in range(8)]
    other = _put(contract_bridge, type="other", user_id=1)
    done = control.cancel_jobs(JobFilter(job_type="echo"), bridge=contract_bridge)
    assert done.cancelled == len(live)
    rows = {row.id: row for row in _rows(contract_bridge)}
    assert all(rows[row.id].state is JobState.CANCELLED for row in live)
    assert rows[other.id].state is JobState.PENDING


def test_run_again_retried_after_a_lost_reply_returns_its_own_row(
    contract_bridge: BridgeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry after a lost reply (the commit went through) finds the row its first try
    wrote, and returns it instead of calling it somebody else's follow-up."""
    from worker_bridge import control
    from worker_bridge.errors import JobStateError

    failed = _put(contract_bridge, user_id=1, **_failed())

    def twice(_self: BridgeApp, _what: str, work: Any, patience: float | None = None) -> Any:
        work()  # committed; its reply "lost"
        return work()

    monkeypatch.setattr(BridgeApp, "reconnecting", twice)
    new = control.run_again(failed.id, bridge=contract_bridge)
    assert new.rescheduled_from_job == failed.id
    assert [row.id for row in _rows(contract_bridge) if row.rescheduled_from_job] == [new.id]
    monkeypatch.undo()
    with pytest.raises(JobStateError, match=f"already has a follow-up, job {new.id}"):
        control.run_again(failed.id, bridge=contract_bridge)
