"""The worker's claim and finish statements on PostgreSQL: what they accept,
how they commit, and which index they can be planned on."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from worker_bridge import store
from worker_bridge.bootstrap import BridgeApp
from worker_bridge.models import JobState, WorkerJob
from worker_bridge.store.attempts import _CLAIM_ASYNC_COMMIT

Fetch = Callable[[int], WorkerJob]


def _dispatched(job_factory: Callable[..., WorkerJob], token: str = "t-1") -> WorkerJob:
    return job_factory(dispatched_at=datetime.now(UTC), task_id=token)


def test_the_claim_starts_only_the_current_unstarted_attempt(
    bridge: BridgeApp, job_factory: Callable[..., WorkerJob], fetch: Fetch
) -> None:
    job = _dispatched(job_factory)
    now = datetime.now(UTC)
    with bridge.autocommit.begin() as connection:
        assert store.claim_job(connection, job.id, "other", worker="w", now=now) is None
        claimed = store.claim_job(connection, job.id, "t-1", worker="w:1", now=now)
        assert claimed is not None
        assert (claimed.id, claimed.started, claimed.worker, claimed.attempts) == (
            job.id,
            now,
            "w:1",
            1,
        )
        # A duplicate message finds the row running.
        assert store.claim_job(connection, job.id, "t-1", worker="w:2", now=now) is None
    assert fetch(job.id).state is JobState.RUNNING
    finished = job_factory(
        dispatched_at=now, task_id="t-2", started=now, finished=now, success=False
    )
    with bridge.autocommit.begin() as connection:
        assert store.claim_job(connection, finished.id, "t-2", worker="w", now=now) is None


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
            assert store.claim_job(connection, job.id, "t-1", worker="w", now=now) is not None
            assert connection.execute(setting).scalar() == "off"
        with connection.begin():
            assert connection.execute(setting).scalar() == "on"
            assert store.finish_job(
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
        assert not store.finish_job(connection, job.id, "t-1", **finish)
        assert store.claim_job(connection, job.id, "t-1", worker="w", now=now) is not None
        assert not store.finish_job(connection, job.id, "stale-token", **finish)
        assert store.finish_job(connection, job.id, "t-1", **finish)
        assert not store.finish_job(connection, job.id, "t-1", **finish)
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
    invalidated, which is what the worker's retry looks for."""
    job = _dispatched(job_factory)
    with bridge.autocommit.connect() as connection:
        pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with engine.connect() as killer:
            killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(DBAPIError) as raised:
            store.claim_job(connection, job.id, "t-1", worker="w", now=datetime.now(UTC))
        assert raised.value.connection_invalidated and connection.invalidated
        # The next use reconnects, and the claim goes through.
        connection.rollback()
        claimed = store.claim_job(connection, job.id, "t-1", worker="w", now=datetime.now(UTC))
        assert claimed is not None and claimed.id == job.id


def test_a_statement_error_surfaces_as_sqlalchemy_does_it(
    bridge: BridgeApp, job_factory: Callable[..., WorkerJob]
) -> None:
    job = _dispatched(job_factory)
    with bridge.autocommit.connect() as connection:
        with pytest.raises(DBAPIError) as raised:
            # PostgreSQL refuses a job id beyond bigint.
            store.claim_job(connection, 2**63, "t-1", worker="w", now=datetime.now(UTC))
        assert not raised.value.connection_invalidated
        assert store.claim_job(connection, job.id, "t-1", worker="w", now=datetime.now(UTC))
