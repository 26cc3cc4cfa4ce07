"""One attempt at a job: claim the row, call ``run()``, write the outcome.

The attempt token is the Celery task id: the dispatcher wrote it into the
row, and every write of an attempt (claim, heartbeat, finish, follow-up)
applies only while the row still carries it. A worker presumed dead that was
only slow therefore cannot overwrite the newer attempt's result or spawn a
second follow-up: its late write is refused and logged.

Nothing here imports Celery: the task wrapper (``tasks``) builds an
:class:`Attempt` from the message and runs it, and tests run one in process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from worker_bridge.bridge import BridgeApp
from worker_bridge.errors import DatabaseUnavailableError, JobFailedError
from worker_bridge.job import Job
from worker_bridge.metrics import FAILED, PROCESS, REFUSED, SUCCEEDED
from worker_bridge.outcome import FollowUpReason, Outcome, decide_outcome, error_result
from worker_bridge.params import JobParams, job_logger
from worker_bridge.store import WrittenOutcome
from worker_bridge.worker_process import WorkerProcess

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]

#: Longest a claim waits for a dispatcher's transaction to end (ms).
CLAIM_LOCK_TIMEOUT_MS = 30_000


def utcnow() -> datetime:
    """The wall clock, timezone-aware UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class AttemptReport:
    """What an attempt did."""

    #: The row as claimed, or None when the claim was refused.
    job: Job | None = None
    #: What was decided for the row, or None when it did not run.
    outcome: Outcome | None = None
    #: What the store wrote, or None when the attempt wrote nothing.
    written: WrittenOutcome | None = None
    #: What ``run()`` raised, if it raised.
    error: BaseException | None = None

    @property
    def refused(self) -> bool:
        """Whether the row refused this attempt: its claim, or its result.

        A duplicate or outdated message, or one for a cancelled or deleted
        row, is refused at the claim; an attempt cancelled or recovered while
        it ran has its result refused.
        """
        return self.job is None or (self.written is not None and not self.written.written)

    def failure(self) -> BaseException | None:
        """What the Celery task raises for a failed run: ``run()``'s own exception,
        else a :class:`JobFailedError` naming the recorded error; None on success."""
        if self.outcome is None or self.outcome.success:
            return None
        if self.error is None or not plain_exception(self.error):
            return failed_error(self.outcome.result)
        return self.error


