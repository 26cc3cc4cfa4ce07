"""One attempt at a job, in process against real PostgreSQL, with no Celery process.

Each test puts a row in ``worker_jobs`` as the dispatcher leaves it (sent under
a task id, not claimed), runs an :class:`~worker_bridge.attempt.Attempt` for its
message on a fixed clock, and checks the report and every row it left. Each
test runs on a worker process that keeps one connection (a prefork pool
process) and on one that takes a pooled connection for each write.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import FrozenInstanceError, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.testjobs.mutate import ATTRIBUTES
from tests.testjobs.soft_limit import SoftLimitHit
from worker_bridge.attempt import Attempt, AttemptReport, record_hard_timeout
from worker_bridge.bridge import BridgeApp
from worker_bridge.job import Job, JobState, NewJob
from worker_bridge.outcome import FollowUpReason, Outcome
from worker_bridge.store import WrittenOutcome, cancellation_result
from worker_bridge.worker_process import WorkerProcess

#: The attempts' fixed clock.
NOW = datetime(2030, 6, 3, 12, 2, 30, 250_000, tzinfo=UTC)
WORKER = "test:1"

Fetch = Callable[[int], Job]
JobFactory = Callable[..., Job]
AllJobs = Callable[[], list[Job]]
ProcessFor = Callable[[BridgeApp], WorkerProcess]


def clock() -> datetime:
    return NOW


@pytest.fixture(params=[True, False], ids=["kept-connection", "pooled-connections"])
def one_task_at_a_time(request: pytest.FixtureRequest) -> bool:
    value: bool = request.param
    return value


@pytest.fixture
def process_for(one_task_at_a_time: bool) -> Iterator[ProcessFor]:
    """Builds the worker process of a bridge; closes their kept connections at the end."""
    made: list[WorkerProcess] = []

    def make(bridge: BridgeApp) -> WorkerProcess:
        process = WorkerProcess(bridge, one_task_at_a_time=one_task_at_a_time)
        made.append(process)
        return process

    yield make
    for process in made:
        process.close()


@pytest.fixture
def process(bridge: BridgeApp, process_for: ProcessFor) -> WorkerProcess:
    return process_for(bridge)


def _with_settings(bridge: BridgeApp, **changes: Any) -> BridgeApp:
    return BridgeApp(
        settings=replace(bridge.settings, **changes),
        engine=bridge.engine,
        session_factory=bridge.session_factory,
    )


def dispatched(job_factory: JobFactory, **columns: Any) -> Job:
    """Insert a row as the dispatcher leaves it: due, sent under a fresh task id, unclaimed."""
    values: dict[str, Any] = {
        "due": NOW - timedelta(seconds=1),
        "dispatched_at": NOW - timedelta(milliseconds=500),
        "task_id": str(uuid.uuid4()),
    }
    values.update(columns)
    return job_factory(**values)


def token_of(row: Job) -> str:
    assert row.task_id is not None
    return row.task_id


def attempt(
    process: WorkerProcess,
    row: Job,
    *,
    token: str | None = None,
    job_type: str | None = None,
    **options: Any,
) -> Attempt:
    """The attempt a worker makes for the message of ``row``'s dispatch."""
    return Attempt(
        process,
        job_id=row.id,
        token=token_of(row) if token is None else token,
        job_type=row.type if job_type is None else job_type,
        worker=WORKER,
        clock=clock,
        **options,
    )


def claimed(row: Job) -> Job:
    """``row`` as the attempt's claim leaves it."""
    return replace(row, started=NOW, heartbeat=NOW, worker=WORKER, attempts=1, updated_at=NOW)


def ended(row: Job, *, success: bool, result: Any, remove_at: datetime | None) -> Job:
    """``row`` once the attempt's outcome is written."""
    return replace(
        claimed(row),
        finished=NOW,
        success=success,
        result=result,
        remove_at=remove_at,
        heartbeat=None,
    )


