"""What every part of the SQL layer shares: the table, row mapping, the pair lock."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import UTC
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Row,
    Table,
    text,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm.instrumentation import manager_of_class
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.elements import ClauseElement

from worker_bridge.db import json_dumps
from worker_bridge.models import CANCELLED_MARK, NewJob, UTCDateTime, WorkerJob

jobs_table = cast(Table, WorkerJob.__table__)
all_columns = list(jobs_table.columns)
_column_keys = tuple(column.key for column in all_columns)
# Instances built below skip __init__, which is what configures the mapper on
# first use; unpickling such an instance (a job passed between processes)
# needs it configured. Only worker_bridge's own registry: the application's
# models may not all be defined yet.
WorkerJob.registry.configure()
_job_manager = manager_of_class(WorkerJob)


_timestamp_positions = tuple(
    index for index, column in enumerate(all_columns) if isinstance(column.type, UTCDateTime)
)


def job_from_row(row: Row[Any] | Sequence[Any], width: int | None = None) -> WorkerJob:
    """Build a detached ``WorkerJob`` from a row whose first columns are ``all_columns``.

    ``width``: how many leading columns are the table's (the rest are extras).
    The instance is filled the way the ORM loads one, not through
    ``__init__``, whose per-attribute events cost ten times as much; it
    matters for the thousands of rows of a batch or a dispatch. Timestamps
    come out in UTC, as the model promises, also from a driver row read in
    another session time zone.
    """
    values = list(row if width is None else row[:width])
    for index in _timestamp_positions:
        value = values[index]
        if value is not None and value.tzinfo is not UTC:
            values[index] = value.astimezone(UTC)
    job: WorkerJob = _job_manager.new_instance()
    job.__dict__.update(zip(_column_keys, values, strict=True))
    return job


def is_postgresql(connection: Connection) -> bool:
    return connection.dialect.name == "postgresql"


def cancellation_result(cancelled_by: int | None, reason: str) -> dict[str, Any]:
    """The ``result`` a cancelled row gets."""
    return {"error": reason, CANCELLED_MARK: True, "cancelled_by": cancelled_by}


# Every writer of one (type, user_id) serialises on an advisory lock: the
# partial unique index can only say "one unstarted job", not "cancel the stale
# started ones too", and under READ COMMITTED a second writer must see the
# first one's row before it decides what to cancel.
#
# The lock is one of PAIR_LOCK_BUCKETS, picked by hashing the pair, not one
# per pair: a batch then holds at most that many locks whatever its size (one
# per pair exhausts PostgreSQL's shared lock table, max_locks_per_transaction,
# beyond some ten thousand pairs). The price: writers of different pairs
# that hash alike wait for each other. A lock lasts until its transaction
# ends: one statement for schedule_job on its own, the caller's whole
# transaction when given a session, so a large batch in a long transaction
# holds up most other writers until it commits.
PAIR_LOCK_BUCKETS = 1024
#: First key of worker_bridge's two-key advisory locks, kept apart from an application's.
PAIR_LOCK_CLASS = 0x776A6273
#: The keys every statement that locks a pair binds: its second key is
#: ``(hashtext(type) # hashint4(user_id)) & :lock_mask``, written the same in each.
PAIR_LOCK_KEYS = {"lock_class": PAIR_LOCK_CLASS, "lock_mask": PAIR_LOCK_BUCKETS - 1}

# A separate statement, because a statement's snapshot is taken before any
# lock it acquires.
LOCK_PAIR = text(
    "SELECT pg_advisory_xact_lock("
    ":lock_class, (hashtext(:type) # hashint4(:user_id)) & :lock_mask)"
).bindparams(**PAIR_LOCK_KEYS)


def job_values(job: NewJob) -> dict[str, Any]:
    return {
        "type": job.type,
        "user_id": job.user_id,
        "data": job.data,
        "due": job.due,
        "cron_schedule": job.cron_schedule,
        "auto_reschedule_on_failure": job.auto_reschedule_on_failure,
        "auto_reschedule_on_failure_delay": job.auto_reschedule_on_failure_delay,
        "remove_delay": job.remove_delay,
        "rescheduled_from_job": job.rescheduled_from_job,
    }


def lock_type_user(connection: Connection, job_type: str, user_id: int) -> None:
    """Take the transaction-scoped lock that serialises writers of (type, user_id)."""
    if is_postgresql(connection):
        connection.execute(LOCK_PAIR, {"type": job_type, "user_id": user_id})


class DriverStatement:
    """A Core statement compiled once and run on psycopg's own connection.

    For the statements that run once per job (the claim, the finish,
    ``schedule_job``'s insert), SQLAlchemy's work around each execution
    (execution context, parameter and result processing) costs more CPU than
    psycopg's whole round trip. The SQL is still the Core statement's,
    compiled by SQLAlchemy; only its execution skips the machinery. Rows come
    back as tuples; the ``json`` parameters are serialised here. Errors are
    raised as SQLAlchemy raises them, and a lost connection invalidates the
    pool as SQLAlchemy does, so callers handle them the same way. On any
    other driver or database the statement runs through SQLAlchemy.
    """

    def __init__(self, statement: Executable, *, json: Collection[str] = ()) -> None:
        self._statement = statement
        self._json = tuple(json)
        self._compiled: tuple[str, dict[str, Any]] | None = None

    def execute(self, connection: Connection, params: Mapping[str, Any]) -> Any:
        """Run on ``connection``; a cursor (or SQLAlchemy result) with fetchone and rowcount."""
        if connection.dialect.driver != "psycopg":
            return connection.execute(self._statement, dict(params))
        import psycopg

        if self._compiled is None:
            compiled = cast(ClauseElement, self._statement).compile(dialect=connection.dialect)
            # The statement's literal values (``attempts + 1``...) are bound once.
            self._compiled = (str(compiled), dict(compiled.params))
        sql, defaults = self._compiled
        values = {**defaults, **params}
        for name in self._json:
            values[name] = json_dumps(values[name])
        driver = connection.connection.driver_connection
        try:
            return driver.execute(sql, values)  # type: ignore[union-attr]
        except psycopg.Error as exc:
            lost = connection.dialect.is_disconnect(exc, driver, None)  # type: ignore[arg-type]
            if lost:
                connection.invalidate(exc)
                # The other pooled connections went down with this one, most
                # likely (a server restart): drop them too, as SQLAlchemy does.
                connection.engine.dispose()
            raise DBAPIError.instance(
                sql,
                values,
                exc,
                psycopg.Error,
                connection_invalidated=lost,
                dialect=connection.dialect,
            ) from exc
