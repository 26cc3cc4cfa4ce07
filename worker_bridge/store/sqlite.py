"""The store on SQLite, the embedded default: one writer at a time stands in for locks.

Every transaction takes SQLite's write lock up front (``BEGIN IMMEDIATE``), so
the few statements of a write cannot interleave with another process's: what
PostgreSQL needs advisory locks, SKIP LOCKED and single-statement CTEs for is
here a plain sequence of portable statements. SQLite has no notifications,
so a dispatcher polls, and only one dispatcher may run.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import Connection, Engine, create_engine, event, func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from worker_bridge.job import Job, NewJob
from worker_bridge.outcome import Outcome
from worker_bridge.payload import json_dumps
from worker_bridge.store.base import Store
from worker_bridge.store.records import LostAttempt, Recovered, WrittenOutcome
from worker_bridge.store.schema import (
    LOST_AND_SUPERSEDED,
    LOST_HEARTBEAT,
    LOST_MESSAGE,
    STALE_START,
    SUPERSEDED,
    all_columns,
    cancellation_result,
    jobs_table,
)
from worker_bridge.wakeup import SleepWaiter, Waiter

#: Nothing was dispatched before this: a lost-message cut-off that matches no row.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take over transaction control from the sqlite3 module (see _on_begin).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _on_begin(connection: Any) -> None:
    # Every transaction takes SQLite's write lock up front: a deferred
    # transaction that reads and then writes can fail with "database is
    # locked" at once when another process writes, instead of waiting.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


class SQLiteStore(Store):
    """worker_bridge's queries on SQLite."""

    dialect: ClassVar[str] = "sqlite"
    concurrent_dispatchers: ClassVar[bool] = False
    dispatch_mode: ClassVar[str] = (
        "polling every worker_bridge_max_interval; run ONE dispatcher only "
        "(no SKIP LOCKED or LISTEN/NOTIFY on this database)"
    )

    def create_engine(self, url: str, **options: Any) -> Engine:
        settings: dict[str, Any] = {"json_serializer": json_dumps, "connect_args": {"timeout": 30}}
        settings.update(options)
        engine = create_engine(make_url(url), **settings)
        event.listen(engine, "connect", _on_connect)
        event.listen(engine, "begin", _on_begin)
        return engine

    def autocommit_engine(self, engine: Engine, **options: Any) -> Engine:
        # SQLite keeps its explicit transactions, which cost no network here.
        return engine

    def autocommit_view(self, engine: Engine) -> Engine:
        return engine

    def ensure_schema(self, engine: Engine) -> None:
        # A first run needs nothing but `pip install`: the table is created on
        # first use. Alembic narrates every check (and its plugins, at import)
        # at INFO; a worker's log is no place for it.
        from worker_bridge.migrations import upgrade_database

        logging.getLogger("alembic").setLevel(logging.WARNING)
        try:
            upgrade_database(engine)
        except OperationalError:
            # Another process of the same start-up (worker -B forks several)
            # created the table between our check and our CREATE: it is there now.
            upgrade_database(engine)

    def waiter(self, engine: Engine) -> Waiter:
        return SleepWaiter()

    def is_disconnect(self, error: DBAPIError) -> bool:
        return bool(error.connection_invalidated)

    def supersede_and_insert(
        self,
        connection: Connection,
        job: NewJob,
        *,
        now: datetime,
        stale_before: datetime,
        serialize: bool = True,
    ) -> Job:
        return self._supersede_and_insert(connection, job, now=now, stale_before=stale_before)

    def _supersede_and_insert(
        self, connection: Connection, job: NewJob, *, now: datetime, stale_before: datetime,
        keep: int | None = None,
    ) -> Job:  # fmt: skip
        # The supersede rule: cancel the pair's pending rows (all but ``keep``),
        # insert the new row, then name it in the cancelled rows' results.
        match = (
            (jobs_table.c.type == job.type)
            & (jobs_table.c.user_id == job.user_id)
            & jobs_table.c.finished.is_(None)
            & (jobs_table.c.started.is_(None) | (jobs_table.c.started < stale_before))
        )
        if keep is not None:
            match &= jobs_table.c.id != keep
        cancelled = list(
            connection.execute(
                update(jobs_table)
                .where(match)
                .values(
                    started=now,
                    finished=now,
                    success=False,
                    updated_at=now,
                    task_id=None,
                    heartbeat=None,
                )
                .returning(jobs_table.c.id)
            ).scalars()
        )
        new = self._insert(connection, job, now=now)
        if cancelled:
            connection.execute(
                update(jobs_table)
                .where(jobs_table.c.id.in_(cancelled))
                .values(result=cancellation_result(new.id, SUPERSEDED.format(new.id)))
            )
        return new

    def supersede_and_insert_many(
        self, connection: Connection, jobs: Sequence[NewJob], *, now: datetime,
        stale_before: datetime,
    ) -> list[Job]:  # fmt: skip
        ids = [
            self._supersede_and_insert(connection, job, now=now, stale_before=stale_before).id
            for job in jobs
        ]
        # As stored: a job a later one of the batch superseded comes back cancelled.
        return self.get_jobs(connection, ids)

    def claim_due_jobs(
        self,
        connection: Connection,
        *,
        now: datetime,
        limit: int,
        exclude_types: Sequence[str] = (),
    ) -> list[Job]:
        ids = connection.execute(
            select(jobs_table.c.id)
            .where(
                jobs_table.c.type.notin_(list(exclude_types))
                & (jobs_table.c.due <= now)
                & jobs_table.c.started.is_(None)
                & jobs_table.c.finished.is_(None)
                & jobs_table.c.dispatched_at.is_(None)
            )
            .order_by(jobs_table.c.due)
            .limit(limit)
        ).scalars()
        jobs = []
        for job_id in list(ids):
            row = connection.execute(
                update(jobs_table)
                .where(jobs_table.c.id == job_id)
                .values(dispatched_at=now, task_id=str(uuid.uuid4()), updated_at=now)
                .returning(*all_columns)
            ).one()
            jobs.append(Job.from_row(row))
        return jobs

    def write_outcome(
        self,
        connection: Connection,
        job: Job,
        token: str,
        outcome: Outcome,
        *,
        now: datetime,
        stale_before: datetime,
    ) -> WrittenOutcome:
        written = self.finish_job(
            connection, job.id, token, now=now, success=outcome.success, result=outcome.result,
            remove_at=outcome.remove_at,
        )  # fmt: skip
        if not written or outcome.follow_up is None:
            return WrittenOutcome(written)
        follow_up = self._supersede_and_insert(
            connection, outcome.follow_up, now=now, stale_before=stale_before, keep=job.id
        )
        return WrittenOutcome(True, follow_up)

    def recover_lost_jobs(
        self,
        connection: Connection,
        *,
        now: datetime,
        stale_before: datetime,
        heartbeat_before: datetime,
        redispatch_before: datetime | None,
        lost_attempt: LostAttempt | None = None,
        limit: int = 1000,
    ) -> list[Recovered]:
        redispatch_before = redispatch_before or _EPOCH
        started = jobs_table.c.started
        lost_ids = list(lost_attempt.job_ids) if lost_attempt else []
        reported = (
            jobs_table.c.id.in_(lost_ids)
            & (jobs_table.c.task_id == (lost_attempt.token if lost_attempt else None))
            & started.isnot(None)
        )
        lost = connection.execute(
            select(
                jobs_table.c.id,
                jobs_table.c.type,
                jobs_table.c.user_id,
                started,
                reported.label("reported"),
            )
            .where(
                jobs_table.c.finished.is_(None)
                & (
                    reported
                    | (started.is_(None) & (jobs_table.c.dispatched_at < redispatch_before))
                    | (
                        started.isnot(None)
                        & (
                            (started < stale_before)
                            | (func.coalesce(jobs_table.c.heartbeat, started) < heartbeat_before)
                        )
                    )
                )
            )
            .limit(limit)
        ).all()
        recovered = []
        for job_id, job_type, user_id, started_at, was_reported in lost:
            if was_reported and lost_attempt is not None:
                reason = lost_attempt.reason
            elif started_at is None:
                reason = LOST_MESSAGE
            elif started_at < stale_before:
                reason = STALE_START
            else:
                reason = LOST_HEARTBEAT
            sibling = None
            if started_at is not None:
                sibling = connection.execute(
                    select(func.min(jobs_table.c.id)).where(
                        (jobs_table.c.type == job_type)
                        & (jobs_table.c.user_id == user_id)
                        & jobs_table.c.started.is_(None)
                        & jobs_table.c.finished.is_(None)
                    )
                ).scalar()
            values: dict[str, Any] = {
                "task_id": None,
                "heartbeat": None,
                "updated_at": now,
                "recoveries": jobs_table.c.recoveries + 1,
            }
            if sibling is None:
                values.update(started=None, dispatched_at=None, worker=None)
            else:
                values.update(
                    finished=now,
                    success=False,
                    result=cancellation_result(sibling, LOST_AND_SUPERSEDED.format(sibling)),
                )
            connection.execute(update(jobs_table).where(jobs_table.c.id == job_id).values(**values))
            recovered.append(Recovered(job_id, job_type, user_id, reason, sibling))
        return recovered
