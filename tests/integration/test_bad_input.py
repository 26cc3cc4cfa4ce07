"""Bad input: a clear error naming the problem, and nothing written or cancelled."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

import pytest

from worker_bridge import WorkerJobConfig, schedule_cron_job, schedule_job
from worker_bridge.bridge import BridgeApp
from worker_bridge.errors import (
    InvalidCronError,
    InvalidDelayError,
    InvalidDueError,
    InvalidJobDataError,
    InvalidJobError,
    InvalidUserIdError,
    UnknownJobTypeError,
)
from worker_bridge.models import JobState, WorkerJob

BAD_CONFIGS: list[tuple[str, dict[str, Any], type[Exception], type[Exception], str]] = [
    ("unknown type", {"type": "no_such_job"}, UnknownJobTypeError, ValueError, "known types: "),
    ("type not a str", {"type": 12}, UnknownJobTypeError, ValueError, "must be a str"),
    ("dotted type", {"type": "echo.run"}, UnknownJobTypeError, ValueError, "unknown job type"),
    ("user_id str", {"user_id": "7"}, InvalidUserIdError, TypeError, "user_id must be an int"),
    ("user_id float", {"user_id": 7.0}, InvalidUserIdError, TypeError, "user_id must be an int"),
    ("user_id bool", {"user_id": True}, InvalidUserIdError, TypeError, "user_id must be an int"),
    ("user_id too big", {"user_id": 2**40}, InvalidUserIdError, ValueError, "32-bit"),
    ("data a list", {"data": [1, 2]}, InvalidJobDataError, TypeError, "data must be a dict"),
    ("data a str", {"data": "{}"}, InvalidJobDataError, TypeError, "data must be a dict"),
    ("data with NaN", {"data": {"x": math.nan}}, InvalidJobDataError, ValueError, "NaN"),
    (
        "data with Infinity",
        {"data": {"x": [math.inf]}},
        InvalidJobDataError,
        ValueError,
        "Infinity",
    ),
    ("data with a set", {"data": {"x": {1}}}, InvalidJobDataError, ValueError, "set at $.x"),
    (
        "data with a datetime",
        {"data": {"when": datetime(2030, 1, 1)}},
        InvalidJobDataError,
        ValueError,
        "datetime at $.when",
    ),
    ("data with an int key", {"data": {1: "a"}}, InvalidJobDataError, ValueError, "not a str"),
    ("data with a tuple", {"data": {"t": (1, 2)}}, InvalidJobDataError, ValueError, "tuple"),
    ("data with NUL", {"data": {"s": "a\x00b"}}, InvalidJobDataError, ValueError, "NUL"),
    (
        "data with a lone surrogate",
        {"data": {"s": "\ud800"}},
        InvalidJobDataError,
        ValueError,
        "surrogate",
    ),
    ("naive due", {"due": datetime(2030, 1, 1, 12)}, InvalidDueError, ValueError, "naive"),
    ("due a date", {"due": date(2030, 1, 1)}, InvalidDueError, TypeError, "must be a datetime"),
    (
        "due a str",
        {"due": "2030-01-01T00:00:00Z"},
        InvalidDueError,
        TypeError,
        "must be a datetime",
    ),
    (
        "negative retry delay",
        {"auto_reschedule_on_failure_delay": -1},
        InvalidDelayError,
        ValueError,
        "auto_reschedule_on_failure_delay must not be negative",
    ),
    (
        "negative timedelta",
        {"remove_delay": timedelta(seconds=-5)},
        InvalidDelayError,
        ValueError,
        "remove_delay must not be negative",
    ),
    (
        "delay a float",
        {"remove_delay": 1.5},
        InvalidDelayError,
        TypeError,
        "milliseconds (int) or a timedelta",
    ),
    (
        "retry flag a str",
        {"auto_reschedule_on_failure": "yes"},
        InvalidJobError,
        Exception,
        "must be a bool",
    ),
]


@pytest.fixture
def untouched(bridge: BridgeApp, all_jobs: Callable[[], list[WorkerJob]]) -> Callable[[], None]:
    """A pending job that a bad call of the same type and user must leave alone."""
    existing = schedule_job(WorkerJobConfig(type="echo", user_id=1))

    def check() -> None:
        jobs = all_jobs()
        assert [j.id for j in jobs] == [existing.id]
        assert jobs[0].state is JobState.PENDING

    return check


@pytest.mark.parametrize(
    ("overrides", "error", "builtin", "message"),
    [case[1:] for case in BAD_CONFIGS],
    ids=[case[0] for case in BAD_CONFIGS],
)
def test_bad_config_is_refused_before_anything_is_written(
    untouched: Callable[[], None],
    overrides: dict[str, Any],
    error: type[Exception],
    builtin: type[Exception],
    message: str,
) -> None:
    config = WorkerJobConfig(**{"type": "echo", "user_id": 1, **overrides})
    with pytest.raises(error, match=_literal(message)) as raised:
        schedule_job(config)
    assert isinstance(raised.value, builtin)
    assert isinstance(raised.value, InvalidJobError)
    with pytest.raises(error):
        schedule_cron_job(config, "* * * * *")
    untouched()


def test_unknown_type_message_lists_the_known_types(untouched: Callable[[], None]) -> None:
    with pytest.raises(UnknownJobTypeError) as raised:
        schedule_job(WorkerJobConfig(type="ecoh", user_id=1))
    message = str(raised.value)
    known = message.split("known types: ", 1)[1].split(", ")
    assert {"async_echo", "echo", "other"} <= set(known) and known == sorted(known)
    untouched()


@pytest.mark.parametrize(
    "cron",
    [
        "",
        "* * * *",
        "* * * * * * *",
        "61 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * * 13 *",
        "* * * * 8",
        "*/0 * * * *",
        "a b c d e",
        "60 * * * * *",
        "0 0 30 2 *",
        "5-1 * * * *",
    ],
)
def test_invalid_cron_is_refused(untouched: Callable[[], None], cron: str) -> None:
    with pytest.raises(InvalidCronError) as raised:
        schedule_cron_job(WorkerJobConfig(type="echo", user_id=1), cron)
    assert isinstance(raised.value, ValueError)
    assert repr(cron) in str(raised.value) or cron in str(raised.value)
    untouched()


def test_cron_not_a_str_is_refused(untouched: Callable[[], None]) -> None:
    with pytest.raises(InvalidCronError):
        schedule_cron_job(WorkerJobConfig(type="echo", user_id=1), 5)  # type: ignore[arg-type]
    untouched()


def test_oversized_data_is_refused(bridge: BridgeApp, untouched: Callable[[], None]) -> None:
    limit = bridge.settings.max_data_bytes
    with pytest.raises(InvalidJobDataError, match="over the limit"):
        schedule_job(WorkerJobConfig(type="echo", user_id=1, data={"x": "y" * limit}))
    untouched()


def test_config_must_be_a_worker_job_config(untouched: Callable[[], None]) -> None:
    with pytest.raises(InvalidJobError, match="expected a WorkerJobConfig"):
        schedule_job({"type": "echo", "user_id": 1})  # type: ignore[arg-type]
    untouched()


def _literal(message: str) -> str:
    import re

    return re.escape(message)
