"""A batch of rows in one message, in process against real PostgreSQL, with no Celery process.

Each test puts rows in ``worker_jobs`` as the dispatcher leaves a batch (sent
under one shared task id, not claimed), runs a
:class:`~worker_bridge.batch.BatchAttempt` for the message on a fixed clock,
and checks every row it left: each row keeps the guarantees of a job sent
alone (atomic claim under the token, its own outcome and follow-up, a
cancelled row not run, a crash re-running only what was not written).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.testjobs.batched import Crash
from tests.testjobs.soft_limit import SoftLimitHit
from worker_bridge.batch import SYNC_INTERVAL, BatchAttempt
from worker_bridge.bridge import BridgeApp
from worker_bridge.job import Job, JobState
from worker_bridge.maintenance import JobRecovery
from worker_bridge.store import LostAttempt
from worker_bridge.store.schema import BATCH_STOPPED
from worker_bridge.worker_process import WorkerProcess

NOW = datetime(2030, 6, 3, 12, 2, 30, tzinfo=UTC)
WORKER = "test:1"

JobFactory = Callable[..., Job]
Fetch = Callable[[int], Job]


@pytest.fixture(params=[True, False], ids=["kept-connection", "pooled-connections"])
def process(bridge: BridgeApp, request: pytest.FixtureRequest) -> Iterator[WorkerProcess]:
    process = WorkerProcess(bridge, one_task_at_a_time=request.param)
    yield process
    process.close()


def batch_of(job_factory: JobFactory, rows: list[dict[str, Any]]) -> tuple[str, list[Job]]:
    """Rows of the ``batched`` type as the dispatcher leaves one message's: one shared token."""
    token = str(uuid.uuid4())
    made = []
    for user, columns in enumerate(rows, start=1):
        values: dict[str, Any] = {
            "type": "batched",
            "user_id": user,
            "due": NOW - timedelta(seconds=1),
            "dispatched_at": NOW - timedelta(milliseconds=500),
            "task_id": token,
        }
        values.update(columns)
        made.append(job_factory(**values))
    return token, made


def run_batch(process: WorkerProcess, token: str, rows: list[Job], **options: Any) -> BatchAttempt:
    return BatchAttempt(
        process,
        job_ids=[row.id for row in rows],
        token=token,
        job_type="batched",
        worker=WORKER,
        clock=lambda: NOW,
        **options,
    )


def stepping_clock(step: float = SYNC_INTERVAL) -> Callable[[], float]:
    """A monotonic clock that moves on by ``step`` at each reading: a sync before every row."""
    now = [0.0]

    def read() -> float:
        now[0] += step
        return now[0]

    return read


def test_a_batch_runs_each_row_and_writes_each_result(
    process: WorkerProcess, job_factory: JobFactory, fetch: Fetch
) -> None:
    token, rows = batch_of(
        job_factory, [{"data": {"n": n}, "remove_delay": 1000} for n in range(5)]
    )
    report = run_batch(process, token, rows).execute()

    assert [job.id for job in report.claimed] == [row.id for row in rows]
    assert [written.written for _, _, written in report.finished] == [True] * 5
    assert report.failure() is None and not report.refused
    for row in rows:
        stored = fetch(row.id)
        assert stored.state is JobState.SUCCEEDED
        assert stored.result["job_id"] == row.id
        assert (stored.started, stored.finished, stored.task_id) == (NOW, NOW, token)
        assert (stored.attempts, stored.worker, stored.heartbeat) == (1, WORKER, None)
        assert stored.remove_at == NOW + timedelta(seconds=1)
    assert process.heartbeat.running() == []


