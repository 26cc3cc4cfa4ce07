"""The worker's claim and finish statements on PostgreSQL: what they accept,
how they commit, and which index they can be planned on."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from worker_bridge.bridge import BridgeApp
from worker_bridge.models import JobState, WorkerJob
from worker_bridge.store import store_for
from worker_bridge.store.postgresql import _CLAIM_ASYNC_COMMIT

Fetch = Callable[[int], WorkerJob]


def _dispatched(job_factory: Callable[..., WorkerJob], token: str = "t-1") -> WorkerJob:
    return job_factory(dispatched_at=datetime.now(UTC), task_id=token)


def test_the_claim_starts_only_the_current_unstarted_attempt(
    bridge: BridgeApp, job_factory: Callable[..., WorkerJob], fetch: Fetch
) -> None:
    job = _dispatched(job_factory)
    now = datetime.now(UTC)
    with bridge.autocommit.begin() as connection:
        assert store_for(connection).claim_job(connection, job.id, "other", worker="w", now=now) is None
        claimed = store_for(connection).claim_job(connection, job.id, "t-1", worker="w:1", now=now)
        assert claimed is not None
        assert (claimed.id, claimed.started, claimed.worker, claimed.attempts) == (
            job.id,
            now,
            "w:1",
            1,
        )
        # A duplicate message finds the row running.
        assert store_for(connection).claim_job(connection, job.id, "t-1", worker="w:2", now=now) is None
    assert fetch(job.id).state is JobState.RUNNING
    finished = job_factory(
        dispatched_at=now, task_id="t-2", started=now, finished=now, success=False
    )
    with bridge.autocommit.begin() as connection:
        assert store_for(connection).claim_job(connection, finished.id, "t-2", worker="w", now=now) is None


def test_the_claim_commits_asynchronously_and_nothing_else_does(
    bridge: BridgeApp, job_factory: Callable[..., WorkerJob]
) -> None:
    """synchronous_commit is off for the claim's own transaction only: the
    finish, and whatever the connection runs next, commit synchronously."""
    job = _dispatched(job_factory)
    now = datetime.now(UTC)
    setting = text("SELECT current_setting('synchronous_commit')")
    with bridge.engine.connect() as connection:
        with connection.begin():
            assert connection.execute(setting).scalar() == "on"
            assert store_for(connection).claim_job(connection, job.id, "t-1", worker="w", now=now) is not None
            assert connection.execute(setting).scalar() == "off"
        with connection.begin():
            assert connection.execute(setting).scalar() == "on"
            assert store_for(connection).finish_job(
                connection, job.id, "t-1", now=now, success=True, result=1, remove_at=None
            )
            assert connection.execute(setting).scalar() == "on"


def test_the_finish_applies_only_to_the_running_attempt(
    bridge: BridgeApp, job_factory: Callable[..., WorkerJob], fetch: Fetch
) -> None:
    job = _dispatched(job_factory)
    now = datetime.now(UTC)
    with bridge.autocommit.begin() as connection:
        finish = {"now": now, "success": True, "result": {"n": 1}, "remove_at": None}
        # Not claimed yet: nothing to finish.
        assert not store_for(connection).finish_job(connection, job.id, "t-1", **finish)
        assert store_for(connection).claim_job(connection, job.id, "t-1", worker="w", now=now) is not None
        assert not store_for(connection).finish_job(connection, job.id, "stale-token", **finish)
        assert store_for(connection).finish_job(connection, job.id, "t-1", **finish)
        assert not store_for(connection).finish_job(connection, job.id, "t-1", **finish)
    row = fetch(job.id)
    assert row.state is JobState.SUCCEEDED and row.result == {"n": 1}
    assert row.heartbeat is None


@pytest.mark.parametrize(
    ("predicate", "uses_partial_index"),
    [
        # The naive form: the planner may scan a whole partial index.
        ("started IS NULL AND finished IS NULL", True),
        # The claim's form.
        (None, False),
    ],
)
def test_the_claim_cannot_be_planned_on_a_partial_index(
    engine: Engine, predicate: str | None, uses_partial_index: bool
) -> None:
    """Without the primary key, and with sequential scans priced out, the
    planner takes any index it may use: the claim's WHERE must leave it none
    of the partial indexes over pending rows, however their statistics look."""
    if predicate is None:
        compiled = _CLAIM_ASYNC_COMMIT.compile(dialect=engine.dialect)
        sql = str(compiled)
        params = compiled.construct_params(
            {"job_id": 1, "token": "t", "claimed_by": "w", "now": datetime.now(UTC)}
        )
    else:
        sql = (
            "UPDATE worker_jobs SET started = now() "
            f"WHERE id = %(job_id)s AND task_id = %(token)s AND {predicate}"
        )
        params = {"job_id": 1, "token": "t"}
    with engine.connect() as connection:
        schema_change = connection.begin()
        try:
            connection.exec_driver_sql(
                "ALTER TABLE worker_jobs DROP CONSTRAINT fk_worker_jobs_rescheduled_from_job, "
                "DROP CONSTRAINT worker_jobs_pkey"
            )
            connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = "\n".join(
                row[0] for row in connection.exec_driver_sql(f"EXPLAIN {sql}", params)
            )
        finally:
            schema_change.rollback()
    # Every index left is partial: any index scan is the one to avoid.
    assert ("Index Scan" in plan or "Index Only Scan" in plan) is uses_partial_index, plan


def test_a_lost_connection_surfaces_as_sqlalchemy_does_it_and_is_invalidated(
    bridge: BridgeApp, job_factory: Callable[..., WorkerJob], engine: Engine
) -> None:
    """The claim and finish run on the driver's connection; a connection that
    dies under them must still raise SQLAlchemy's DBAPIError, flagged as
    invalidated, which is what the worker's retry looks for, and the pool's
    other connections, gone with the server, must not be handed out again."""
    job = _dispatched(job_factory)
    with bridge.autocommit.connect() as idle, bridge.autocommit.connect() as connection:
        pids = [c.exec_driver_sql("SELECT pg_backend_pid()").scalar() for c in (idle, connection)]
    with bridge.autocommit.connect() as connection:
        with engine.connect() as killer:
            for pid in pids:
                killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(DBAPIError) as raised:
            store_for(connection).claim_job(connection, job.id, "t-1", worker="w", now=datetime.now(UTC))
        assert raised.value.connection_invalidated and connection.invalidated
    # The pooled connection that was idle is not handed out again.
    with bridge.autocommit.connect() as connection:
        claimed = store_for(connection).claim_job(connection, job.id, "t-1", worker="w", now=datetime.now(UTC))
        assert claimed is not None and claimed.id == job.id


def test_timestamps_come_back_in_utc_whatever_the_session_time_zone(
    bridge: BridgeApp, job_factory: Callable[..., WorkerJob]
) -> None:
    from worker_bridge.db import create_db_engine

    job = _dispatched(job_factory)
    elsewhere = create_db_engine(
        bridge.settings.database_url,
        isolation_level="AUTOCOMMIT",
        connect_args={"options": "-c timezone=America/New_York"},
    )
    try:
        with elsewhere.connect() as connection:
            claimed = store_for(connection).claim_job(connection, job.id, "t-1", worker="w", now=datetime.now(UTC))
    finally:
        elsewhere.dispose()
    assert claimed is not None
    for value in (claimed.due, claimed.started, claimed.created_at, claimed.dispatched_at):
        assert value is not None and value.tzinfo is UTC


def test_a_statement_error_surfaces_as_sqlalchemy_does_it(
    bridge: BridgeApp, job_factory: Callable[..., WorkerJob]
) -> None:
    job = _dispatched(job_factory)
    with bridge.autocommit.connect() as connection:
        with pytest.raises(DBAPIError) as raised:
            # PostgreSQL refuses a job id beyond bigint.
            store_for(connection).claim_job(connection, 2**63, "t-1", worker="w", now=datetime.now(UTC))
        assert not raised.value.connection_invalidated
        assert store_for(connection).claim_job(connection, job.id, "t-1", worker="w", now=datetime.now(UTC))


def test_the_heartbeat_writes_back_a_claim_lost_in_a_server_crash(
    bridge: BridgeApp, job_factory: Callable[..., WorkerJob], engine: Engine, fetch: Fetch
) -> None:
    """The claim commits asynchronously: a crash of the server can lose it while
    the job runs. The row then still carries the attempt's token but no start;
    the next heartbeat writes the start back, so that recovery does not send
    the running job again, and the finish is then accepted."""
    job = _dispatched(job_factory)
    now = datetime.now(UTC)
    with bridge.autocommit.begin() as connection:
        assert store_for(connection).claim_job(connection, job.id, "t-1", worker="w", now=now) is not None
    other = job_factory(user_id=2, dispatched_at=now, task_id="t-other")
    with engine.begin() as connection:  # what the crash leaves: the claim never happened
        connection.execute(
            text("UPDATE worker_jobs SET started = NULL, heartbeat = NULL WHERE id = :id"),
            {"id": job.id},
        )
    assert fetch(job.id).state is JobState.DISPATCHED
    later = datetime.now(UTC)
    with bridge.autocommit.begin() as connection:
        # A token the row does not carry stays refused.
        alive = store_for(connection).refresh_heartbeats(
            connection, [(job.id, "t-1"), (other.id, "t-1")], now=later
        )
    assert alive == {job.id}
    restored = fetch(job.id)
    assert restored.state is JobState.RUNNING and restored.started == later
    assert fetch(other.id).state is JobState.DISPATCHED
    with bridge.autocommit.begin() as connection:
        assert store_for(connection).finish_job(
            connection, job.id, "t-1", now=later, success=True, result=None, remove_at=None
        )


def test_the_table_s_columns_come_in_the_model_s_order(engine: Engine) -> None:
    """Rows from RETURNING * (schedule_job) are read by position."""
    from worker_bridge.store.schema import all_columns

    with engine.connect() as connection:
        names = list(connection.exec_driver_sql("SELECT * FROM worker_jobs LIMIT 0").keys())
    assert names == [column.name for column in all_columns]


def test_importing_worker_bridge_leaves_the_application_s_mappers_alone() -> None:
    """Configuring mappers must not reach an application's own models, whose
    relationships may name classes not defined yet."""
    import subprocess
    import sys

    code = (
        "from sqlalchemy import ForeignKey\n"
        "from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship\n"
        "class Base(DeclarativeBase): pass\n"
        "class Customer(Base):\n"
        "    __tablename__ = 'customer'\n"
        "    id: Mapped[int] = mapped_column(primary_key=True)\n"
        "    orders = relationship('Order')\n"
        "import worker_bridge.store\n"
        "class Order(Base):\n"
        "    __tablename__ = 'orders'\n"
        "    id: Mapped[int] = mapped_column(primary_key=True)\n"
        "    customer_id: Mapped[int] = mapped_column(ForeignKey('customer.id'))\n"
        "print(Customer.orders.property.mapper.class_.__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Order"


def test_engine_options_may_name_an_isolation_level(bridge: BridgeApp) -> None:
    """The autocommit engine is built with the engine options; its own
    isolation level must win over theirs, not clash with it."""
    custom = BridgeApp.from_settings(bridge.settings, isolation_level="REPEATABLE READ")
    try:
        with custom.engine.connect() as connection:
            level = connection.exec_driver_sql("SHOW transaction_isolation").scalar()
        assert level == "repeatable read"
        assert custom.autocommit.pool is not custom.engine.pool
        with custom.autocommit.connect() as connection:
            assert connection.connection.driver_connection.autocommit is True
    finally:
        custom.dispose()
