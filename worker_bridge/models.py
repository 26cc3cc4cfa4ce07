"""The ``worker_jobs`` table as an ORM mapping, ``WorkerJob``, and its state in SQL.

The mapping defines the schema (migration 0001 mirrors it; a test compares
them) and serves applications that query ``worker_jobs`` with the ORM.
worker_bridge itself reads rows as immutable :class:`~worker_bridge.job.Job`
values. A row's state is derived in one place: :func:`~worker_bridge.job.job_state`
in Python and :func:`state_expression` here in SQL, which must agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Text,
    TypeDecorator,
    case,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from worker_bridge.job import CANCELLED_MARK, JobState, job_state


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every back end.

    Naive datetimes are refused on the way in: a naive value's meaning depends
    on the host's clock settings, and a job due at the wrong hour is a silent bug.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r} refused: worker_jobs stores aware UTC")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        # SQLite keeps no zone: everything written was UTC.
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


#: JSONB on PostgreSQL (indexable, compact), plain JSON elsewhere.
JSONType = JSON().with_variant(JSONB(), "postgresql")


def _partial(where: str) -> dict[str, Any]:
    return {"postgresql_where": text(where), "sqlite_where": text(where)}


#: A timestamp as the console's indexes key it: the same instant, through an
#: immutable expression that only the console's queries spell out.
_UTC = "(timezone('UTC', timezone('UTC', {})))"


class Base(DeclarativeBase):
    """Declarative base of worker_bridge's tables."""


class WorkerJob(Base):
    """One job: a one-off run or one occurrence of a cron schedule.

    Every timestamp is timezone-aware UTC. Columns say who writes them and when.
    """

    __tablename__ = "worker_jobs"
    # Mirrors migration 0001 (a test compares them); the migration says why
    # each index exists.
    __table_args__ = (
        Index(
            "ix_worker_jobs_due_undispatched",
            "due",
            **_partial("started IS NULL AND finished IS NULL AND dispatched_at IS NULL"),
        ),
        Index(
            "uq_worker_jobs_one_pending",
            "type",
            "user_id",
            unique=True,
            **_partial("started IS NULL AND finished IS NULL"),
        ),
        Index("ix_worker_jobs_live_type_user", "type", "user_id", **_partial("finished IS NULL")),
        Index(
            "uq_worker_jobs_rescheduled_from_job",
            "rescheduled_from_job",
            unique=True,
            **_partial("rescheduled_from_job IS NOT NULL"),
        ),
        Index(
            "ix_worker_jobs_running_heartbeat",
            "heartbeat",
            **_partial("started IS NOT NULL AND finished IS NULL"),
        ),
        Index(
            "ix_worker_jobs_dispatched_unstarted",
            "dispatched_at",
            **_partial("dispatched_at IS NOT NULL AND started IS NULL AND finished IS NULL"),
        ),
        Index("ix_worker_jobs_remove_at", "remove_at", **_partial("remove_at IS NOT NULL")),
        Index("ix_worker_jobs_failed_finished", "finished", **_partial("success = false")),
        # The console's lists of finished rows: keyed on expressions only its
        # queries use (console_key), so that no plan of the scheduling,
        # dispatching or recovery statements can ever pick them (migration
        # 0002 says why), and partial, so that a live row's changes never
        # write into them.
        *(
            Index(name, text(key), "id", postgresql_where=text("finished IS NOT NULL")).ddl_if(
                dialect="postgresql"
            )
            for name, key in (
                ("ix_worker_jobs_type_id", '(type COLLATE "C")'),
                ("ix_worker_jobs_task_id", '(task_id COLLATE "C")'),
                ("ix_worker_jobs_user_id_id", "(CAST(user_id AS BIGINT))"),
                ("ix_worker_jobs_finished_id", _UTC.format("finished")),
                ("ix_worker_jobs_due_id", _UTC.format("due")),
            )
        ),
        Index(
            "ix_worker_jobs_live_cron",
            "type",
            "user_id",
            "id",
            **_partial("cron_schedule IS NOT NULL AND finished IS NULL"),
        ),
        Index(
            "ix_worker_jobs_data",
            "data",
            postgresql_using="gin",
            postgresql_ops={"data": "jsonb_path_ops"},
            postgresql_where=text("finished IS NOT NULL"),
        ).ddl_if(dialect="postgresql"),
        CheckConstraint(
            "auto_reschedule_on_failure_delay >= 0", name="ck_worker_jobs_retry_delay_not_negative"
        ),
        CheckConstraint("remove_delay >= 0", name="ck_worker_jobs_remove_delay_not_negative"),
        CheckConstraint(
            "finished IS NULL OR success IS NOT NULL", name="ck_worker_jobs_finished_has_success"
        ),
    )

    #: Row id, assigned on insert.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), Identity(), primary_key=True
    )
    #: Name of the job module in the jobs package that runs it.
    type: Mapped[str] = mapped_column(Text)
    #: User the job is for; 0 for system-level jobs.
    user_id: Mapped[int] = mapped_column(Integer)
    #: The JSON object passed to run() as ``params.job.data``.
    data: Mapped[dict[str, Any]] = mapped_column(JSONType)
    #: When the job must run. Set by the scheduler; never NULL.
    due: Mapped[datetime] = mapped_column(UTCDateTime)
    #: When a worker claimed the job (NULL until then). Cancellation sets it too.
    started: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    #: When the job ended: ran, failed or was cancelled. NULL while it is live.
    finished: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    #: True if run() returned, False if it failed or was cancelled, NULL until finished.
    success: Mapped[bool | None] = mapped_column(Boolean, default=None)
    #: What run() returned on success; ``{"error": ...}`` on failure or cancellation.
    result: Mapped[Any] = mapped_column(JSONType, nullable=True, default=None)
    #: The cron expression of a recurring job; NULL for a one-off job.
    cron_schedule: Mapped[str | None] = mapped_column(Text, default=None)
    #: Whether a failed run schedules a retry row.
    auto_reschedule_on_failure: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    #: Milliseconds between a failure and its retry's due time.
    auto_reschedule_on_failure_delay: Mapped[int] = mapped_column(
        BigInteger, default=0, server_default="0"
    )
    #: Milliseconds a successful row is kept after it finished.
    remove_delay: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    #: When the removal job may delete a successful row (finished + remove_delay).
    remove_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    #: The earlier row this one follows (cron occurrence or retry); NULL for a first
    #: job, and set NULL when that earlier row is removed.
    rescheduled_from_job: Mapped[int | None] = mapped_column(
        BigInteger,
        ForeignKey(
            "worker_jobs.id", ondelete="SET NULL", name="fk_worker_jobs_rescheduled_from_job"
        ),
        default=None,
    )
    #: When the dispatcher last sent the row to the broker (NULL: not sent).
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    #: Celery task id of the current dispatch. It is the attempt token: a worker's
    #: claim, heartbeat and finish only apply while it still matches.
    task_id: Mapped[str | None] = mapped_column(Text, default=None)
    #: ``hostname:pid`` of the worker process that claimed the current attempt.
    worker: Mapped[str | None] = mapped_column(Text, default=None)
    #: Last sign of life from the worker running the job.
    heartbeat: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    #: How many times a worker claimed the row.
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: How many times the dispatcher recovered the row (lost message, dead worker).
    recoveries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: When the row was written.
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    #: When the row was last changed.
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())

    @property
    def state(self) -> JobState:
        """The job's state, derived from its timestamps."""
        return job_state(self)

    @property
    def is_cron(self) -> bool:
        """Whether the job recurs on a cron schedule."""
        return self.cron_schedule is not None

    def __repr__(self) -> str:
        return (
            f"WorkerJob(id={self.id!r}, type={self.type!r}, user_id={self.user_id!r}, "
            f"due={self.due!r}, state={self.state.value!r})"
        )