def follow_up_row(row: Job, *, id: int, due: datetime) -> Job:
    """The pending row that follows ``row`` (its retry or next cron occurrence)."""
    return Job(
        id=id,
        type=row.type,
        user_id=row.user_id,
        data=row.data,
        due=due,
        cron_schedule=row.cron_schedule,
        auto_reschedule_on_failure=row.auto_reschedule_on_failure,
        auto_reschedule_on_failure_delay=row.auto_reschedule_on_failure_delay,
        remove_delay=row.remove_delay,
        rescheduled_from_job=row.id,
        created_at=NOW,
        updated_at=NOW,
    )


def follow_up_config(row: Job, *, due: datetime) -> NewJob:
    """The NewJob of the outcome that follows ``row``."""
    return NewJob(
        type=row.type,
        user_id=row.user_id,
        data=row.data,
        due=due,
        cron_schedule=row.cron_schedule,
        auto_reschedule_on_failure=row.auto_reschedule_on_failure,
        auto_reschedule_on_failure_delay=row.auto_reschedule_on_failure_delay,
        remove_delay=row.remove_delay,
        rescheduled_from_job=row.id,
    )


# --- 1. success ------------------------------------------------------------------------------


def test_a_successful_run_stores_its_result_and_ends_the_attempt(
    process: WorkerProcess, job_factory: JobFactory, fetch: Fetch, all_jobs: AllJobs
) -> None:
    data = {"k": [1, {"n": 2}], "s": "é"}
    row = dispatched(job_factory, type="echo", user_id=7, data=data, remove_delay=90_000)
    report = attempt(process, row).execute()

    result = {"data": data, "user_id": 7, "job_id": row.id, "type": "echo"}
    remove_at = NOW + timedelta(seconds=90)
    assert report == AttemptReport(
        job=claimed(row),
        outcome=Outcome(success=True, result=result, remove_at=remove_at),
        written=WrittenOutcome(True),
    )
    stored = fetch(row.id)
    assert stored == ended(row, success=True, result=result, remove_at=remove_at)
    assert stored.state is JobState.SUCCEEDED
    assert (stored.result, stored.remove_at, stored.heartbeat) == (result, remove_at, None)
    assert (stored.attempts, stored.worker, stored.task_id) == (1, "test:1", row.task_id)
    assert all_jobs() == [stored]
    assert process.heartbeat.running() == []


def test_a_row_sent_by_the_dispatchers_store_call_runs_under_its_task_id(
    bridge: BridgeApp, process: WorkerProcess, job_factory: JobFactory, fetch: Fetch,
    all_jobs: AllJobs,
) -> None:  # fmt: skip
    pending = job_factory(type="echo", user_id=2, data={"x": 1}, due=NOW - timedelta(seconds=3))
    later = job_factory(type="echo", user_id=3, due=NOW + timedelta(seconds=3))
    with bridge.engine.begin() as connection:
        sent = bridge.store.claim_due_jobs(connection, now=NOW, limit=10)
    assert [job.id for job in sent] == [pending.id]
    row = sent[0]
    assert row.task_id is not None and row.dispatched_at == NOW

    report = attempt(process, row).execute()
    result = {"data": {"x": 1}, "user_id": 2, "job_id": pending.id, "type": "echo"}
    assert report.written == WrittenOutcome(True)
    stored = fetch(pending.id)
    assert stored == ended(row, success=True, result=result, remove_at=NOW)
    assert all_jobs() == [stored, later]


def test_the_kept_connection_serves_successive_attempts(
    bridge: BridgeApp, job_factory: JobFactory, fetch: Fetch
) -> None:
    process = WorkerProcess(bridge, one_task_at_a_time=True)

    def backend() -> int:
        with process.connection() as connection:
            pid: int = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        return pid

    try:
        first = backend()
        rows = [dispatched(job_factory, type="noop", user_id=i) for i in range(3)]
        for row in rows:
            assert attempt(process, row).execute().written == WrittenOutcome(True)
        assert backend() == first
        assert [fetch(row.id).state for row in rows] == [JobState.SUCCEEDED] * 3
    finally:
        process.close()


# --- 2. failure and its retry ----------------------------------------------------------------


