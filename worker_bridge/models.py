"""The ``worker_jobs`` row, ``WorkerJob``, and its derived state.

The table stores timestamps, not a status: the state of a row is derived from
them in exactly one place, :func:`job_state` (Python) and
:func:`state_expression` (SQL), which must agree.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
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


class Base(DeclarativeBase):
    """Declarative base of worker_bridge's tables."""


class JobState(enum.StrEnum):
    """Where a job is in its life, derived from the row's timestamps."""

    PENDING = "pending"  #: waiting for its due time, or due and not yet sent
    DISPATCHED = "dispatched"  #: sent to the broker, not yet started by a worker
    RUNNING = "running"  #: claimed by a worker, not finished
    SUCCEEDED = "succeeded"  #: run() returned
    FAILED = "failed"  #: run() raised, timed out, or could not be run
    CANCELLED = "cancelled"  #: superseded by a newer job, or cancelled by hand


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
    #: Hostname of the worker that claimed the current attempt.
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


@dataclass(frozen=True, slots=True)
class NewJob:
    """A validated job about to be written: what the scheduling API and the
    task wrapper's follow-ups hand to the store."""

    type: str
    user_id: int
    data: dict[str, Any]
    due: datetime
    cron_schedule: str | None = None
    auto_reschedule_on_failure: bool = False
    #: Milliseconds.
    auto_reschedule_on_failure_delay: int = 0
    #: Milliseconds.
    remove_delay: int = 0
    rescheduled_from_job: int | None = None


def is_cancellation(result: Any) -> bool:
    """Whether a failed row's result records a cancellation."""
    return isinstance(result, dict) and result.get(CANCELLED_MARK) is True


CANCELLED_MARK = "cancelled"


def job_state(job: WorkerJob) -> JobState:
    """Derive a row's state; :func:`state_expression` is the same rule in SQL."""
    if job.finished is not None:
        if job.success:
            return JobState.SUCCEEDED
        return JobState.CANCELLED if is_cancellation(job.result) else JobState.FAILED
    if job.started is not None:
        return JobState.RUNNING
    if job.dispatched_at is not None:
        return JobState.DISPATCHED
    return JobState.PENDING


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