class Attempt:
    """One delivery of a job's message to a worker process.

    ``soft_timeouts`` are the exception types a soft time limit raises inside
    ``run()`` (Celery's ``SoftTimeLimitExceeded``), and ``soft_limit`` its
    value in seconds, for the message.
    """

    def __init__(
        self,
        process: WorkerProcess,
        *,
        job_id: int,
        token: str,
        job_type: str,
        worker: str,
        clock: Clock = utcnow,
        soft_timeouts: tuple[type[BaseException], ...] = (),
        soft_limit: float | None = None,
    ) -> None:
        self.process = process
        self.bridge: BridgeApp = process.bridge
        self.job_id = job_id
        self.token = token
        self.job_type = job_type
        self.worker = worker
        self.clock = clock
        self.soft_timeouts = soft_timeouts
        self.soft_limit = soft_limit

    def execute(self) -> AttemptReport:
        """Claim, run and write the outcome; what a task does with its message."""
        patience = self.bridge.settings.redispatch_after.total_seconds() / 2
        job = self.bridge.reconnecting(f"claiming job {self.job_id}", self.claim, patience)
        if job is None:
            return AttemptReport()
        if job.type != self.job_type:
            outcome = mismatch_outcome(self.job_type, job)
            return AttemptReport(job, outcome, self.write(job, outcome))
        heartbeat = self.process.heartbeat
        heartbeat.add(job.id, self.token)
        log = job_logger(job)
        started = time.monotonic()
        log.info("job %s (%s, user %s) started", job.id, job.type, job.user_id)
        try:
            returned, error = self.call(job, log)
            outcome = self.decide(job, returned, error)
            heartbeat.ending(job.id)
            written = self.write(job, outcome)
        finally:
            heartbeat.remove(job.id)
        log_outcome(log, job, outcome, written, time.monotonic() - started)
        raised = error if isinstance(error, BaseException) else None
        return AttemptReport(job, outcome, written, raised)

    def claim(self) -> Job | None:
        """Start this attempt on its row; None (with one log line) if the row refuses it."""
        store = self.bridge.store
        # One autocommit UPDATE: the whole claim is a single round trip.
        with self.process.connection() as connection:
            claimed = store.claim_job(
                connection, self.job_id, self.token, worker=self.worker, now=self.clock()
            )
        if claimed is not None:
            return claimed
        # The message may have outrun the dispatcher's commit: wait for the row
        # to be free and look again before refusing it.
        with self.bridge.engine.begin() as connection:
            store.wait_for_dispatch_commit(
                connection, [self.job_id], timeout_ms=CLAIM_LOCK_TIMEOUT_MS
            )
        with self.bridge.autocommit.begin() as connection:
            claimed = store.claim_job(
                connection, self.job_id, self.token, worker=self.worker, now=self.clock()
            )
            if claimed is None:
                PROCESS.claim_refused(self.job_type)
                reason = store.describe_refusal(connection, self.job_id, self.token)
                logger.info(
                    "job %s: skipped: %s", self.job_id, reason, extra={"job_id": self.job_id}
                )
        return claimed

    def call(self, job: Job, log: Any) -> tuple[Any, BaseException | dict[str, Any] | None]:
        """Run the job's ``run()`` on its own copy of the row; (returned, error)."""
        return call_run(self.bridge, job, log, self.soft_timeouts, self.soft_limit)

    def decide(
        self, job: Job, returned: Any, error: BaseException | dict[str, Any] | None
    ) -> Outcome:
        """The outcome of a run that returned ``returned`` or failed with ``error``."""
        return decide_run(self.bridge, job, self.clock(), returned, error)

    def write(self, job: Job, outcome: Outcome) -> WrittenOutcome:
        """Write ``outcome`` for this attempt in one store call, retried through outages."""
        return write_outcome(self.process, job, self.token, outcome, clock=self.clock)


#: The ``exception`` of the error result of a run stopped by the soft time limit.
SOFT_TIME_LIMIT = "SoftTimeLimitExceeded"


def plain_exception(error: BaseException) -> bool:
    """Whether the Celery task may raise ``error`` as it is.

    Not a MemoryError (Celery re-raises it in the worker's main process, which
    would stop the whole worker), nor one of Celery's, billiard's or kombu's
    own exceptions (``Retry``, ``Reject``, ``Ignore``...: Celery would act on
    them): those are raised as a :class:`JobFailedError` naming the error.
    """
    if isinstance(error, MemoryError) or not isinstance(error, Exception):
        return False
    return type(error).__module__.split(".")[0] not in ("celery", "billiard", "kombu")


def failed_error(result: Any) -> JobFailedError:
    """The exception standing for a failure recorded as ``result`` ({"error", "exception"})."""
    if isinstance(result, dict):
        return JobFailedError(f"{result.get('exception')}: {result.get('error')}")
    return JobFailedError(repr(result))


def mismatch_outcome(job_type: str, job: Job) -> Outcome:
    """The failure of row ``job`` claimed by a message for another type's task."""
    return Outcome(
        success=False,
        result=error_result(
            f"message for task jobs.{job_type} named row {job.id} of type {job.type}",
            "TaskMismatchError",
        ),
        remove_at=None,
    )