def test_each_row_keeps_its_own_retry_cron_run_and_lineage(
    process: WorkerProcess, job_factory: JobFactory, fetch: Fetch, all_jobs: Callable[[], list[Job]]
) -> None:
    token, rows = batch_of(
        job_factory,
        [
            {
                "data": {"fail": True},
                "auto_reschedule_on_failure": True,
                "auto_reschedule_on_failure_delay": 5000,
            },
            {"cron_schedule": "*/5 * * * *", "due": datetime(2030, 6, 3, 12, 0, tzinfo=UTC)},
            {"data": {"fail": True}},
            {},
        ],
    )
    report = run_batch(process, token, rows).execute()

    assert [written.written for _, _, written in report.finished] == [True] * 4
    retry = report.finished[0][2].follow_up
    next_run = report.finished[1][2].follow_up
    assert retry is not None and next_run is not None
    assert (retry.rescheduled_from_job, retry.due, retry.data) == (
        rows[0].id,
        NOW + timedelta(seconds=5),
        {"fail": True},
    )
    assert (next_run.rescheduled_from_job, next_run.due, next_run.cron_schedule) == (
        rows[1].id,
        datetime(2030, 6, 3, 12, 5, tzinfo=UTC),
        "*/5 * * * *",
    )
    assert [fetch(row.id).state for row in rows] == [
        JobState.FAILED,
        JobState.SUCCEEDED,
        JobState.FAILED,
        JobState.SUCCEEDED,
    ]
    assert fetch(rows[0].id).result["error"] == "failing on purpose"
    assert report.finished[2][2].follow_up is None and report.finished[3][2].follow_up is None
    assert len(all_jobs()) == 6
    # The batch's Celery task fails, naming each failed row.
    failure = report.failure()
    assert failure is not None and not report.refused
    assert str(failure).startswith(
        f"2 of the 4 jobs of the batch failed ({rows[0].id}, {rows[2].id}); job {rows[0].id}: "
        "RuntimeError: failing on purpose"
    )


def test_a_row_cancelled_before_the_claim_is_skipped(
    bridge: BridgeApp, process: WorkerProcess, job_factory: JobFactory, fetch: Fetch
) -> None:
    token, rows = batch_of(job_factory, [{}, {}, {}])
    with bridge.engine.begin() as connection:
        assert bridge.store.cancel_job(connection, rows[1].id, now=NOW, reason="changed my mind")
    report = run_batch(process, token, rows).execute()

    assert [job.id for job in report.claimed] == [rows[0].id, rows[2].id]
    assert fetch(rows[1].id).state is JobState.CANCELLED
    assert fetch(rows[1].id).result["error"] == "changed my mind"
    assert [fetch(rows[i].id).state for i in (0, 2)] == [JobState.SUCCEEDED] * 2


def test_a_row_cancelled_while_its_batch_runs_is_not_run(
    process: WorkerProcess, job_factory: JobFactory, fetch: Fetch
) -> None:
    token, rows = batch_of(job_factory, [{}, {}, {}])
    # The first row cancels the third from within run(), as a user would meanwhile.
    with process.bridge.engine.begin() as connection:
        connection.exec_driver_sql(
            "UPDATE worker_jobs SET data = jsonb_build_object('cancel', %(id)s) WHERE id = %(first)s",
            {"id": rows[2].id, "first": rows[0].id},
        )
    report = run_batch(process, token, rows, monotonic=stepping_clock()).execute()

    assert report.skipped == [rows[2].id]
    assert [job.id for job, _, _ in report.finished] == [rows[0].id, rows[1].id]
    stored = fetch(rows[2].id)
    assert stored.state is JobState.CANCELLED and stored.result["error"] == "by a neighbour"
    assert [fetch(rows[i].id).state for i in (0, 1)] == [JobState.SUCCEEDED] * 2


def test_a_message_with_an_outdated_token_runs_nothing(
    process: WorkerProcess, job_factory: JobFactory, fetch: Fetch
) -> None:
    _, rows = batch_of(job_factory, [{}, {}])
    report = run_batch(process, "not-the-token", rows).execute()
    assert report.claimed == [] and report.finished == []
    assert [fetch(row.id) for row in rows] == rows


def test_a_duplicate_batch_message_runs_nothing_twice(
    process: WorkerProcess, job_factory: JobFactory, fetch: Fetch
) -> None:
    token, rows = batch_of(job_factory, [{}, {}])
    run_batch(process, token, rows).execute()
    first = [fetch(row.id) for row in rows]
    again = run_batch(process, token, rows).execute()
    assert again.claimed == [] and again.refused and again.failure() is None
    assert [fetch(row.id) for row in rows] == first


