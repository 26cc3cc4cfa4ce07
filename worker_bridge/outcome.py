"""What a finished run writes, and which row follows it. Pure: no I/O, no clock.

The attempt calls :func:`decide_outcome` with what ``run()`` did and hands
the answer to one store call (``Store.write_outcome``), which writes the
result and the follow-up together.
"""

from __future__ import annotations

import enum
import traceback
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from worker_bridge.cron import next_fire
from worker_bridge.job import Job, NewJob
from worker_bridge.payload import json_problem, serialized_size

#: Longest traceback kept in an error result; the end (where it was raised) is kept.
MAX_TRACEBACK_CHARS = 16_000
#: Longest error message kept.
MAX_MESSAGE_CHARS = 4_000


class FollowUpReason(enum.StrEnum):
    """Why a finished run is followed by another row."""

    RETRY = "retry"  #: the run failed and the job asked to be retried
    NEXT_RUN = "next run"  #: the job is a cron job: its next occurrence


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """The row's final columns, and the follow-up row to insert if any."""

    #: Whether run() returned a storable result.
    success: bool
    #: The result column: what run() returned, or ``{"error", "exception", "traceback"}``.
    result: Any
    #: When a succeeded row may be removed (finished + remove_delay); None for failures.
    remove_at: datetime | None
    #: A retry after a failure, or the next cron occurrence; None for neither.
    follow_up: NewJob | None = None
    #: Why ``follow_up`` exists; None exactly when there is no follow-up.
    follow_up_reason: FollowUpReason | None = None

    def __post_init__(self) -> None:
        if (self.follow_up is None) != (self.follow_up_reason is None):
            raise ValueError("an Outcome has a follow-up exactly when it has a reason for one")


def error_result(message: str, exception: str, trace: str | None = None) -> dict[str, Any]:
    """The ``result`` of a failed run."""
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + "... [truncated]"
    if trace and len(trace) > MAX_TRACEBACK_CHARS:
        trace = "[truncated]...\n" + trace[-MAX_TRACEBACK_CHARS:]
    return {"error": message, "exception": exception, "traceback": trace}


def exception_result(error: BaseException) -> dict[str, Any]:
    """The ``result`` of a run that raised ``error``."""
    trace = "".join(traceback.format_exception(error))
    message = str(error) or type(error).__name__
    return error_result(message, type(error).__name__, trace)


def decide_outcome(
    job: Job,
    *,
    now: datetime,
    timezone: str,
    returned: Any = None,
    error: BaseException | dict[str, Any] | None = None,
    max_result_bytes: int,
) -> Outcome:
    """Decide what the run of ``job`` that ended at ``now`` writes.

    ``error`` is the exception ``run()`` raised (or a ready error result);
    otherwise ``returned`` is what it returned, which must be storable JSON
    within ``max_result_bytes`` or the run counts as failed.
    """
    if error is None:
        problem = json_problem(returned)
        if problem is None and serialized_size(returned) > max_result_bytes:
            problem = (
                f"it is {serialized_size(returned)} bytes as JSON, over the limit of "
                f"{max_result_bytes} (worker_bridge_max_result_bytes)"
            )
        if problem is not None:
            error = error_result(
                f"run() returned a value that cannot be stored as the result: {problem}",
                "InvalidResultError",
            )
    if error is None:
        remove_at = now + timedelta(milliseconds=job.remove_delay)
        return _with_next_run(
            Outcome(success=True, result=returned, remove_at=remove_at), job, now, timezone
        )
    result = error if isinstance(error, dict) else exception_result(error)
    failed = Outcome(success=False, result=result, remove_at=None)
    if job.auto_reschedule_on_failure:
        retry = replace(
            _same_config(job),
            due=now + timedelta(milliseconds=job.auto_reschedule_on_failure_delay),
        )
        return replace(failed, follow_up=retry, follow_up_reason=FollowUpReason.RETRY)
    return _with_next_run(failed, job, now, timezone)


def _same_config(job: Job) -> NewJob:
    return NewJob(
        type=job.type,
        user_id=job.user_id,
        data=job.data,
        due=job.due,
        cron_schedule=job.cron_schedule,
        auto_reschedule_on_failure=job.auto_reschedule_on_failure,
        auto_reschedule_on_failure_delay=job.auto_reschedule_on_failure_delay,
        remove_delay=job.remove_delay,
        rescheduled_from_job=job.id,
    )


def _with_next_run(outcome: Outcome, job: Job, now: datetime, timezone: str) -> Outcome:
    if job.cron_schedule is None:
        return outcome
    # From the later of now and the row's own due time, so that a clock a
    # little behind the dispatcher's can never schedule the same slot twice.
    after = max(now, job.due)
    next_run = replace(_same_config(job), due=next_fire(job.cron_schedule, after, timezone))
    return replace(outcome, follow_up=next_run, follow_up_reason=FollowUpReason.NEXT_RUN)
