"""decide_outcome: what a finished run writes and what follows it (pure, no clock)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from worker_bridge.models import WorkerJob
from worker_bridge.outcome import MAX_TRACEBACK_CHARS, decide_outcome

NOW = datetime(2030, 6, 1, 12, 0, 0, 500_000, tzinfo=UTC)


def job(**overrides: Any) -> WorkerJob:
    values: dict[str, Any] = {
        "id": 10,
        "type": "echo",
        "user_id": 3,
        "data": {"k": 1},
        "due": NOW - timedelta(seconds=1),
        "started": NOW - timedelta(milliseconds=900),
        "cron_schedule": None,
        "auto_reschedule_on_failure": False,
        "auto_reschedule_on_failure_delay": 0,
        "remove_delay": 0,
    }
    values.update(overrides)
    return WorkerJob(**values)


def decide(row: WorkerJob, **kwargs: Any) -> Any:
    return decide_outcome(row, now=NOW, timezone="UTC", max_result_bytes=1000, **kwargs)


def test_success_of_a_one_off_job() -> None:
    outcome = decide(job(remove_delay=5000), returned={"ok": True})
    assert outcome.success is True and outcome.result == {"ok": True}
    assert outcome.remove_at == NOW + timedelta(seconds=5)
    assert outcome.follow_up is None


def test_none_is_a_valid_result() -> None:
    outcome = decide(job(), returned=None)
    assert outcome.success is True and outcome.result is None


def test_failure_records_message_class_and_traceback() -> None:
    try:
        raise KeyError("missing")
    except KeyError as exc:
        outcome = decide(job(), error=exc)
    assert outcome.success is False and outcome.remove_at is None
    assert outcome.result["error"] == "'missing'"
    assert outcome.result["exception"] == "KeyError"
    assert "Traceback" in outcome.result["traceback"]
    assert outcome.follow_up is None


def test_failure_with_auto_retry_schedules_the_same_config_after_the_delay() -> None:
    row = job(
        auto_reschedule_on_failure=True,
        auto_reschedule_on_failure_delay=2500,
        cron_schedule="*/5 * * * *",
        remove_delay=7,
    )
    outcome = decide(row, error=RuntimeError("x"))
    retry = outcome.follow_up
    assert retry is not None
    assert retry.due == NOW + timedelta(milliseconds=2500)
    assert retry.rescheduled_from_job == row.id
    assert (retry.type, retry.user_id, retry.data) == (row.type, row.user_id, row.data)
    assert retry.cron_schedule == "*/5 * * * *"  # the schedule is kept
    assert retry.auto_reschedule_on_failure and retry.auto_reschedule_on_failure_delay == 2500
    assert retry.remove_delay == 7


@pytest.mark.parametrize("failed", [False, True])
def test_cron_job_schedules_its_next_fire_after_success_or_plain_failure(failed: bool) -> None:
    row = job(cron_schedule="*/3 * * * * *")
    outcome = decide(row, error=RuntimeError("x")) if failed else decide(row, returned=1)
    follow = outcome.follow_up
    assert follow is not None and follow.rescheduled_from_job == row.id
    assert follow.due == datetime(2030, 6, 1, 12, 0, 3, tzinfo=UTC)
    assert follow.cron_schedule == "*/3 * * * * *"


def test_cron_follow_up_never_repeats_the_rows_own_slot() -> None:
    # A worker clock behind the row's due time must not schedule the same fire again.
    row = job(cron_schedule="* * * * * *", due=NOW + timedelta(seconds=2))
    follow = decide(row, returned=1).follow_up
    assert follow is not None and follow.due == datetime(2030, 6, 1, 12, 0, 3, tzinfo=UTC)


def test_cron_follow_up_is_computed_in_the_configured_zone() -> None:
    row = job(cron_schedule="0 9 * * *")
    outcome = decide_outcome(
        row, now=NOW, timezone="America/New_York", returned=1, max_result_bytes=1000
    )
    assert outcome.follow_up is not None
    assert outcome.follow_up.due == datetime(2030, 6, 1, 13, 0, tzinfo=UTC)  # 09:00 EDT


@pytest.mark.parametrize(
    ("returned", "problem"),
    [
        ({"when": object()}, "object at $.when"),
        ({"x": math.nan}, "NaN"),
        ({1: "int key"}, "not a str"),
        ({"big": "x" * 2000}, "over the limit of 1000"),
        ((1, 2), "tuple"),
    ],
)
def test_an_unstorable_result_fails_the_job(returned: Any, problem: str) -> None:
    outcome = decide(job(auto_reschedule_on_failure=True), returned=returned)
    assert outcome.success is False
    assert "cannot be stored" in outcome.result["error"] and problem in outcome.result["error"]
    assert outcome.result["exception"] == "InvalidResultError"
    assert outcome.follow_up is not None  # a failure like any other: retried


def test_long_messages_and_tracebacks_are_truncated_keeping_the_end() -> None:
    try:
        raise ValueError("x" * 50_000 + " the end")
    except ValueError as exc:
        outcome = decide(job(), error=exc)
    assert len(outcome.result["error"]) < 5_000
    trace = outcome.result["traceback"]
    assert len(trace) <= MAX_TRACEBACK_CHARS + 50
    assert trace.startswith("[truncated]") and trace.rstrip().endswith(" the end")