def test_a_soft_time_limit_fails_its_row_and_hands_back_the_rest(
    process: WorkerProcess, job_factory: JobFactory, fetch: Fetch
) -> None:
    token, rows = batch_of(job_factory, [{}, {"data": {"soft_limit": True}}, {}, {}])
    # Each reading of the clock moves it 3 s on: the second row's own run lasts the whole
    # 2.5 s limit, so that row is at fault.
    report = run_batch(
        process, token, rows, soft_timeouts=(SoftLimitHit,), soft_limit=2.5,
        monotonic=stepping_clock(3.0),
    ).execute()  # fmt: skip

    assert fetch(rows[0].id).state is JobState.SUCCEEDED
    failed = fetch(rows[1].id)
    assert failed.state is JobState.FAILED
    assert failed.result["exception"] == "SoftTimeLimitExceeded"
    assert "soft time limit (2.5 s)" in failed.result["error"]
    assert report.released == [rows[2].id, rows[3].id]
    for row in rows[2:]:
        back = fetch(row.id)
        assert back.state is JobState.PENDING
        assert (back.task_id, back.started, back.recoveries) == (None, None, 1)
    assert process.heartbeat.running() == []


def test_a_crash_mid_batch_reruns_only_the_rows_whose_outcome_was_not_written(
    bridge: BridgeApp, process: WorkerProcess, job_factory: JobFactory, fetch: Fetch
) -> None:
    token, rows = batch_of(job_factory, [{}, {}, {"data": {"crash": True}}, {}])
    with pytest.raises(Crash):
        # A sync before every row: the first two outcomes are written before the crash.
        run_batch(process, token, rows, monotonic=stepping_clock()).execute()
    written = [fetch(row.id) for row in rows[:2]]
    assert [job.state for job in written] == [JobState.SUCCEEDED] * 2
    assert [fetch(row.id).state for row in rows[2:]] == [JobState.RUNNING] * 2

    # The worker's main process (or the heartbeat's timeout) takes the lost attempt back.
    recovered = JobRecovery(bridge).recover_attempt(
        LostAttempt([row.id for row in rows], token), NOW
    )
    assert sorted(item.job_id for item in recovered) == [rows[2].id, rows[3].id]
    assert [fetch(row.id) for row in rows[:2]] == written
    assert [fetch(row.id).state for row in rows[2:]] == [JobState.PENDING] * 2


def test_a_batch_stopped_reason_is_recorded_for_released_rows(
    bridge: BridgeApp, job_factory: JobFactory
) -> None:
    token, rows = batch_of(job_factory, [{"started": NOW, "heartbeat": NOW}])
    recovered = JobRecovery(bridge).recover_attempt(
        LostAttempt([rows[0].id], token, BATCH_STOPPED), NOW
    )
    assert [item.reason for item in recovered] == [BATCH_STOPPED]


def test_a_soft_time_limit_between_two_rows_hands_back_the_rows_not_run(
    process: WorkerProcess, job_factory: JobFactory, fetch: Fetch
) -> None:
    token, rows = batch_of(job_factory, [{}, {}, {}, {}])
    readings = itertools.count(1)

    def limit_strikes_before_the_second_row() -> float:
        # The fifth reading is the second row's look at the clock, after the first ran.
        if next(readings) == 5:
            raise SoftLimitHit("the soft time limit was hit between two rows")
        return 0.0

    report = run_batch(
        process,
        token,
        rows,
        monotonic=limit_strikes_before_the_second_row,
        soft_timeouts=(SoftLimitHit,),
    ).execute()

    assert [job.id for job, _, _ in report.finished] == [rows[0].id]
    assert fetch(rows[0].id).state is JobState.SUCCEEDED
    assert report.released == [row.id for row in rows[1:]]
    assert [fetch(row.id).state for row in rows[1:]] == [JobState.PENDING] * 3
    assert process.heartbeat.running() == []


def test_a_soft_time_limit_that_strikes_a_quick_row_hands_it_back_unblamed(
    process: WorkerProcess, job_factory: JobFactory, fetch: Fetch
) -> None:
    # The limit struck the second row before its own run could have lasted it: the
    # time went to the rows before it, so it goes back to pending, not failed.
    token, rows = batch_of(job_factory, [{}, {"data": {"soft_limit": True}}, {}])
    report = run_batch(
        process, token, rows, soft_timeouts=(SoftLimitHit,), soft_limit=2.5,
        monotonic=lambda: 0.0,
    ).execute()  # fmt: skip
    assert fetch(rows[0].id).state is JobState.SUCCEEDED
    assert report.released == [rows[1].id, rows[2].id]
    assert [fetch(row.id).state for row in rows[1:]] == [JobState.PENDING] * 2
    assert all(job.id != rows[1].id for job, _, _ in report.finished)
