"""The job value: an immutable ``Job`` read from the table, and a ``NewJob`` about to be written.

A ``Job`` flows from the store to the dispatcher, to ``run()`` (as
``params.job``) and back into the outcome. It is frozen, and ``run()`` gets
its own copy of ``data``, so nothing a job does to its value reaches its retry
or its next cron row: those are built from the row as the table stored it.
The ORM mapping of the table (``worker_bridge.models.WorkerJob``) is kept for
applications that query ``worker_jobs`` themselves; worker_bridge's own code
passes ``Job`` values.

The table stores timestamps, not a status: the state of a row is derived from
them in exactly one place, :func:`job_state` here and
``worker_bridge.models.state_expression`` in SQL, which must agree.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any, Protocol

#: The key of a cancelled row's result that marks it cancelled (JSON ``true``).
CANCELLED_MARK = "cancelled"


class JobState(enum.StrEnum):
    """Where a job is in its life, derived from the row's timestamps."""

    PENDING = "pending"  #: waiting for its due time, or due and not yet sent
    DISPATCHED = "dispatched"  #: sent to the broker, not yet started by a worker
    RUNNING = "running"  #: claimed by a worker, not finished
    SUCCEEDED = "succeeded"  #: run() returned
    FAILED = "failed"  #: run() raised, timed out, or could not be run
    CANCELLED = "cancelled"  #: superseded by a newer job, or cancelled by hand


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """One row of ``worker_jobs``: a one-off run or one occurrence of a cron schedule.

    Every timestamp is timezone-aware UTC. Each field says who writes it and
    when, and what NULL (None) means.
    """

    #: Row id, assigned on insert.
    id: int
    #: Name of the job module in the jobs package that runs it.
    type: str
    #: User the job is for; 0 for system-level jobs.
    user_id: int
    #: The JSON object passed to run() as ``params.job.data`` (run() gets a copy).
    data: dict[str, Any]
    #: When the job must run. Set by the scheduler; never None.
    due: datetime
    #: When a worker claimed the job (None until then). Cancellation sets it too.
    started: datetime | None = None
    #: When the job ended: ran, failed or was cancelled. None while it is live.
    finished: datetime | None = None
    #: True if run() returned, False if it failed or was cancelled, None until finished.
    success: bool | None = None
    #: What run() returned on success; ``{"error": ...}`` on failure or cancellation.
    result: Any = None
    #: The cron expression of a recurring job; None for a one-off job.
    cron_schedule: str | None = None
    #: Whether a failed run schedules a retry row.
    auto_reschedule_on_failure: bool = False
    #: Milliseconds between a failure and its retry's due time.
    auto_reschedule_on_failure_delay: int = 0
    #: Milliseconds a successful row is kept after it finished.
    remove_delay: int = 0
    #: When the removal job may delete a successful row (finished + remove_delay);
    #: written by the worker with the result, None for failed and live rows.
    remove_at: datetime | None = None
    #: The earlier row this one follows (cron occurrence or retry); None for a first
    #: job, and set to None when that earlier row is removed.
    rescheduled_from_job: int | None = None
    #: When the dispatcher last sent the row to the broker (None: not sent, or
    #: recovered since).
    dispatched_at: datetime | None = None
    #: Celery task id of the current dispatch, written by the dispatcher. It is the
    #: attempt token: a worker's claim, heartbeat and finish apply only while it
    #: still matches. None while the row is not sent, and once it is cancelled.
    task_id: str | None = None
    #: ``hostname:pid`` of the worker process that claimed the current attempt.
    worker: str | None = None
    #: Last sign of life from the worker running the job (None when not running).
    heartbeat: datetime | None = None
    #: How many times a worker claimed the row.
    attempts: int = 0
    #: How many times the dispatcher recovered the row (lost message, dead worker).
    recoveries: int = 0
    #: When the row was written.
    created_at: datetime | None = None
    #: When the row was last changed.
    updated_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Sequence[Any], width: int | None = None) -> Job:
        """Build a Job from a row whose first columns are :data:`FIELDS`, in that order.

        ``width``: how many leading columns are the job's (the rest are extras).
        Built slot by slot rather than through ``__init__``, whose keyword
        handling costs twice as much: it matters for the thousands of rows of
        a batch or a dispatch. Timestamps come out in UTC, also from a driver
        row read in another session time zone.
        """
        values = list(row if width is None else row[:width])
        for index in _TIMESTAMP_POSITIONS:
            value = values[index]
            if value is not None and value.tzinfo is not UTC:
                values[index] = value.astimezone(UTC)
        job: Job = _new(cls)
        for setter, value in zip(_SETTERS, values, strict=True):
            setter(job, value)
        return job

    @property
    def state(self) -> JobState:
        """The job's state, derived from its timestamps."""
        return job_state(self)

    @property
    def is_cron(self) -> bool:
        """Whether the job recurs on a cron schedule."""
        return self.cron_schedule is not None

    def with_own_data(self) -> Job:
        """The same job with a deep copy of ``data``: what ``run()`` receives."""
        return replace(self, data=copy.deepcopy(self.data))

    def __repr__(self) -> str:
        return (
            f"Job(id={self.id!r}, type={self.type!r}, user_id={self.user_id!r}, "
            f"due={self.due!r}, state={self.state.value!r})"
        )


#: The names of a Job's fields, in the order ``from_row`` expects the columns.
FIELDS: tuple[str, ...] = tuple(spec.name for spec in fields(Job))
_TIMESTAMP_POSITIONS = tuple(
    FIELDS.index(name)
    for name in (
        "due", "started", "finished", "remove_at", "dispatched_at", "heartbeat", "created_at",
        "updated_at",
    )
)  # fmt: skip
_new = object.__new__
# Slot descriptors set a frozen instance's fields without its __setattr__ guard.
_SETTERS = tuple(getattr(Job, name).__set__ for name in FIELDS)


@dataclass(frozen=True, slots=True, kw_only=True)
class NewJob:
    """A validated job about to be written: what the scheduling API and the
    outcome of a run (its retry or next cron row) hand to the store."""

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


class _Stateful(Protocol):
    @property
    def finished(self) -> datetime | None: ...
    @property
    def started(self) -> datetime | None: ...
    @property
    def dispatched_at(self) -> datetime | None: ...
    @property
    def success(self) -> bool | None: ...
    @property
    def result(self) -> Any: ...


def is_cancellation(result: Any) -> bool:
    """Whether a failed row's result records a cancellation."""
    return isinstance(result, dict) and result.get(CANCELLED_MARK) is True


def job_state(job: _Stateful) -> JobState:
    """Derive a row's state (of a Job or an ORM row); the SQL form is ``state_expression``."""
    if job.finished is not None:
        if job.success:
            return JobState.SUCCEEDED
        return JobState.CANCELLED if is_cancellation(job.result) else JobState.FAILED
    if job.started is not None:
        return JobState.RUNNING
    if job.dispatched_at is not None:
        return JobState.DISPATCHED
    return JobState.PENDING
