"""One batch: a message carrying several due rows of a batched job type, run in turn.

A job module that declares ``BATCH_SIZE = K`` lets the dispatcher send up to K
due rows of its type in one message (keyword argument ``job_ids``); the rows
share one attempt token, the message's task id. Each row keeps every
guarantee of a job sent alone:

- **the claim** is one conditional UPDATE for the whole batch, applied to each
  row only while it carries the token and is neither started nor finished; a
  row that refuses it (cancelled, outdated, already running) is skipped;
- **the heartbeat** covers every claimed row until its outcome is written;
- **a row cancelled or recovered after the claim is not run**: before a row's
  turn, the heartbeat's refusals are known at once, and the rows still to run
  are looked up again whenever :data:`SYNC_INTERVAL` has passed since the last
  look (so a cancel that lands in the last ``SYNC_INTERVAL`` before a row's
  turn may let it run; its result is then refused, as a cancelled running
  job's is);
- **each row its own outcome**: result, retry or next cron row, lineage, decided
  exactly as for a lone job;
- **outcomes are written in groups** (``Store.write_outcomes``, one transaction
  per group), whenever ``SYNC_INTERVAL`` has passed and at the end: a crash
  mid-batch re-runs only the rows whose outcome was not yet written, after
  recovery takes them back like any lost attempt's.

Celery's time limits apply to the whole message. A soft limit stops the row
it interrupts: a failure (as for a lone job) if that row's own run lasted the
whole limit, else the row goes back to pending; either way the batch writes
what it has and hands the rows it had not reached back to pending at once, to
run in a later message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from worker_bridge.attempt import (
    CLAIM_LOCK_TIMEOUT_MS,
    SOFT_TIME_LIMIT,
    Clock,
    call_run,
    decide_run,
    failed_error,
    log_outcome,
    mismatch_outcome,
    utcnow,
)
from worker_bridge.bridge import BridgeApp
from worker_bridge.errors import DatabaseUnavailableError, JobFailedError
from worker_bridge.job import Job
from worker_bridge.maintenance import JobRecovery
from worker_bridge.metrics import PROCESS
from worker_bridge.outcome import Outcome
from worker_bridge.params import job_logger
from worker_bridge.store import LostAttempt, WrittenOutcome
from worker_bridge.store.base import refusal_reason
from worker_bridge.store.schema import BATCH_STOPPED
from worker_bridge.worker_process import WorkerProcess

logger = logging.getLogger(__name__)

#: Seconds between two writes of a batch's outcomes, and two looks at which of
#: its rows are still its own.
SYNC_INTERVAL = 0.25


@dataclass
class BatchReport:
    """What a batch did, row by row."""

    #: The rows claimed, in the order they were taken in turn.
    claimed: list[Job] = field(default_factory=list)
    #: Each row whose outcome was decided, with what the store wrote for it.
    finished: list[tuple[Job, Outcome, WrittenOutcome]] = field(default_factory=list)
    #: Rows claimed but not run: cancelled or recovered before their turn.
    skipped: list[int] = field(default_factory=list)
    #: Rows handed back to pending unrun, after a soft time limit stopped the batch.
    released: list[int] = field(default_factory=list)

    @property
    def refused(self) -> bool:
        """Whether the table refused the whole message: no row claimed, or no result kept."""
        return not any(written.written for _, _, written in self.finished) and not self.released

    def failure(self) -> JobFailedError | None:
        """What the Celery task raises when a row failed: one error naming each failed row."""
        failed = [
            (job, outcome)
            for job, outcome, written in self.finished
            if written.written and not outcome.success
        ]
        if not failed:
            return None
        job, outcome = failed[0]
        first = failed_error(outcome.result)
        return JobFailedError(
            f"{len(failed)} of the {len(self.claimed)} jobs of the batch failed "
            f"({', '.join(str(job.id) for job, _ in failed)}); job {job.id}: {first}"
        )


class BatchAttempt:
    """One delivery of a batch message (rows ``job_ids``, token ``token``) to a worker process."""

    def __init__(
        self,
        process: WorkerProcess,
        *,
        job_ids: Sequence[int],
        token: str,
        job_type: str,
        worker: str,
        clock: Clock = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        soft_timeouts: tuple[type[BaseException], ...] = (),
        soft_limit: float | None = None,
    ) -> None:
        self.process = process
        self.bridge: BridgeApp = process.bridge
        self.job_ids = list(job_ids)
        self.token = token
        self.job_type = job_type
        self.worker = worker
        self.clock = clock
        self.monotonic = monotonic
        self.soft_timeouts = soft_timeouts
        self.soft_limit = soft_limit
        self._unwritten: list[tuple[Job, Outcome, float]] = []

    def execute(self) -> BatchReport:
        """Claim the rows, run each in turn, write their outcomes."""
        report = BatchReport()
        patience = self.bridge.settings.redispatch_after.total_seconds() / 2
        report.claimed = self.bridge.reconnecting(
            f"claiming the batch of jobs {self.job_ids}", self.claim, patience
        )
        if not report.claimed:
            return report
        heartbeat = self.process.heartbeat
        for job in report.claimed:
            heartbeat.add(job.id, self.token)
        logger.info(
            "batch of %d %s jobs started: %s",
            len(report.claimed), self.job_type, [job.id for job in report.claimed],
        )  # fmt: skip
        try:
            self._run_in_turn(report)
        except self.soft_timeouts:
            # The soft limit struck between two rows' runs (in a write, a look at
            # the table): the rows not yet run go back to pending, as below.
            self._release(report)
        finally:
            try:
                self._write(report)
            finally:
                for job in report.claimed:
                    heartbeat.remove(job.id)
        return report

    def claim(self) -> list[Job]:
        """Start this attempt on every row of the message that allows it."""
        store = self.bridge.store
        now = self.clock()
        with self.process.connection() as connection:
            claimed = store.claim_jobs(
                connection, self.job_ids, self.token, worker=self.worker, now=now
            )
        missing = sorted(set(self.job_ids) - {job.id for job in claimed})
        if not missing:
            return claimed
        # The message may have outrun the dispatcher's commit: wait for those
        # rows to be free and try them again before refusing them.
        with self.bridge.engine.begin() as connection:
            store.wait_for_dispatch_commit(connection, missing, timeout_ms=CLAIM_LOCK_TIMEOUT_MS)
        with self.bridge.autocommit.begin() as connection:
            claimed += store.claim_jobs(
                connection, missing, self.token, worker=self.worker, now=self.clock()
            )
            refused = sorted(set(missing) - {job.id for job in claimed})
            if refused:
                rows = {job.id: job for job in store.get_jobs(connection, refused)}
                for job_id in refused:
                    PROCESS.claim_refused(self.job_type)
                    logger.info(
                        "job %s: skipped: %s",
                        job_id, refusal_reason(rows.get(job_id), self.token),
                        extra={"job_id": job_id},
                    )  # fmt: skip
        return sorted(claimed, key=lambda job: job.id)

    def _run_in_turn(self, report: BatchReport) -> None:
        held = {job.id for job in report.claimed}
        last_sync = self.monotonic()
        for index, job in enumerate(report.claimed):
            if self.monotonic() - last_sync >= SYNC_INTERVAL:
                self._write(report)
                held = self._still_held(job.id for job in report.claimed[index:])
                last_sync = self.monotonic()
            if job.id not in held or not self._beating(job.id):
                logger.info(
                    "job %s: skipped: cancelled, or recovered and sent again, since its "
                    "batch was claimed",
                    job.id,
                    extra={"job_id": job.id},
                )
                report.skipped.append(job.id)
                continue
            started = self.monotonic()
            if job.type != self.job_type:
                outcome = mismatch_outcome(self.job_type, job)
                self._unwritten.append((job, outcome, 0.0))
                continue
            returned, error = call_run(
                self.bridge, job, job_logger(job), self.soft_timeouts, self.soft_limit
            )
            duration = self.monotonic() - started
            if isinstance(error, dict) and error.get("exception") == SOFT_TIME_LIMIT:
                # The limit is the message's: the row it strikes is at fault only if its
                # own run lasted the whole limit; otherwise the rows before it used the
                # time, and it goes back to pending with the rows not reached.
                if self.soft_limit is None or duration >= self.soft_limit:
                    outcome = decide_run(self.bridge, job, self.clock(), returned, error)
                    self._unwritten.append((job, outcome, duration))
                self._release(report)
                return
            outcome = decide_run(self.bridge, job, self.clock(), returned, error)
            self._unwritten.append((job, outcome, duration))

    def _beating(self, job_id: int) -> bool:
        # The heartbeat drops an attempt the table refused (cancelled or recovered).
        return self.process.heartbeat.is_beating(job_id, self.token)

    def _still_held(self, job_ids: Iterable[int]) -> set[int]:
        ids = list(job_ids)

        def look() -> set[int]:
            with self.process.connection() as connection:
                return self.bridge.store.still_held(connection, ids, self.token)

        return self.bridge.reconnecting(f"looking at the batch's rows {ids}", look)

    def _write(self, report: BatchReport) -> None:
        """Write the outcomes decided since the last write, in one transaction."""
        if not self._unwritten:
            return
        batch, self._unwritten = self._unwritten, []
        settings = self.bridge.settings
        for job, _, _ in batch:
            self.process.heartbeat.ending(job.id)

        def write() -> list[WrittenOutcome]:
            now = self.clock()
            with self.bridge.engine.begin() as connection:
                return self.bridge.store.write_outcomes(
                    connection, self.token, [(job, outcome) for job, outcome, _ in batch],
                    now=now, stale_before=now - settings.stale_after,
                )  # fmt: skip

        try:
            written = self.bridge.reconnecting(
                f"writing the results of jobs {[job.id for job, _, _ in batch]}",
                write,
                settings.heartbeat_timeout.total_seconds(),
            )
        except DatabaseUnavailableError:
            logger.exception(
                "results of jobs %s NOT written, the database stayed unreachable; they will "
                "run again once their heartbeat expires",
                [job.id for job, _, _ in batch],
            )
            raise
        except BaseException:
            # Not written (the soft limit struck mid-write): keep them for the next
            # write, so that rows that ran are not handed back to run again.
            self._unwritten = batch + self._unwritten
            raise
        for (job, outcome, duration), done in zip(batch, written, strict=True):
            self.process.heartbeat.remove(job.id)
            report.finished.append((job, outcome, done))
            log_outcome(job_logger(job), job, outcome, done, duration)
            if not done.written:
                logger.warning(
                    "job %s: result refused: attempt %s is no longer current (the job was "
                    "cancelled, or recovered and run again)",
                    job.id, self.token, extra={"job_id": job.id},
                )  # fmt: skip

    def _release(self, report: BatchReport) -> None:
        """Write the outcomes decided so far, then hand every other claimed row back to pending.

        Only rows still unfinished and carrying the batch's token go back: the
        ones whose outcome was written, and the ones cancelled meanwhile, stay.
        """
        self._write(report)
        recovered = JobRecovery(self.bridge).recover_attempt(
            LostAttempt([job.id for job in report.claimed], self.token, BATCH_STOPPED),
            self.clock(),
        )
        report.released = sorted(item.job_id for item in recovered)
