"""Acting on a job from outside its worker: cancel it, and stop it where it runs.

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

from worker_bridge.bridge import BridgeApp, get_bridge
from worker_bridge.errors import JobFinishedError, JobNotFoundError
from worker_bridge.job import Job, JobState
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
        stopped = _revoke(celery or bridge.celery, before.task_id, job_id)
    return Cancellation(before, after, stopped)


def _revoke(celery: Celery | None, task_id: str, job_id: int) -> bool:
    if celery is None:
        from worker_bridge.celery_app import default_app

        celery = default_app()
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