def test_a_failed_run_records_the_error_and_schedules_its_retry(
    process: WorkerProcess, job_factory: JobFactory, fetch: Fetch, all_jobs: AllJobs,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO)
    row = dispatched(
        job_factory, type="fail", user_id=3, data={"message": "boom", "n": [1]},
        auto_reschedule_on_failure=True, auto_reschedule_on_failure_delay=45_000,
        remove_delay=5_000,
    )  # fmt: skip
    report = attempt(process, row).execute()

    failed = fetch(row.id)
    assert set(failed.result) == {"error", "exception", "traceback"}
    assert (failed.result["error"], failed.result["exception"]) == ("boom", "ValueError")
    trace = failed.result["traceback"]
    assert trace.startswith("Traceback (most recent call last):\n")
    assert trace.endswith("ValueError: boom\n")
    assert "tests/testjobs/fail.py" in trace
    assert failed == ended(row, success=False, result=failed.result, remove_at=None)
    assert failed.state is JobState.FAILED

    due = NOW + timedelta(seconds=45)
    retry = follow_up_row(row, id=row.id + 1, due=due)
    assert all_jobs() == [failed, retry]
    assert retry.state is JobState.PENDING and retry.rescheduled_from_job == row.id
    assert report == AttemptReport(
        job=claimed(row),
        outcome=Outcome(
            success=False,
            result=failed.result,
            remove_at=None,
            follow_up=follow_up_config(row, due=due),
            follow_up_reason=FollowUpReason.RETRY,
        ),
        written=WrittenOutcome(True, retry),
        error=report.error,
    )
    # What run() raised, for the Celery task to raise in turn (Flower shows it as FAILURE).
    assert isinstance(report.error, ValueError) and str(report.error) == "boom"
    assert report.failure() is report.error and not report.refused
    assert f"; retry is job {retry.id} due {due.isoformat()}" in caplog.text
    assert process.heartbeat.running() == []


def test_a_failed_run_without_retry_is_only_recorded(
    process: WorkerProcess, job_factory: JobFactory, fetch: Fetch, all_jobs: AllJobs
) -> None:
    row = dispatched(job_factory, type="fail", data={"message": "no retry"}, remove_delay=5_000)
    report = attempt(process, row).execute()

    failed = fetch(row.id)
    assert (failed.result["error"], failed.result["exception"]) == ("no retry", "ValueError")
    assert failed == ended(row, success=False, result=failed.result, remove_at=None)
    assert all_jobs() == [failed]
    assert report.outcome == Outcome(success=False, result=failed.result, remove_at=None)
    assert report.written == WrittenOutcome(True)


# --- 3. the next cron occurrence -------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "timezone", "due", "next_due"),
    [
        # From now when the row was due before it...
        ("*/5 * * * *", "UTC", NOW - timedelta(seconds=1), datetime(2030, 6, 3, 12, 5, tzinfo=UTC)),
        # ... from the row's own due time when that is later (a clock behind the
        # dispatcher's), and strictly after it.
        (
            "*/5 * * * *",
            "UTC",
            datetime(2030, 6, 3, 12, 7, tzinfo=UTC),
            datetime(2030, 6, 3, 12, 10, tzinfo=UTC),
        ),
        (
            "*/5 * * * *",
            "UTC",
            datetime(2030, 6, 3, 12, 5, tzinfo=UTC),
            datetime(2030, 6, 3, 12, 10, tzinfo=UTC),
        ),
        # 09:30 in New York (EDT) is 13:30 UTC today, not 09:30 UTC tomorrow.
        (
            "30 9 * * *",
            "America/New_York",
            NOW - timedelta(seconds=1),
            datetime(2030, 6, 3, 13, 30, tzinfo=UTC),
        ),
        ("30 9 * * *", "UTC", NOW - timedelta(seconds=1), datetime(2030, 6, 4, 9, 30, tzinfo=UTC)),
        # Due Saturday 10:00 EDT; Sunday 09:30 is after the end of DST: EST.
        (
            "30 9 * * *",
            "America/New_York",
            datetime(2030, 11, 2, 14, tzinfo=UTC),
            datetime(2030, 11, 3, 14, 30, tzinfo=UTC),
        ),
    ],
    ids=[
        "from-now",
        "from-a-later-due",
        "strictly-after-due",
        "new-york",
        "utc",
        "new-york-dst-end",
    ],
)
def test_a_cron_row_that_succeeds_writes_its_next_occurrence(
    bridge: BridgeApp, process_for: ProcessFor, *, job_factory: JobFactory, fetch: Fetch,
    all_jobs: AllJobs, schedule: str, timezone: str, due: datetime, next_due: datetime,
) -> None:  # fmt: skip
    zoned = _with_settings(bridge, timezone=timezone)
    row = dispatched(
        job_factory, type="noop", user_id=5, data={"cron": True}, due=due,
        cron_schedule=schedule, remove_delay=1_000,
    )  # fmt: skip
    report = attempt(process_for(zoned), row).execute()

    done = fetch(row.id)
    assert done == ended(row, success=True, result=None, remove_at=NOW + timedelta(seconds=1))
    next_run = follow_up_row(row, id=row.id + 1, due=next_due)
    assert all_jobs() == [done, next_run]
    assert next_run.cron_schedule == schedule and next_run.state is JobState.PENDING
    assert report.outcome == Outcome(
        success=True,
        result=None,
        remove_at=NOW + timedelta(seconds=1),
        follow_up=follow_up_config(row, due=next_due),
        follow_up_reason=FollowUpReason.NEXT_RUN,
    )
    assert report.written == WrittenOutcome(True, next_run)