class WorkerJobMinute(Base):
    """What the rows that finished in one minute came to, per job type, once removed.

    Removal deletes finished rows (succeeded ones a minute after they finish,
    by default) and, in the same transaction, adds them here. The console's
    chart of the last hour counts the rows still in ``worker_jobs`` plus these,
    so every finished row is counted once, whether it was removed or not.
    """

    __tablename__ = "worker_job_minutes"

    #: The minute (UTC, seconds zero) in which the rows finished.
    minute: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    #: Their job type.
    type: Mapped[str] = mapped_column(Text, primary_key=True)
    succeeded: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    failed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cancelled: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: How many of them ran (started by a worker), and their start lags (started - due).
    ran: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    lag_sum: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    lag_max: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")


class _IsCancellation(FunctionElement[bool]):
    """SQL for :func:`is_cancellation`: ``result.cancelled`` is the JSON value ``true``."""

    type = Boolean()
    inherit_cache = True
    name = "is_cancellation"


@compiles(_IsCancellation, "postgresql")
def _is_cancellation_pg(element: _IsCancellation, compiler: Any, **kw: Any) -> str:
    return f"(({compiler.process(element.clauses, **kw)}) -> '{CANCELLED_MARK}') = 'true'::jsonb"


@compiles(_IsCancellation)
def _is_cancellation_default(element: _IsCancellation, compiler: Any, **kw: Any) -> str:
    # SQLite: json_type tells the JSON literal true from the number 1.
    return f"json_type({compiler.process(element.clauses, **kw)}, '$.{CANCELLED_MARK}') = 'true'"


def state_expression() -> ColumnElement[str]:
    """The SQL form of :func:`job_state`, for filtering and counting by state."""
    t = WorkerJob.__table__.c
    return case(
        (t.finished.isnot(None) & (t.success == True), JobState.SUCCEEDED.value),  # noqa: E712
        (t.finished.isnot(None) & _IsCancellation(t.result), JobState.CANCELLED.value),
        (t.finished.isnot(None), JobState.FAILED.value),
        (t.started.isnot(None), JobState.RUNNING.value),
        (t.dispatched_at.isnot(None), JobState.DISPATCHED.value),
        else_=JobState.PENDING.value,
    )


