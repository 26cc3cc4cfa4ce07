"""What a failed attempt's Celery task raises: the job's own exception, unless Celery would act on it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from billiard.exceptions import WorkerLostError
from celery.exceptions import Ignore, Retry

from worker_bridge.attempt import AttemptReport
from worker_bridge.errors import JobFailedError
from worker_bridge.job import Job
from worker_bridge.outcome import Outcome, exception_result
from worker_bridge.store import WrittenOutcome

JOB = Job(id=1, type="echo", user_id=1, data={}, due=datetime(2030, 1, 1, tzinfo=UTC))


def report(error: BaseException) -> AttemptReport:
    outcome = Outcome(success=False, result=exception_result(error), remove_at=None)
    return AttemptReport(JOB, outcome, WrittenOutcome(True), error)


def test_the_jobs_own_exception_is_raised_as_it_is() -> None:
    error = ValueError("nope")
    assert report(error).failure() is error


@pytest.mark.parametrize(
    "error", [MemoryError("out of memory"), Retry("again"), Ignore("skip"), WorkerLostError("x")]
)
def test_exceptions_celery_would_act_on_are_wrapped(error: BaseException) -> None:
    failure = report(error).failure()
    assert isinstance(failure, JobFailedError)
    assert str(failure).startswith(f"{type(error).__name__}: ")


def test_a_success_or_a_refusal_raises_nothing() -> None:
    done = AttemptReport(
        JOB, Outcome(success=True, result=None, remove_at=None), WrittenOutcome(True)
    )
    assert done.failure() is None and not done.refused
    assert AttemptReport().refused and AttemptReport().failure() is None