def test_a_cron_row_that_fails_writes_its_next_occurrence_or_its_retry(
    process: WorkerProcess, job_factory: JobFactory, fetch: Fetch, all_jobs: AllJobs
) -> None:
    plain = dispatched(job_factory, type="fail", user_id=1, cron_schedule="*/5 * * * *")
    retried = dispatched(
        job_factory, type="fail", user_id=2, cron_schedule="*/5 * * * *",
        auto_reschedule_on_failure=True, auto_reschedule_on_failure_delay=20_000,
    )  # fmt: skip
    first = attempt(process, plain).execute()
    second = attempt(process, retried).execute()

    assert first.outcome is not None and second.outcome is not None
    assert first.outcome.follow_up_reason is FollowUpReason.NEXT_RUN
    assert second.outcome.follow_up_reason is FollowUpReason.RETRY
    failed = [fetch(plain.id), fetch(retried.id)]
    next_run = follow_up_row(plain, id=retried.id + 1, due=datetime(2030, 6, 3, 12, 5, tzinfo=UTC))
    retry = follow_up_row(retried, id=retried.id + 2, due=NOW + timedelta(seconds=20))
    assert failed == [
        ended(plain, success=False, result=failed[0].result, remove_at=None),
        ended(retried, success=False, result=failed[1].result, remove_at=None),
    ]
    assert all_jobs() == [*failed, next_run, retry]
    assert (first.written, second.written) == (
        WrittenOutcome(True, next_run),
        WrittenOutcome(True, retry),
    )


# --- 4. refused attempts ---------------------------------------------------------------------


def test_an_outdated_token_is_refused_and_writes_nothing(
    process: WorkerProcess, job_factory: JobFactory, fetch: Fetch, all_jobs: AllJobs,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO)
    # The row was recovered and sent again under "t-current"; the first message comes late.
    row = dispatched(job_factory, type="echo", task_id="t-current", cron_schedule="*/5 * * * *")
    refused = attempt(process, row, token="t-old").execute()
    assert refused == AttemptReport()
    assert (refused.job, refused.outcome, refused.written) == (None, None, None)
    assert all_jobs() == [row]
    assert (
        f"job {row.id}: skipped: the message is outdated: the row was sent again under "
        "another task id" in caplog.text
    )

    current = attempt(process, row).execute().written
    assert current is not None and current.written
    after = all_jobs()
    assert [job.state for job in after] == [JobState.SUCCEEDED, JobState.PENDING]
    # Neither the old message nor a duplicate of the current one runs it again.
    for token in ("t-old", "t-current"):
        assert attempt(process, row, token=token).execute() == AttemptReport()
    assert all_jobs() == after
    assert f"job {row.id}: skipped: the row is already succeeded" in caplog.text
    assert process.heartbeat.running() == []