def call_run(
    bridge: BridgeApp,
    job: Job,
    log: Any,
    soft_timeouts: tuple[type[BaseException], ...] = (),
    soft_limit: float | None = None,
) -> tuple[Any, BaseException | dict[str, Any] | None]:
    """Run ``job``'s ``run()`` on its own copy of the row; (returned, error).

    ``error`` is what it raised, or a ready error result when ``soft_timeouts``
    stopped it (its ``exception`` is :data:`SOFT_TIME_LIMIT`).
    """
    try:
        runner = bridge.jobs.runner(job.type)
        params = JobParams(app=bridge, log=log, job=job.with_own_data())
        if bridge.jobs.is_async(runner):
            return asyncio.run(runner(params)), None
        return runner(params), None
    except soft_timeouts:
        return None, error_result(
            f"job exceeded the soft time limit ({soft_limit} s) and was stopped", SOFT_TIME_LIMIT
        )
    except Exception as exc:
        return None, exc


def decide_run(
    bridge: BridgeApp,
    job: Job,
    now: datetime,
    returned: Any,
    error: BaseException | dict[str, Any] | None,
) -> Outcome:
    """The outcome of ``job``'s run that ended at ``now``, under the bridge's settings."""
    settings = bridge.settings
    return decide_outcome(
        job,
        now=now,
        timezone=settings.timezone,
        returned=returned,
        error=error,
        max_result_bytes=settings.max_result_bytes,
    )


def log_outcome(
    log: Any, job: Job, outcome: Outcome, written: WrittenOutcome, duration: float
) -> None:
    """The one line (and the metrics) of a finished run whose outcome was written."""
    if not written.written:
        PROCESS.finished(job.type, REFUSED, duration)
        return
    PROCESS.finished(job.type, SUCCEEDED if outcome.success else FAILED, duration)
    what = "succeeded" if outcome.success else f"failed: {outcome.result.get('error')}"
    then = ""
    if written.follow_up is not None:
        kind = "retry" if outcome.follow_up_reason is FollowUpReason.RETRY else "next run"
        follow_up = written.follow_up
        then = f"; {kind} is job {follow_up.id} due {follow_up.due.isoformat()}"
    log.info(
        "job %s (%s, user %s) %s in %.3fs%s",
        job.id, job.type, job.user_id, what, duration, then,
        extra={"duration": duration, "success": outcome.success},
    )  # fmt: skip


def write_outcome(
    process: WorkerProcess,
    job: Job,
    token: str,
    outcome: Outcome,
    *,
    clock: Clock = utcnow,
) -> WrittenOutcome:
    """Write ``outcome`` for attempt ``token`` of ``job``; logs a refusal or an outage."""
    bridge = process.bridge

    def write() -> WrittenOutcome:
        now = clock()
        with process.connection() as connection:
            return bridge.store.write_outcome(
                connection, job, token, outcome, now=now,
                stale_before=now - bridge.settings.stale_after,
            )  # fmt: skip

    try:
        written = bridge.reconnecting(
            f"writing the result of job {job.id}",
            write,
            bridge.settings.heartbeat_timeout.total_seconds(),
        )
    except DatabaseUnavailableError:
        logger.exception(
            "job %s: result NOT written, the database stayed unreachable; the job "
            "will run again once its heartbeat expires",
            job.id,
            extra={"job_id": job.id},
        )
        raise
    if not written.written:
        logger.warning(
            "job %s: result refused: attempt %s is no longer current (the job was "
            "cancelled, or recovered and run again)",
            job.id,
            token,
            extra={"job_id": job.id},
        )
    return written


def record_hard_timeout(
    process: WorkerProcess, job_id: int, token: str, limit: object, clock: Clock = utcnow
) -> WrittenOutcome | None:
    """Record a run killed by the hard time limit ``limit`` as failed, with its follow-up.

    Called where the killed run cannot write (in the worker's main process);
    None when the attempt is no longer the row's current one.
    """
    bridge = process.bridge
    with bridge.engine.connect() as connection:
        job = bridge.store.get_job(connection, job_id)
    if job is None or job.task_id != token or job.finished is not None:
        return None
    outcome = decide_outcome(
        job,
        now=clock(),
        timezone=bridge.settings.timezone,
        error=error_result(
            f"job exceeded the hard time limit ({limit}) and was killed", "TimeLimitExceeded"
        ),
        max_result_bytes=bridge.settings.max_result_bytes,
    )
    return write_outcome(process, job, token, outcome, clock=clock)
