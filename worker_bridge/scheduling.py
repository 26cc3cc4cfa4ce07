"""The scheduling API: ``schedule_job`` and ``schedule_cron_job``.

A job is validated completely before anything is written or cancelled; then,
in one transaction, the pending jobs it supersedes are cancelled and it is
inserted. Pass ``session`` to make that part of your own transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from worker_bridge.bridge import BridgeApp, get_bridge
from worker_bridge.cron import next_fire, validate_cron
from worker_bridge.errors import (
    InvalidDelayError,
    InvalidDueError,
    InvalidJobConfigError,
    InvalidJobDataError,
    InvalidJobError,
    InvalidUserIdError,
    PendingJobConflictError,
)
from worker_bridge.job import Job, NewJob
from worker_bridge.payload import json_problem, serialized_size

logger = logging.getLogger(__name__)

_INT32 = (-(2**31), 2**31 - 1)
_MAX_DELAY_MS = 10 * 365 * 24 * 3600 * 1000  # ten years: anything longer is a unit mistake

T = TypeVar("T")

#: Where a job is written: a Session or Connection whose transaction the caller owns.
SessionLike = Session | Connection


@dataclass
class WorkerJobConfig:
    """What to run, for whom, and when."""

    #: Name of a module in the jobs package.
    type: str
    #: User the job is for; 0 for system-level jobs.
    user_id: int
    #: When the job must run; None means now. Must be timezone-aware.
    due: datetime | None = None
    #: JSON object passed to ``run()`` as ``params.job.data``.
    data: dict[str, Any] | None = None
    #: Whether a failed run schedules a retry.
    auto_reschedule_on_failure: bool = False
    #: Wait before the retry: milliseconds (int) or a timedelta.
    auto_reschedule_on_failure_delay: int | timedelta = 0
    #: How long a succeeded row is kept: milliseconds (int) or a timedelta.
    remove_delay: int | timedelta = 0


def schedule_job(
    config: WorkerJobConfig, *, session: SessionLike | None = None, bridge: BridgeApp | None = None
) -> Job:
    """Schedule a one-off job, cancelling the pending job it supersedes.

    Without ``session`` the job is committed before the call returns; with it,
    the job exists once the caller commits. Raises a subclass of
    :class:`~worker_bridge.errors.InvalidJobError` (also ValueError or
    TypeError) for bad input, before anything is written.
    """
    return _schedule(config, None, session, bridge)


def schedule_cron_job(
    config: WorkerJobConfig,
    cron: str,
    *,
    session: SessionLike | None = None,
    bridge: BridgeApp | None = None,
) -> Job:
    """Schedule a recurring job on ``cron``; its first row is due at the next fire time.

    ``cron`` has 5 fields (minute precision) or 6 with seconds first
    (``*/3 * * * * *``: every 3 seconds), evaluated in the Celery app's
    ``timezone``. The first fire time is the first after ``config.due`` (now
    when None). Each run schedules the next occurrence when it ends.
    """
    return _schedule(config, cron, session, bridge)


def schedule_jobs(
    configs: Sequence[WorkerJobConfig],
    *,
    session: SessionLike | None = None,
    bridge: BridgeApp | None = None,
) -> list[Job]:
    """Schedule many one-off jobs at once, as if by ``schedule_job`` in order.

    Every config is validated before anything is written; the first bad one
    raises, naming its index. On PostgreSQL the whole batch takes a fixed
    number of statements, however many jobs it holds; the jobs come back in
    the order of ``configs``.
    """
    bridge = bridge or get_bridge()
    now = datetime.now(UTC)
    new_jobs = []
    for index, config in enumerate(configs):
        try:
            new_jobs.append(build_new_job(config, None, now=now, bridge=bridge))
        except InvalidJobError as exc:
            raise type(exc)(f"configs[{index}]: {exc}") from exc
    stale_before = now - bridge.settings.stale_after

    def write() -> list[Job]:
        return in_transaction(
            bridge,
            session,
            lambda conn: bridge.store.supersede_and_insert_many(
                conn, new_jobs, now=now, stale_before=stale_before
            ),
        )

    if session is not None:
        return write()
    # Safe to run again after a lost connection, even one that lost only the
    # reply to a committed batch: the second batch supersedes the first.
    return bridge.reconnecting(f"scheduling {len(new_jobs)} jobs", write)


def _schedule(
    config: WorkerJobConfig,
    cron: str | None,
    session: SessionLike | None,
    bridge: BridgeApp | None,
) -> Job:
    bridge = bridge or get_bridge()
    now = datetime.now(UTC)
    new_job = build_new_job(config, cron, now=now, bridge=bridge)
    stale_before = now - bridge.settings.stale_after
    if session is None:
        # Safe to run again after a lost connection, even one that lost only
        # the reply to a committed insert: the second job supersedes the first.
        job = bridge.reconnecting(
            f"scheduling a {new_job.type} job for user {new_job.user_id}",
            lambda: _insert_optimistically(bridge, new_job, now=now, stale_before=stale_before),
        )
    else:
        job = in_transaction(
            bridge,
            session,
            lambda conn: bridge.store.supersede_and_insert(
                conn, new_job, now=now, stale_before=stale_before
            ),
        )
    logger.debug(
        "scheduled job %s (%s, user %s) due %s",
        job.id,
        job.type,
        job.user_id,
        job.due,
        extra={"job_id": job.id, "job_type": job.type, "user_id": job.user_id},
    )
    return job


#: Optimistic single-statement attempts before falling back to the pair's lock.
_OPTIMISTIC_ATTEMPTS = 3


def _insert_optimistically(
    bridge: BridgeApp, new_job: NewJob, *, now: datetime, stale_before: datetime
) -> Job:
    # Our own transaction: one autocommit statement (cancel + insert) is
    # atomic, and the one-pending unique index catches a concurrent writer of
    # the same pair; retrying then cancels that writer's job, which is what
    # serialising on the lock would have done. Under sustained contention on
    # one pair, fall back to the lock rather than retry without end.
    for _ in range(_OPTIMISTIC_ATTEMPTS):
        try:
            with bridge.autocommit.begin() as connection:
                return bridge.store.supersede_and_insert(
                    connection, new_job, now=now, stale_before=stale_before, serialize=False
                )
        except PendingJobConflictError:
            continue
    with bridge.engine.begin() as connection:
        return bridge.store.supersede_and_insert(
            connection, new_job, now=now, stale_before=stale_before
        )


def in_transaction(
    bridge: BridgeApp, session: SessionLike | None, work: Callable[[Connection], T]
) -> T:
    """Run ``work`` on the caller's connection, or in a transaction of our own.

    On the caller's connection nothing is retried: the transaction is the
    caller's. A lost connection keeps its SQLAlchemy error, with a note that
    says so.
    """
    if session is None:
        with bridge.engine.begin() as connection:
            return work(connection)
    if isinstance(session, Session):
        connection = session.connection()
    elif isinstance(session, Connection):
        connection = session
    else:
        raise TypeError(
            f"session must be a SQLAlchemy Session or Connection, got {type(session).__name__}"
        )
    try:
        return work(connection)
    except DBAPIError as exc:
        if bridge.store.is_disconnect(exc):
            exc.add_note(
                "worker_bridge: the connection of the session passed to the scheduling "
                "API was lost (the database restarted or ended it); the transaction is "
                "yours, so nothing was retried: roll it back and run it again"
            )
        raise


def build_new_job(
    config: WorkerJobConfig, cron: str | None, *, now: datetime, bridge: BridgeApp
) -> NewJob:
    """Validate ``config`` (and ``cron``) into the row to write; raise on bad input."""
    if not isinstance(config, WorkerJobConfig):
        raise InvalidJobConfigError(f"expected a WorkerJobConfig, got {type(config).__name__}")
    job_type = bridge.jobs.check_type(config.type)
    user_id = config.user_id
    if isinstance(user_id, bool) or not isinstance(user_id, int):
        raise InvalidUserIdError(f"user_id must be an int, got {type(user_id).__name__}")
    if not _INT32[0] <= user_id <= _INT32[1]:
        raise InvalidUserIdError(f"user_id {user_id} does not fit in a 32-bit integer")
    data = check_data(config.data, bridge.settings.max_data_bytes)
    due = check_due(config.due, now)
    if not isinstance(config.auto_reschedule_on_failure, bool):
        raise InvalidJobConfigError("auto_reschedule_on_failure must be a bool")
    retry_delay = delay_ms(
        config.auto_reschedule_on_failure_delay, "auto_reschedule_on_failure_delay"
    )
    remove_delay = delay_ms(config.remove_delay, "remove_delay")
    cron_schedule = None
    if cron is not None:
        cron_schedule = validate_cron(cron)
        due = next_fire(cron_schedule, due, bridge.settings.timezone)
    return NewJob(
        type=job_type,
        user_id=user_id,
        data=data,
        due=due,
        cron_schedule=cron_schedule,
        auto_reschedule_on_failure=config.auto_reschedule_on_failure,
        auto_reschedule_on_failure_delay=retry_delay,
        remove_delay=remove_delay,
    )


def check_data(data: object, max_bytes: int) -> dict[str, Any]:
    """``data`` as it will be stored ({} for None), or InvalidJobDataError."""
    if data is None:
        return {}
    if type(data) is not dict:
        raise InvalidJobDataError(f"data must be a dict (a JSON object), got {type(data).__name__}")
    problem = json_problem(data)
    if problem:
        raise InvalidJobDataError(f"data is not storable JSON: {problem}")
    size = serialized_size(data)
    if size > max_bytes:
        raise InvalidJobDataError(
            f"data is {size} bytes as JSON, over the limit of {max_bytes} "
            "(worker_bridge_max_data_bytes)"
        )
    return data


def check_due(due: object, now: datetime) -> datetime:
    """``due`` as aware UTC (``now`` for None), or InvalidDueError."""
    if due is None:
        return now
    if not isinstance(due, datetime):
        raise InvalidDueError(f"due must be a datetime, got {type(due).__name__}")
    if due.tzinfo is None or due.utcoffset() is None:
        raise InvalidDueError(
            f"due {due.isoformat()} is naive: pass a timezone-aware datetime "
            "(e.g. datetime.now(UTC))"
        )
    try:
        return due.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise InvalidDueError(f"due {due.isoformat()} is out of range in UTC") from exc


def delay_ms(value: object, name: str) -> int:
    """A delay in whole milliseconds from an int (ms) or a timedelta."""
    if isinstance(value, timedelta):
        ms = value // timedelta(milliseconds=1)
    elif isinstance(value, int) and not isinstance(value, bool):
        ms = value
    else:
        raise InvalidDelayError(
            f"{name} must be milliseconds (int) or a timedelta, got {type(value).__name__}"
        )
    if ms < 0:
        raise InvalidDelayError(f"{name} must not be negative, got {value!r}")
    if ms > _MAX_DELAY_MS:
        raise InvalidDelayError(f"{name} of {ms} ms is over ten years")
    return ms