def test_a_result_written_after_the_row_was_cancelled_is_refused(
    bridge: BridgeApp, process: WorkerProcess, job_factory: JobFactory, fetch: Fetch,
    all_jobs: AllJobs,
) -> None:  # fmt: skip
    row = dispatched(job_factory, type="echo", cron_schedule="*/5 * * * *")
    this = attempt(process, row)
    job = this.claim()
    assert job == claimed(row)
    with bridge.engine.begin() as connection:
        assert bridge.store.cancel_job(connection, row.id, now=NOW, reason="cancelled by hand")
    cancelled = fetch(row.id)
    assert cancelled == replace(
        claimed(row), finished=NOW, success=False, heartbeat=None, task_id=None,
        result=cancellation_result(None, "cancelled by hand"),
    )  # fmt: skip

    outcome = this.decide(job, {"ok": True}, None)
    assert outcome.follow_up_reason is FollowUpReason.NEXT_RUN
    assert this.write(job, outcome) == WrittenOutcome(False)
    assert all_jobs() == [cancelled]


CANCELLED_AT = NOW + timedelta(milliseconds=300)


@pytest.mark.parametrize(
    ("fail", "columns", "decided"),
    [
        (False, {}, None),
        (False, {"cron_schedule": "*/5 * * * *"}, FollowUpReason.NEXT_RUN),
        (
            True,
            {"auto_reschedule_on_failure": True, "auto_reschedule_on_failure_delay": 1},
            FollowUpReason.RETRY,
        ),
    ],
    ids=["one-off", "cron", "failure-with-retry"],
)
def test_a_row_cancelled_while_it_ran_keeps_its_cancellation(
    process: WorkerProcess, *, job_factory: JobFactory, all_jobs: AllJobs, fail: bool,
    columns: dict[str, Any], decided: FollowUpReason | None,
) -> None:  # fmt: skip
    reason = "cancelled while it ran"
    data = {"at": CANCELLED_AT.isoformat(), "reason": reason, "fail": fail}
    row = dispatched(job_factory, type="cancel_self", data=data, **columns)
    report = attempt(process, row).execute()

    assert report.job == claimed(row)
    assert report.outcome is not None
    assert report.outcome.success is not fail
    if not fail:
        assert report.outcome.result == {"cancelled": True}
    assert report.outcome.follow_up_reason is decided
    assert report.written == WrittenOutcome(False)
    assert all_jobs() == [
        replace(
            claimed(row),
            finished=CANCELLED_AT,
            success=False,
            heartbeat=None,
            task_id=None,
            result=cancellation_result(None, reason),
            updated_at=CANCELLED_AT,
        )
    ]
    assert process.heartbeat.running() == []


# --- 5. the hard time limit ------------------------------------------------------------------

HARD_LIMIT_RESULT = {
    "error": "job exceeded the hard time limit (TimeLimitExceeded(2)) and was killed",
    "exception": "TimeLimitExceeded",
    "traceback": None,
}


def test_a_run_killed_by_the_hard_time_limit_is_recorded_once_with_its_retry(
    process: WorkerProcess, job_factory: JobFactory, fetch: Fetch, all_jobs: AllJobs
) -> None:
    row = dispatched(
        job_factory, type="echo", user_id=4, data={"seconds": 60},
        auto_reschedule_on_failure=True, auto_reschedule_on_failure_delay=30_000,
    )  # fmt: skip
    assert attempt(process, row).claim() == claimed(row)
    running = fetch(row.id)

    limit = "TimeLimitExceeded(2)"
    assert record_hard_timeout(process, row.id, "t-wrong", limit, clock=clock) is None
    assert all_jobs() == [running]

    written = record_hard_timeout(process, row.id, token_of(row), limit, clock=clock)
    failed = fetch(row.id)
    assert failed == ended(row, success=False, result=HARD_LIMIT_RESULT, remove_at=None)
    retry = follow_up_row(row, id=row.id + 1, due=NOW + timedelta(seconds=30))
    assert written == WrittenOutcome(True, retry)
    assert all_jobs() == [failed, retry]

    # The second call (Celery's on_failure twice, or a redelivery) writes nothing.
    assert record_hard_timeout(process, row.id, token_of(row), limit, clock=clock) is None
    assert record_hard_timeout(process, row.id, "t-wrong", limit, clock=clock) is None
    assert all_jobs() == [failed, retry]