def state_condition(state: JobState) -> ColumnElement[bool]:
    """A row is in ``state``: the branch of :func:`state_expression` as a plain predicate.

    Written on the columns themselves, so that PostgreSQL can use the partial
    indexes whose predicates say the same (a CASE compared to a value it cannot).
    """
    t = WorkerJob.__table__.c
    finished = t.finished.isnot(None)
    unfinished = t.finished.is_(None)
    conditions: dict[JobState, ColumnElement[bool]] = {
        JobState.SUCCEEDED: finished & (t.success == True),  # noqa: E712
        JobState.CANCELLED: finished & (t.success == False) & _IsCancellation(t.result),  # noqa: E712
        JobState.FAILED: finished
        & (t.success == False)  # noqa: E712
        & ~func.coalesce(_IsCancellation(t.result), False),
        JobState.RUNNING: unfinished & t.started.isnot(None),
        JobState.DISPATCHED: unfinished & t.started.is_(None) & t.dispatched_at.isnot(None),
        JobState.PENDING: unfinished & t.started.is_(None) & t.dispatched_at.is_(None),
    }
    return conditions[state]


class _Minute(FunctionElement[datetime]):
    """SQL for the minute (UTC, seconds zero) a timestamp falls in."""

    type = UTCDateTime()
    inherit_cache = True
    name = "minute_of"


@compiles(_Minute, "postgresql")
def _minute_pg(element: _Minute, compiler: Any, **kw: Any) -> str:
    return f"date_trunc('minute', {compiler.process(element.clauses, **kw)})"


@compiles(_Minute)
def _minute_default(element: _Minute, compiler: Any, **kw: Any) -> str:
    # SQLite stores UTC text; the bucket keeps the same text form so that it reads back.
    return f"strftime('%Y-%m-%d %H:%M:00.000000', {compiler.process(element.clauses, **kw)})"


class _ConsoleKey(FunctionElement[Any]):
    """SQL for :func:`console_key`."""

    inherit_cache = True
    name = "console_key"


@compiles(_ConsoleKey, "postgresql")
def _console_key_pg(element: _ConsoleKey, compiler: Any, **kw: Any) -> str:
    (column,) = element.clauses
    sql = compiler.process(column, **kw)
    if column.name in ("type", "task_id"):
        return f'({sql} COLLATE "C")'
    if column.name == "user_id":
        return f"(CAST({sql} AS BIGINT))"
    return _UTC.format(sql)


@compiles(_ConsoleKey)
def _console_key_default(element: _ConsoleKey, compiler: Any, **kw: Any) -> str:
    (column,) = element.clauses
    return str(compiler.process(column, **kw))


#: The columns :func:`console_key` keys.
CONSOLE_KEYS = ("type", "user_id", "task_id", "due", "finished")


def console_key(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """``column`` (type, user_id, task_id, due or finished) as the console's indexes key it.

    On PostgreSQL an expression equal in value to the column (the text
    columns ``COLLATE "C"``, ``CAST(user_id AS BIGINT)``, the instant through
    UTC and back), which the console's filters spell out and nothing else does: the console's
    indexes serve the console alone, and never enter the plans of the
    statements on the hot path (a plain ``(due, id)`` index, for one, could be
    picked by the dispatcher's claim on a table without statistics and scan
    every finished row). Elsewhere, the column itself.
    """
    name = getattr(column, "name", None)
    if name not in CONSOLE_KEYS:
        raise ValueError(f"console_key keys one of {CONSOLE_KEYS}, not {name!r}")
    key = _ConsoleKey(column)
    key.type = column.type
    return key


def minute_of(column: ColumnElement[datetime]) -> ColumnElement[datetime]:
    """The minute ``column`` falls in, as SQL (grouping finished rows for the chart)."""
    return _Minute(column)


class _Seconds(FunctionElement[float]):
    """SQL for the seconds from one timestamp to another."""

    type = Float()
    inherit_cache = True
    name = "seconds_between"


@compiles(_Seconds, "postgresql")
def _seconds_pg(element: _Seconds, compiler: Any, **kw: Any) -> str:
    start, end = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"extract(epoch from ({end}) - ({start}))"


@compiles(_Seconds)
def _seconds_default(element: _Seconds, compiler: Any, **kw: Any) -> str:
    start, end = (compiler.process(clause, **kw) for clause in element.clauses)
    return f"((julianday({end}) - julianday({start})) * 86400.0)"


def seconds_between(
    start: ColumnElement[datetime], end: ColumnElement[datetime]
) -> ColumnElement[float]:
    """``end - start`` in seconds, as SQL (a job's start lag: due to started)."""
    return _Seconds(start, end)


__all__ = [
    "Base",
    "JSONType",
    "JobState",
    "UTCDateTime",
    "WorkerJob",
    "WorkerJobMinute",
    "console_key",
    "minute_of",
    "seconds_between",
    "state_condition",
    "state_expression",
]
