"""Acting on jobs from outside their workers: cancel (one, or every match of a filter),
run a pending job now, run a finished one again.

The table decides: a cancel clears the row's attempt token in the same write
that ends it, so whatever the running attempt does afterwards (heartbeat,
result, follow-up) is refused. Celery then stops the run itself: a revoke of
the attempt's task id, with ``terminate`` (SIGTERM to the prefork pool
process running it; the thread, gevent and eventlet pools cannot terminate a
task, and there the run goes on to its end, its result refused). The killed
attempt is not taken for a lost one: the worker knows it revoked it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError

from worker_bridge.bridge import BridgeApp, get_bridge
from worker_bridge.errors import JobFinishedError, JobNotFoundError, JobStateError
from worker_bridge.job import Job, JobState, NewJob
from worker_bridge.store.reports import JobFilter
from worker_bridge.store.schema import CANCELLED_BY_HAND

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Cancellation:
    """What :func:`cancel_job` did."""

    #: The row before the cancel (its state says what was stopped).
    before: Job
    #: The row as the cancel left it.
    after: Job
    #: Whether a running attempt was told to stop (a revoke with terminate was sent).
    stopped: bool


def cancel_job(
    job_id: int,
    *,
    reason: str = CANCELLED_BY_HAND,
    bridge: BridgeApp | None = None,
    celery: Celery | None = None,
) -> Cancellation:
    """Cancel a pending, dispatched or running job; a running one is stopped too.

    A cron job's schedule ends with it (the cancelled row has no follow-up).
    A running job is stopped by a revoke of its task id (``celery``, else the
    bridge's Celery app, else the default one), except a row of a batch that
    other live rows still share: the batch goes on, and the row is skipped
    if its turn has not come (its result is refused if it has). Raises
    :class:`JobNotFoundError` for an unknown id and :class:`JobFinishedError`
    for a row that has already finished.
    """
    bridge = bridge or get_bridge()
    store = bridge.store

    def cancel() -> tuple[Job | None, bool, Job | None, set[int]]:
        with bridge.engine.begin() as connection:
            before = store.get_job(connection, job_id)
            if before is None:
                return None, False, None, set()
            cancelled = store.cancel_job(connection, job_id, now=datetime.now(UTC), reason=reason)
            after = store.get_job(connection, job_id)
            sharing = (
                store.live_rows_of_attempt(connection, before.type, before.task_id)
                if cancelled and before.task_id
                else set()
            )
        return before, cancelled, after, sharing

    # Safe to run again after a lost connection: a second cancel of the same
    # row finds it cancelled, and says so.
    before, cancelled, after, sharing = bridge.reconnecting(f"cancelling job {job_id}", cancel)
    if before is None or after is None:
        raise JobNotFoundError(f"no job with id {job_id}")
    if not cancelled:
        raise JobFinishedError(
            f"job {job_id} has already finished ({after.state.value}): only a pending, "
            "dispatched or running job can be cancelled"
        )
    stopped = False
    if before.state is JobState.RUNNING and before.task_id and not sharing:
        stopped = _revoke(celery_of(bridge, celery), before.task_id, job_id)
    return Cancellation(before, after, stopped)


@dataclass(frozen=True, slots=True)
class BulkCancellation:
    """What :func:`cancel_jobs` did."""

    #: How many live rows it cancelled.
    cancelled: int
    #: How many running attempts it told to stop.
    stopped: int


#: Rows a bulk cancel locks and cancels per transaction.
BULK_CHUNK = 1000


def cancel_jobs(
    where: JobFilter,
    *,
    up_to: int | None = None,
    reason: str = CANCELLED_BY_HAND,
    bridge: BridgeApp | None = None,
    celery: Celery | None = None,
) -> BulkCancellation:
    """Cancel every live row matching ``where`` (with an id up to ``up_to``), stopping running ones.

    ``up_to`` bounds the action to the rows that existed when the operator
    looked (the console's preview): rows scheduled since are left alone, and
    a filter that new rows keep matching cannot keep the cancel going. Rows
    are cancelled in transactions of :data:`BULK_CHUNK`; running ones are
    stopped as :func:`cancel_job` stops them. An empty filter is refused:
    cancelling every job is not something to do by accident.
    """
    if where.is_empty:
        raise ValueError("a bulk cancel needs a filter: refusing to cancel every live job")
    bridge = bridge or get_bridge()
    store = bridge.store

    def chunk() -> tuple[int, list[tuple[str, int]]]:
        with bridge.engine.begin() as connection:
            ids = store.live_ids(connection, where, limit=BULK_CHUNK, up_to=up_to)
            running = store.running_attempts(connection, ids)
            count = store.cancel_jobs(connection, ids, now=datetime.now(UTC), reason=reason)
            stop = [
                (task_id, job_id)
                for job_id, job_type, task_id in running
                if not store.live_rows_of_attempt(connection, job_type, task_id)
            ]
        return count, stop

    cancelled = stopped = 0
    while True:
        # Safe to run again: a lost reply leaves rows cancelled, and the next
        # chunk no longer finds them live.
        count, stop = bridge.reconnecting("cancelling jobs in bulk", chunk)
        cancelled += count
        for task_id, job_id in stop:
            stopped += _revoke(celery_of(bridge, celery), task_id, job_id)
        if count < BULK_CHUNK:
            return BulkCancellation(cancelled, stopped)


def run_now(job_id: int, *, bridge: BridgeApp | None = None) -> Job:
    """Make a pending job due now (the dispatchers are woken); return the row.

    A pending job already due is returned unchanged. Raises
    :class:`JobNotFoundError` for an unknown id, and :class:`JobStateError`
    for a job that is not pending (dispatched, running or finished).
    """
    bridge = bridge or get_bridge()
    store = bridge.store

    def move() -> Job | None:
        with bridge.engine.begin() as connection:
            store.run_now(connection, job_id, now=datetime.now(UTC))
            return store.get_job(connection, job_id)

    job = bridge.reconnecting(f"running job {job_id} now", move)
    if job is None:
        raise JobNotFoundError(f"no job with id {job_id}")
    if job.state is not JobState.PENDING:
        raise JobStateError(f"job {job_id} is {job.state.value}: only a pending job can be run now")
    return job


def run_again(job_id: int, *, bridge: BridgeApp | None = None) -> Job:
    """Schedule a finished job again, due now, as a new row that follows it; return the new row.

    The new row copies the job's type, user, data, cron schedule and
    options, and its ``rescheduled_from_job`` is the job: the history stays,
    and the lineage shows the run again. It is scheduled as
    :func:`~worker_bridge.schedule_job` schedules, so a pending job of the
    same type and user is superseded. Raises :class:`JobNotFoundError` for
    an unknown id and :class:`JobStateError` for a live job, or one that
    already has a follow-up (run that one again instead: a row has one
    follow-up at most).
    """
    bridge = bridge or get_bridge()
    store = bridge.store
    # One instant for every try: a try whose commit went through but whose reply
    # a lost connection took left a follow-up created at exactly this instant.
    now = datetime.now(UTC)

    def insert() -> Job:
        with bridge.engine.begin() as connection:
            job = store.get_job(connection, job_id)
            if job is None:
                raise JobNotFoundError(f"no job with id {job_id}")
            if job.finished is None:
                raise JobStateError(
                    f"job {job_id} is {job.state.value}: only a finished job can be run again"
                )
            store.lock_pair(connection, job.type, job.user_id)
            follow_up = store.follow_up_of(connection, job_id)
            if follow_up is not None:
                earlier_try = store.get_job(connection, follow_up)
                if earlier_try is not None and earlier_try.created_at == now:
                    return earlier_try
                raise _has_follow_up(job_id, follow_up)
            new_job = NewJob(
                type=job.type, user_id=job.user_id, data=job.data, due=now,
                cron_schedule=job.cron_schedule,
                auto_reschedule_on_failure=job.auto_reschedule_on_failure,
                auto_reschedule_on_failure_delay=job.auto_reschedule_on_failure_delay,
                remove_delay=job.remove_delay, rescheduled_from_job=job_id,
            )  # fmt: skip
            try:
                with connection.begin_nested():
                    return store.supersede_and_insert(
                        connection, new_job, now=now, stale_before=now - bridge.settings.stale_after
                    )
            except IntegrityError:
                # A follow-up written between our look and our insert (its
                # worker's retry, or a second click): the unique index refused ours.
                follow_up = store.follow_up_of(connection, job_id)
                if follow_up is None:
                    raise
                raise _has_follow_up(job_id, follow_up) from None

    return bridge.reconnecting(f"running job {job_id} again", insert)


def _has_follow_up(job_id: int, follow_up: int) -> JobStateError:
    return JobStateError(
        f"job {job_id} already has a follow-up, job {follow_up}: run that one again instead "
        "(a row is followed by one row at most)"
    )


def celery_of(bridge: BridgeApp, celery: Celery | None = None) -> Celery:
    """The Celery app to reach the workers through: ``celery``, else the bridge's, else
    the default one (built from the config module on first use)."""
    if celery is not None:
        return celery
    if bridge.celery is not None:
        return bridge.celery
    from worker_bridge.celery_app import default_app

    return default_app()


def _revoke(celery: Celery, task_id: str, job_id: int) -> bool:
    try:
        celery.control.revoke(task_id, terminate=True, signal="SIGTERM")
    except Exception as exc:
        # The row is cancelled all the same: the run ends by itself, its result refused.
        logger.warning(
            "job %s cancelled, but its running attempt could not be told to stop (%s): it "
            "runs to its end and its result is refused",
            job_id, exc, extra={"job_id": job_id},
        )  # fmt: skip
        return False
    logger.info("job %s cancelled and its running attempt %s revoked", job_id, task_id)
    return True