def test_a_hard_time_limit_without_retry_and_on_a_cancelled_row(
    bridge: BridgeApp, process: WorkerProcess, job_factory: JobFactory, fetch: Fetch,
    all_jobs: AllJobs,
) -> None:  # fmt: skip
    plain = dispatched(job_factory, type="echo", user_id=1)
    gone = dispatched(job_factory, type="echo", user_id=2, auto_reschedule_on_failure=True)
    for row in (plain, gone):
        assert attempt(process, row).claim() == claimed(row)
    with bridge.engine.begin() as connection:
        assert bridge.store.cancel_job(connection, gone.id, now=NOW, reason="by hand")
    cancelled = fetch(gone.id)

    limit = "TimeLimitExceeded(2)"
    assert record_hard_timeout(process, plain.id, token_of(plain), limit, clock=clock) == (
        WrittenOutcome(True)
    )
    assert record_hard_timeout(process, gone.id, token_of(gone), limit, clock=clock) is None
    failed = ended(plain, success=False, result=HARD_LIMIT_RESULT, remove_at=None)
    assert all_jobs() == [failed, cancelled]


# --- 6. a result over the size limit ---------------------------------------------------------


@pytest.mark.parametrize("size", [100, 101])
def test_a_result_over_max_result_bytes_fails_the_job_and_keeps_no_result(
    bridge: BridgeApp, process_for: ProcessFor, *, job_factory: JobFactory, fetch: Fetch,
    all_jobs: AllJobs, size: int,
) -> None:  # fmt: skip
    small = _with_settings(bridge, max_result_bytes=100)
    row = dispatched(job_factory, type="big_result", data={"bytes": size}, remove_delay=60_000)
    report = attempt(process_for(small), row).execute()

    if size == 100:
        blob = {"blob": "r" * 89}
        assert len(json.dumps(blob, separators=(",", ":"))) == 100
        outcome = Outcome(success=True, result=blob, remove_at=NOW + timedelta(minutes=1))
    else:
        outcome = Outcome(
            success=False,
            result={
                "error": "run() returned a value that cannot be stored as the result: it is "
                "101 bytes as JSON, over the limit of 100 (worker_bridge_max_result_bytes)",
                "exception": "InvalidResultError",
                "traceback": None,
            },
            remove_at=None,
        )
    assert report.outcome == outcome
    stored = fetch(row.id)
    assert stored == ended(
        row, success=outcome.success, result=outcome.result, remove_at=outcome.remove_at
    )
    assert all_jobs() == [stored]


# --- 7. the job's value is its own ------------------------------------------------------------

SCHEDULED_DATA: dict[str, Any] = {
    "keep": 1,
    "drop_me": "x",
    "nested": {"inner": {"value": "as scheduled"}, "list": [{"k": "as scheduled"}, 2]},
}
#: What run() sees of its data once it changed it.
MUTATED_DATA: dict[str, Any] = {
    "keep": 1,
    "added": "by run()",
    "nested": {
        "inner": {"value": "changed by run()"},
        "list": [{"k": "changed by run()"}, 2, "appended by run()"],
    },
}
#: Every field mutate.py tries to set on params.job is refused as frozen. An
#: attribute that is not a field is refused too: with slots=True, CPython's
#: frozen __setattr__ fails with TypeError there (super() on the pre-slots class).
REFUSED = {
    "data": "FrozenInstanceError",
    "user_id": "FrozenInstanceError",
    "task_id": "FrozenInstanceError",
}


@pytest.mark.parametrize(
    ("fail", "columns", "reason"),
    [
        (False, {}, None),
        (
            True,
            {"auto_reschedule_on_failure": True, "auto_reschedule_on_failure_delay": 2_000},
            FollowUpReason.RETRY,
        ),
        (False, {"cron_schedule": "*/5 * * * *"}, FollowUpReason.NEXT_RUN),
    ],
    ids=["one-off", "retry", "next-cron-run"],
)
def test_a_job_that_changes_its_own_value_changes_no_row(
    process: WorkerProcess, *, job_factory: JobFactory, fetch: Fetch, all_jobs: AllJobs,
    fail: bool, columns: dict[str, Any], reason: FollowUpReason | None,
) -> None:  # fmt: skip
    data = {**SCHEDULED_DATA, "fail": fail}
    row = dispatched(job_factory, type="mutate", user_id=6, data=data, **columns)
    report = attempt(process, row).execute()

    assert report.outcome is not None and report.outcome.follow_up_reason is reason
    if fail:
        assert report.outcome.result["exception"] == "RuntimeError"
        seen = json.loads(report.outcome.result["error"])
    else:
        seen = report.outcome.result
    # run() changed its own copy of the data, and could change nothing else.
    assert seen["data"] == {**MUTATED_DATA, "fail": fail}
    assert {name: seen["refused"][name] for name in REFUSED} == REFUSED
    assert seen["refused"]["not_a_field"] in ("FrozenInstanceError", "TypeError")
    assert set(seen["refused"]) == set(ATTRIBUTES)
    assert seen["changed"] == []
    # The claimed value, the stored row and its follow-up all keep the data as scheduled.
    assert report.job is not None and report.job.data == data
    stored = fetch(row.id)
    assert stored.data == data
    rows = all_jobs()
    assert [job.data for job in rows] == [data] * (1 if reason is None else 2)
    if reason is not None:
        assert report.outcome.follow_up is not None and report.outcome.follow_up.data == data
        assert report.written is not None and report.written.follow_up == rows[1]
    with pytest.raises(FrozenInstanceError):
        setattr(report.job, "data", {})  # noqa: B010
    with pytest.raises(FrozenInstanceError):
        setattr(stored, "user_id", 1)  # noqa: B010


# --- 8. a message for another type -----------------------------------------------------------


def test_a_message_for_another_type_fails_the_row_without_running_anything(
    process: WorkerProcess, *, job_factory: JobFactory, fetch: Fetch, all_jobs: AllJobs,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # Both job types write a file here whenever they run.
    monkeypatch.setenv("WORKER_BRIDGE_TEST_RECORD_DIR", str(tmp_path))
    row = dispatched(job_factory, type="record", user_id=8, data={"sleep": 0}, remove_delay=1_000)
    report = attempt(process, row, job_type="work").execute()

    result = {
        "error": f"message for task jobs.work named row {row.id} of type record",
        "exception": "TaskMismatchError",
        "traceback": None,
    }
    assert report == AttemptReport(
        job=claimed(row),
        outcome=Outcome(success=False, result=result, remove_at=None),
        written=WrittenOutcome(True),
    )
    assert fetch(row.id) == ended(row, success=False, result=result, remove_at=None)
    assert all_jobs() == [fetch(row.id)]
    assert list(tmp_path.iterdir()) == []
    assert process.heartbeat.running() == []


# --- 9. the soft time limit ------------------------------------------------------------------


def test_a_soft_time_limit_is_recorded_as_such_with_its_retry(
    process: WorkerProcess, job_factory: JobFactory, fetch: Fetch, all_jobs: AllJobs
) -> None:
    row = dispatched(
        job_factory, type="soft_limit", auto_reschedule_on_failure=True,
        auto_reschedule_on_failure_delay=10_000,
    )  # fmt: skip
    report = attempt(process, row, soft_timeouts=(SoftLimitHit,), soft_limit=2.5).execute()

    result = {
        "error": "job exceeded the soft time limit (2.5 s) and was stopped",
        "exception": "SoftTimeLimitExceeded",
        "traceback": None,
    }
    failed = fetch(row.id)
    assert failed == ended(row, success=False, result=result, remove_at=None)
    retry = follow_up_row(row, id=row.id + 1, due=NOW + timedelta(seconds=10))
    assert all_jobs() == [failed, retry]
    assert report.outcome is not None and report.outcome.result == result
    assert report.outcome.follow_up_reason is FollowUpReason.RETRY
    assert report.written == WrittenOutcome(True, retry)


def test_the_same_exception_outside_soft_timeouts_is_an_ordinary_failure(
    process: WorkerProcess, job_factory: JobFactory, fetch: Fetch
) -> None:
    row = dispatched(job_factory, type="soft_limit")
    attempt(process, row, soft_limit=2.5).execute()
    result = fetch(row.id).result
    assert (result["error"], result["exception"]) == ("the soft time limit was hit", "SoftLimitHit")
    assert result["traceback"].endswith("SoftLimitHit: the soft time limit was hit\n")
