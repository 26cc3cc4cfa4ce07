"""Property-based tests of the scheduling API against the real PostgreSQL table.

Every generated call of ``schedule_job``, ``schedule_cron_job`` or ``schedule_jobs`` must
either succeed and leave a row whose columns are exactly what was asked (``data`` read
back equal AND of the same types: ints stay ints, floats stay floats), or raise a subclass
of ``InvalidJobError`` and leave the table exactly as it was. An independent oracle in
this file says which of the two must happen, so a validation that became too strict fails
these tests as surely as one that became too lax.

The general strategies stay inside two domains where the library is known to break (see
the dedicated tests at the end, which cover them in full): floats of magnitude 1e16 and
more, and ints of more than 4300 digits.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from worker_bridge import WorkerJobConfig, schedule_cron_job, schedule_job, schedule_jobs
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
from worker_bridge.outcome import decide_outcome
from worker_bridge.payload import MAX_DEPTH

# Hypothesis imports libcst to print a failing example as a patch; libcst's import warns
# (mypy_extensions.TypedDict), which the suite's filterwarnings=error would turn into an
# INTERNALERROR hiding the failure itself. Import it once here, with the warning silenced.
with warnings.catch_warnings(), contextlib.suppress(ImportError):
    warnings.simplefilter("ignore", DeprecationWarning)
    import hypothesis.extra._patching  # noqa: F401

Snapshot = list[dict[str, Any]]
AllJobs = Callable[[], list[WorkerJob]]

#: A small data limit, so that generated documents cross it often.
SMALL_LIMIT = 4096
DEFAULT_LIMIT = 1024 * 1024
TEN_YEARS_MS = 10 * 365 * 24 * 3600 * 1000
INT32 = (-(2**31), 2**31 - 1)

PROPERTY = settings(
    max_examples=120,
    deadline=None,
    # No "explain" phase: it reruns a failing example many times over, at a database
    # round trip each, and the failing example alone says enough.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    database=None,  # nothing written into the working tree
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # the table is reset per example instead
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)

SQL_LIKE = [
    "'; DROP TABLE worker_jobs; --",
    '"; DROP TABLE worker_jobs; --',
    "' OR '1'='1",
    "1; DELETE FROM worker_jobs",
    "$$; TRUNCATE worker_jobs; $$",
    "E'\\x00'",
    ":type",
    "%(data)s",
    "%s",
    "{}",
    "\\",
    "\\u0000",
    "' || pg_sleep(5) || '",
]
ODD_TEXT = [
    "",
    " ",
    "\u202eevil\u202c",  # RTL override
    "\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627",  # Hebrew, Arabic
    "e\u0301\u0301\u0301",  # combining marks
    "\U0001f600\U0001f4a9\U00010348",  # astral
    "\U0010ffff",
    "\ufeff\u200b\u200d\u2028\u2029",  # BOM, zero-width, line separators
    "\x01\x1f\x7f\t\r\n",
    "\U0010fffd",
    "a" * 70_000,
]
# Strings the database cannot store: the API must refuse them.
UNSTORABLE_TEXT = ["a\x00b", "\x00", "\ud800", "x\udfffy", "\ud83d\ude00"]


# --- the oracle -----------------------------------------------------------------------------


def _storable_str(value: str) -> bool:
    return "\x00" not in value and not any(0xD800 <= ord(ch) <= 0xDFFF for ch in value)


def data_is_valid(data: object, limit: int) -> bool:
    """Whether ``data`` is a JSON object PostgreSQL can store within ``limit`` bytes."""
    if data is None:
        return True
    if type(data) is not dict:
        return False

    def ok(value: object, depth: int) -> bool:
        if depth > MAX_DEPTH:
            return False
        if value is None or isinstance(value, bool | int):
            return True
        if isinstance(value, float):
            return math.isfinite(value)
        if isinstance(value, str):
            return _storable_str(value)
        if type(value) is list:
            return all(ok(item, depth + 1) for item in value)
        if type(value) is dict:
            return all(
                isinstance(key, str) and _storable_str(key) and ok(item, depth + 1)
                for key, item in value.items()
            )
        return False

    if not ok(data, 0):
        return False
    size = len(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    return size <= limit


def delay_is_valid(value: object) -> bool:
    if isinstance(value, timedelta):
        ms = value // timedelta(milliseconds=1)
    elif type(value) is int:
        ms = value
    else:
        return False
    return 0 <= ms <= TEN_YEARS_MS


def expected_errors(config: WorkerJobConfig, known: frozenset[str], limit: int) -> tuple[type, ...]:
    """The InvalidJobError subclasses ``config`` may raise (one per problem it has);
    empty if it must be accepted. Which problem is reported first is not prescribed."""
    errors: list[type] = []
    if not (isinstance(config.type, str) and config.type in known):
        errors.append(UnknownJobTypeError)
    if type(config.user_id) is not int or not INT32[0] <= config.user_id <= INT32[1]:
        errors.append(InvalidUserIdError)
    if not data_is_valid(config.data, limit):
        errors.append(InvalidJobDataError)
    due = config.due
    if due is not None and (not isinstance(due, datetime) or due.utcoffset() is None):
        errors.append(InvalidDueError)
    if not isinstance(config.auto_reschedule_on_failure, bool):
        errors.append(InvalidJobError)
    for delay in (config.auto_reschedule_on_failure_delay, config.remove_delay):
        if not delay_is_valid(delay):
            errors.append(InvalidDelayError)
    return tuple(errors)


def ms(value: int | timedelta) -> int:
    return value // timedelta(milliseconds=1) if isinstance(value, timedelta) else value


def same_json(left: Any, right: Any, where: str = "$") -> None:
    """Assert ``left`` and ``right`` are equal JSON values of the same Python types."""
    assert type(left) is type(right), (
        f"{where}: {type(left).__name__} came back as {type(right).__name__} ({left!r:.80} -> {right!r:.80})"
    )
    if isinstance(left, dict):
        assert left.keys() == right.keys(), f"{where}: keys differ"
        for key in left:
            same_json(left[key], right[key], f"{where}.{key}"[:200])
    elif isinstance(left, list):
        assert len(left) == len(right), f"{where}: lengths differ"
        for index, (a, b) in enumerate(zip(left, right, strict=True)):
            same_json(a, b, f"{where}[{index}]"[:200])
    else:
        # -0.0 == 0.0: JSONB has no negative zero (see the report); every other float exact.
        assert left == right, f"{where}: {left!r:.80} came back as {right!r:.80}"


# --- table helpers --------------------------------------------------------------------------


def snapshot(all_jobs: AllJobs) -> Snapshot:
    columns = [column.key for column in WorkerJob.__table__.columns]
    return [{key: getattr(job, key) for key in columns} for job in all_jobs()]


@contextmanager
def fresh_table(bridge: BridgeApp) -> Iterator[None]:
    """An empty table for one Hypothesis example (fixtures run once per test, not per example)."""
    with bridge.engine.begin() as connection:
        connection.execute(text("TRUNCATE worker_jobs, worker_job_minutes RESTART IDENTITY"))
    yield


def with_limit(bridge: BridgeApp, limit: int) -> BridgeApp:
    """The test bridge with another ``max_data_bytes`` (same engine and table)."""
    return BridgeApp(
        settings=replace(bridge.settings, max_data_bytes=limit),
        engine=bridge.engine,
        session_factory=bridge.session_factory,
    )


def seed(bridge: BridgeApp) -> list[WorkerJob]:
    """Pending rows a new job may supersede, and one finished row nothing may touch."""
    rows = [
        schedule_job(WorkerJobConfig(type="echo", user_id=1, data={"seed": 1}), bridge=bridge),
        schedule_job(WorkerJobConfig(type="noop", user_id=0), bridge=bridge),
        schedule_job(WorkerJobConfig(type="echo", user_id=-5), bridge=bridge),
    ]
    with bridge.engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE worker_jobs SET started = now(), finished = now(), success = true "
                "WHERE id = :id"
            ),
            {"id": rows[1].id},
        )
    return rows


# --- strategies -----------------------------------------------------------------------------

storable_chars = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
any_chars = st.characters(exclude_categories=())  # surrogates and NUL included

strings = st.one_of(
    st.text(storable_chars, max_size=30),
    st.text(any_chars, max_size=10),
    st.sampled_from(SQL_LIKE + ODD_TEXT + UNSTORABLE_TEXT),
    st.integers(0, 5000).map(lambda n: "\u00e9" * n),  # two bytes each in UTF-8
)
# Ints of every size up to 4300 digits (int <-> str limit); floats below 1e16 in magnitude.
ints = st.one_of(
    st.integers(),
    st.integers(-(2**64), 2**64),
    st.integers(0, 4299).map(lambda digits: 10**digits - 1),
    st.sampled_from([0, -1, 2**31, 2**53 + 1, 2**63, -(2**63) - 1, 10**4299]),
)
floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15),
    st.sampled_from([0.1, 0.30000000000000004, 1e-300, 5e-324, 1.5, -2.0, 1e15, 9.999e15]),
    st.sampled_from([math.nan, math.inf, -math.inf]),  # must be refused
)
scalars = st.one_of(st.none(), st.booleans(), ints, floats, strings)
storable_strings = st.one_of(
    st.text(storable_chars, max_size=30), st.sampled_from(SQL_LIKE + ODD_TEXT)
)
storable_values = st.recursive(
    st.one_of(st.none(), st.booleans(), ints, floats.filter(math.isfinite), storable_strings),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(storable_strings, children, max_size=4),
    ),
    max_leaves=20,
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.dictionaries(strings, children, max_size=6),
    ),
    max_leaves=40,
)
non_json = st.one_of(
    st.tuples(st.integers()),
    st.sets(st.integers(), max_size=2),
    st.just(datetime(2030, 1, 1, tzinfo=UTC)),
    st.just(b"bytes"),
    st.just(object()),
)


def nested(depth: int) -> dict[str, Any]:
    """A dict whose innermost value sits ``depth`` levels below the top."""
    value: Any = "bottom"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return {"top": value}


datas = st.one_of(
    st.none(),
    st.dictionaries(strings, json_values, max_size=8),
    st.dictionaries(strings, st.one_of(json_values, non_json), min_size=1, max_size=3),
    st.integers(MAX_DEPTH - 3, MAX_DEPTH + 3).map(nested),
    st.integers(SMALL_LIMIT - 12, SMALL_LIMIT - 4).map(lambda n: {"s": "x" * n}),
    st.lists(st.integers(), max_size=3),
    st.just("{}"),
    st.builds(lambda: {1: "int key"}),
    st.builds(lambda: {"nested": {("tuple",): 1}}),
)
known_types = ["echo", "noop", "fail", "other", "broken_import", "no_run", "async_echo"]
job_types = st.one_of(
    st.sampled_from(known_types),
    st.sampled_from([*SQL_LIKE, "", "Echo", "echo ", "echo.run", "__init__", "_private", "nope"]),
    st.text(max_size=20),
    st.integers(),
    st.none(),
)
user_ids = st.one_of(
    st.integers(-3, 3),
    st.integers(),
    st.integers(-(2**40), 2**40),
    st.sampled_from([INT32[0], INT32[1], INT32[0] - 1, INT32[1] + 1, 2**200]),
    st.booleans(),
    st.floats(),
    st.text(max_size=5),
    st.none(),
)
aware = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
) | st.builds(
    lambda moment, minutes: moment.replace(tzinfo=timezone(timedelta(minutes=minutes))),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
    st.integers(-23 * 60, 23 * 60),
)
dues = st.one_of(
    st.none(),
    aware,
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),  # naive
    st.just("2030-01-01T00:00:00Z"),
    st.integers(),
)
delays = st.one_of(
    st.integers(0, 10_000),
    st.integers(),
    st.sampled_from([TEN_YEARS_MS, TEN_YEARS_MS + 1, -1]),
    st.timedeltas(min_value=timedelta(days=-10), max_value=timedelta(days=4000)),
    st.floats(0, 10),
    st.booleans(),
    st.none(),
)
flags = st.one_of(st.booleans(), st.booleans(), st.sampled_from([0, 1, "yes", None]))

configs = st.builds(
    WorkerJobConfig,
    type=job_types,
    user_id=user_ids,
    due=dues,
    data=datas,
    auto_reschedule_on_failure=flags,
    auto_reschedule_on_failure_delay=delays,
    remove_delay=delays,
)
valid_configs = st.builds(
    WorkerJobConfig,
    type=st.sampled_from(known_types),
    user_id=st.integers(-2, 2),
    due=st.none() | aware,
    data=st.none() | st.dictionaries(storable_strings, storable_values, max_size=5),
    auto_reschedule_on_failure=st.booleans(),
    auto_reschedule_on_failure_delay=st.integers(0, 10_000),
    remove_delay=st.integers(0, 10_000),
)

CRON_TOKENS = [
    "*", "*/3", "*/15", "0", "1", "5", "23", "29", "30", "31", "59", "60", "7", "12", "13",
    "1-5", "5-1", "0-7", "1/8", "mon", "fri", "fri-mon", "jan", "feb", "dec", "sun-sat",
    "1,15", "L", "?", "5#2", "H", "*/0", "*/61", "-1", "", "9999999999", "MON-FRI",
]  # fmt: skip
cron_fields = st.lists(st.sampled_from(CRON_TOKENS), min_size=1, max_size=3).map(",".join)
crons = st.one_of(
    st.lists(cron_fields, min_size=4, max_size=7).map(" ".join),
    st.sampled_from(
        [
            "*/3 * * * * *",
            "* * * * *",
            "0 0 30 2 *",
            "0 0 29 2 *",
            "@daily",
            "@hourly",
            "@reboot",
            "@DAILY",
            " * *\t* *  * ",
            "* * * * * * *",
            "0 0 31 4,6 *",
            "0 0 31 4 mon",
            "'; DROP TABLE worker_jobs; --",
            "* * * * *\x00",
            "*\u00a0* * * *",
            "",
        ]
    ),
    st.text(max_size=30),
)


# --- schedule_job ---------------------------------------------------------------------------


@dataclass
class Known:
    types: frozenset[str]


@pytest.fixture
def known(bridge: BridgeApp) -> Known:
    return Known(bridge.jobs.known_types())


def check_stored(job: WorkerJob, config: WorkerJobConfig, stored: WorkerJob, now: datetime) -> None:
    """The row read back is exactly the config, pending, and what the call returned."""
    assert stored.id == job.id
    assert stored.type == config.type and type(stored.user_id) is int
    assert stored.user_id == config.user_id
    same_json({} if config.data is None else config.data, stored.data)
    if stored.cron_schedule is not None:
        pass  # a cron job is due at its next fire time: checked by the cron test
    elif config.due is None:
        assert now - timedelta(seconds=5) <= stored.due <= datetime.now(UTC)
    else:
        assert stored.due == config.due, (stored.due, config.due)
    assert stored.auto_reschedule_on_failure is config.auto_reschedule_on_failure
    assert stored.auto_reschedule_on_failure_delay == ms(config.auto_reschedule_on_failure_delay)
    assert stored.remove_delay == ms(config.remove_delay)
    assert stored.state is JobState.PENDING and stored.attempts == 0
    assert stored.started is None and stored.finished is None and stored.result is None
    same_json(job.data, stored.data)


def check_superseded(before: Snapshot, after: Snapshot, new: WorkerJob) -> None:
    """The rows of before are untouched except the pending ones of new's pair, now cancelled."""
    after_by_id = {row["id"]: row for row in after}
    assert set(after_by_id) == {row["id"] for row in before} | {new.id}
    for row in before:
        now_row = after_by_id[row["id"]]
        pending = row["finished"] is None and row["started"] is None
        if pending and (row["type"], row["user_id"]) == (new.type, new.user_id):
            assert now_row["finished"] is not None and now_row["success"] is False
            assert now_row["result"]["cancelled_by"] == new.id
        else:
            assert now_row == row


@PROPERTY
@given(config=configs)
def test_schedule_job_round_trips_or_refuses_and_writes_nothing(
    bridge: BridgeApp, all_jobs: AllJobs, known: Known, config: WorkerJobConfig
) -> None:
    """Any config: accepted exactly as the oracle says; an accepted one is stored exactly
    (data of the same types, due to the microsecond) and cancels only its own pair's
    pending job; a refused one raises the oracle's InvalidJobError subclass and changes
    no row."""
    small = with_limit(bridge, SMALL_LIMIT)
    with fresh_table(bridge):
        seed(bridge)
        before = snapshot(all_jobs)
        expected = expected_errors(config, known.types, SMALL_LIMIT)
        now = datetime.now(UTC)
        if expected:
            with pytest.raises(InvalidJobError) as raised:
                schedule_job(config, bridge=small)
            assert isinstance(raised.value, expected), (raised.value, expected)
            assert snapshot(all_jobs) == before
            return
        job = schedule_job(config, bridge=small)
        after = snapshot(all_jobs)
        stored = next(WorkerJob(**row) for row in after if row["id"] == job.id)
        check_stored(job, config, stored, now)
        check_superseded(before, after, job)


@PROPERTY
@given(config=valid_configs, cron=crons)
def test_schedule_cron_job_accepts_valid_cron_and_refuses_the_rest(
    bridge: BridgeApp, all_jobs: AllJobs, known: Known, config: WorkerJobConfig, cron: str
) -> None:
    """Any cron string with a valid config: either a row whose cron_schedule is the
    expression with its whitespace collapsed, due at a whole second after ``due`` (or
    now), or InvalidCronError and no row changed."""
    with fresh_table(bridge):
        seed(bridge)
        before = snapshot(all_jobs)
        now = datetime.now(UTC)
        try:
            job = schedule_cron_job(config, cron, bridge=bridge)
        except InvalidJobError as exc:
            assert isinstance(exc, InvalidCronError), exc
            assert snapshot(all_jobs) == before
            return
        after = snapshot(all_jobs)
        stored = next(WorkerJob(**row) for row in after if row["id"] == job.id)
        check_stored(job, config, stored, now)
        check_superseded(before, after, job)
        fields = [f for f in re.split(r"[ \t\r\n\f\v]+", cron) if f]
        assert stored.cron_schedule == " ".join(fields)
        assert stored.due > (config.due or now) and stored.due.microsecond == 0
        if len(fields) == 5:
            assert stored.due.second == 0


@PROPERTY
@given(batch=st.lists(st.one_of(valid_configs, valid_configs, configs), max_size=6))
def test_schedule_jobs_is_all_or_nothing(
    bridge: BridgeApp, all_jobs: AllJobs, known: Known, batch: list[WorkerJobConfig]
) -> None:
    """A batch is written whole or not at all: with a bad config, the error names the index
    of the first bad one and no row changes; otherwise every row comes back exactly, in
    order, and of each (type, user) only the last of the batch is left pending."""
    small = with_limit(bridge, SMALL_LIMIT)
    with fresh_table(bridge):
        seed(bridge)
        before = snapshot(all_jobs)
        errors = [expected_errors(config, known.types, SMALL_LIMIT) for config in batch]
        bad = [index for index, error in enumerate(errors) if error]
        now = datetime.now(UTC)
        if bad:
            with pytest.raises(InvalidJobError) as raised:
                schedule_jobs(batch, bridge=small)
            assert isinstance(raised.value, errors[bad[0]]), (raised.value, errors[bad[0]])
            assert str(raised.value).startswith(f"configs[{bad[0]}]: ")
            assert snapshot(all_jobs) == before
            return
        jobs = schedule_jobs(batch, bridge=small)
        assert len(jobs) == len(batch)
        after = {row["id"]: WorkerJob(**row) for row in snapshot(all_jobs)}
        assert len(after) == len(before) + len(batch)
        last_of_pair = {(c.type, c.user_id): i for i, c in enumerate(batch)}
        for index, (config, job) in enumerate(zip(batch, jobs, strict=True)):
            stored = after[job.id]
            assert stored.type == config.type and stored.user_id == config.user_id
            same_json({} if config.data is None else config.data, stored.data)
            if config.due is not None:
                assert stored.due == config.due
            assert stored.auto_reschedule_on_failure_delay == ms(
                config.auto_reschedule_on_failure_delay
            )
            if last_of_pair[(config.type, config.user_id)] == index:
                assert stored.state is JobState.PENDING
            else:
                assert stored.state is JobState.CANCELLED
        for row in before:
            pair = (row["type"], row["user_id"])
            live = row["finished"] is None and row["started"] is None
            if live and pair in last_of_pair:
                assert after[row["id"]].state is JobState.CANCELLED
            else:
                assert {k: getattr(after[row["id"]], k) for k in row} == row
        assert all(job.created_at >= now - timedelta(seconds=5) for job in jobs)


BUILTIN_KIND_CASES: list[tuple[str, Callable[[], object]]] = [
    ("type", lambda: schedule_job(WorkerJobConfig(type="nope", user_id=1))),
    ("user_id", lambda: schedule_job(WorkerJobConfig(type="echo", user_id="1"))),  # type: ignore[arg-type]
    ("data", lambda: schedule_job(WorkerJobConfig(type="echo", user_id=1, data={"x": math.nan}))),
    (
        "due",
        lambda: schedule_job(WorkerJobConfig(type="echo", user_id=1, due=datetime(2030, 1, 1))),
    ),
    ("delay", lambda: schedule_job(WorkerJobConfig(type="echo", user_id=1, remove_delay=-1))),
    ("cron", lambda: schedule_cron_job(WorkerJobConfig(type="echo", user_id=1), "nope")),
    (
        "auto_reschedule_on_failure",
        lambda: schedule_job(
            WorkerJobConfig(type="echo", user_id=1, auto_reschedule_on_failure="yes")  # type: ignore[arg-type]
        ),
    ),
    ("config", lambda: schedule_job({"type": "echo", "user_id": 1})),  # type: ignore[arg-type]
    ("batch config", lambda: schedule_jobs([None])),  # type: ignore[list-item]
]


@pytest.mark.parametrize(
    "call", [c[1] for c in BUILTIN_KIND_CASES], ids=[c[0] for c in BUILTIN_KIND_CASES]
)
def test_every_validation_error_is_also_a_builtin_value_or_type_error(
    bridge: BridgeApp, all_jobs: AllJobs, call: Callable[[], object]
) -> None:
    """README and errors.py: bad input raises an InvalidJobError subclass that is ALSO a
    ValueError or TypeError, so callers catching the built-in kind keep working."""
    with pytest.raises(InvalidJobError) as raised:
        call()
    assert isinstance(raised.value, ValueError | TypeError), type(raised.value).__mro__
    assert all_jobs() == []


# --- limits ---------------------------------------------------------------------------------


def _sized(size: int, char: str = "x") -> dict[str, str]:
    """{"s": "..."} of exactly ``size`` bytes of compact UTF-8 JSON (8 bytes of frame)."""
    width = len(char.encode("utf-8"))
    assert (size - 8) % width == 0
    return {"s": char * ((size - 8) // width)}


@pytest.mark.parametrize("char", ["x", "\u00e9", "\U0001f600"])
@pytest.mark.parametrize("limit", [64, 4096, DEFAULT_LIMIT])
def test_data_at_the_limit_is_stored_and_one_byte_more_is_refused(
    bridge: BridgeApp, all_jobs: AllJobs, fetch: Callable[[int], WorkerJob], char: str, limit: int
) -> None:
    """max_data_bytes counts UTF-8 bytes of compact JSON: data of exactly the limit is
    stored whole by all three calls; past it (one character more) they raise
    InvalidJobDataError naming the limit, and nothing is written."""
    width = len(char.encode("utf-8"))
    at = (limit - 8) // width * width + 8
    capped = bridge if limit == DEFAULT_LIMIT else with_limit(bridge, limit)
    assert capped.settings.max_data_bytes == limit
    fits = _sized(at, char)
    over = _sized(at + width, char)
    one = schedule_job(WorkerJobConfig(type="echo", user_id=1, data=fits), bridge=capped)
    cron = schedule_cron_job(WorkerJobConfig(type="other", user_id=1, data=fits), "* * * * *",
                             bridge=capped)  # fmt: skip
    [batch] = schedule_jobs([WorkerJobConfig(type="noop", user_id=1, data=fits)], bridge=capped)
    for job in (one, cron, batch):
        assert fetch(job.id).data == fits
    before = snapshot(all_jobs)
    calls: list[Callable[[], object]] = [
        lambda: schedule_job(WorkerJobConfig(type="echo", user_id=1, data=over), bridge=capped),
        lambda: schedule_cron_job(
            WorkerJobConfig(type="other", user_id=1, data=over), "* * * * *", bridge=capped
        ),
        lambda: schedule_jobs(
            [
                WorkerJobConfig(type="noop", user_id=2),
                WorkerJobConfig(type="noop", user_id=1, data=over),
            ],
            bridge=capped,
        ),
    ]
    for call in calls:
        with pytest.raises(
            InvalidJobDataError,
            match=rf"over the limit of {limit} \(worker_bridge_max_data_bytes\)",
        ):
            call()
    assert snapshot(all_jobs) == before


def test_the_default_data_limit_is_one_mebibyte() -> None:
    """Out of the box (celeryconfig and Settings agree), max_data_bytes is 1 MiB."""
    from worker_bridge.celery_app import create_celery_app
    from worker_bridge.settings import Settings

    assert Settings.from_conf(create_celery_app().conf).max_data_bytes == DEFAULT_LIMIT
    assert Settings.from_conf(create_celery_app().conf).max_result_bytes == DEFAULT_LIMIT
    assert Settings.from_conf({"worker_bridge_max_data_bytes": 10}).max_data_bytes == 10


@pytest.mark.parametrize("limit", [16, 1000])
def test_a_result_over_max_result_bytes_fails_the_run(
    job_factory: Callable[..., WorkerJob], limit: int
) -> None:
    """decide_outcome: a result of exactly max_result_bytes succeeds and is kept as is; one
    byte more fails the run with an error naming the size and the setting (and no result
    kept), and still schedules the retry the job asked for."""
    job = job_factory(type="echo", user_id=1, auto_reschedule_on_failure=True,
                      auto_reschedule_on_failure_delay=1000)  # fmt: skip
    now = datetime.now(UTC)
    fits = _sized(limit)
    ok = decide_outcome(job, now=now, timezone="UTC", returned=fits, max_result_bytes=limit)
    assert ok.success is True and ok.result == fits and ok.follow_up is None
    over = _sized(limit + 1)
    failed = decide_outcome(job, now=now, timezone="UTC", returned=over, max_result_bytes=limit)
    assert failed.success is False
    assert failed.result["exception"] == "InvalidResultError"
    assert f"{limit + 1} bytes as JSON, over the limit of {limit}" in failed.result["error"]
    assert "worker_bridge_max_result_bytes" in failed.result["error"]
    assert "x" * (limit - 8) not in json.dumps(failed.result)
    assert failed.follow_up is not None
    assert failed.follow_up.due == now + timedelta(milliseconds=1000)


# --- the domains where the library is known to break ------------------------------------------

FEWER = settings(PROPERTY, max_examples=60)


@FEWER
@given(value=st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e16, -1e16, 1.5e16, 2.0**53, 1e300, -1.7976931348623157e308, 1e22]),
))  # fmt: skip
def test_every_finite_float_comes_back_a_float(
    bridge: BridgeApp, fetch: Callable[[int], WorkerJob], value: float
) -> None:
    """A float in data either comes back as the same float (not an int), or is refused with
    InvalidJobDataError: never silently changed type. (JSONB stores 1e16 as the numeric
    10000000000000000, which reads back as an int.)"""
    with fresh_table(bridge):
        data = {"f": value, "list": [value]}
        for schedule in (
            lambda: schedule_job(WorkerJobConfig(type="echo", user_id=1, data=data)),
            lambda: schedule_jobs([WorkerJobConfig(type="echo", user_id=2, data=data)])[0],
        ):
            try:
                job = schedule()
            except InvalidJobDataError:
                continue
            same_json(data, fetch(job.id).data)


@FEWER
@given(
    digits=st.one_of(st.integers(4290, 4310), st.integers(4300, 20_000)),
    sign=st.sampled_from([1, -1]),
)
def test_an_int_of_any_size_is_stored_or_refused_as_invalid_data(
    bridge: BridgeApp, all_jobs: AllJobs, fetch: Callable[[int], WorkerJob], digits: int, sign: int
) -> None:
    """An int of any number of digits either round-trips or raises InvalidJobDataError;
    Python's own int-to-str ValueError must not escape (it is no InvalidJobError)."""
    value = sign * (10 ** (digits - 1))
    with fresh_table(bridge):
        try:
            job = schedule_job(WorkerJobConfig(type="echo", user_id=1, data={"n": value}))
        except InvalidJobDataError:
            assert all_jobs() == []
            return
        assert fetch(job.id).data == {"n": value}


@FEWER
@given(
    due=st.one_of(
        st.datetimes(timezones=st.timezones()),
        st.builds(
            lambda moment, minutes: moment.replace(tzinfo=timezone(timedelta(minutes=minutes))),
            st.one_of(st.datetimes(), st.sampled_from([datetime.min, datetime.max])),
            st.integers(-23 * 60 - 59, 23 * 60 + 59),
        ),
    ),
    cron=st.sampled_from([None, "* * * * *", "*/3 * * * * *", "0 0 1 1 *"]),
)
def test_any_aware_due_is_stored_or_refused_as_invalid_due(
    bridge: BridgeApp,
    all_jobs: AllJobs,
    fetch: Callable[[int], WorkerJob],
    due: datetime,
    cron: str | None,
) -> None:
    """Every aware datetime, from year 1 to 9999 in any zone or offset, is either stored
    (the same instant, to the microsecond) or refused with InvalidDueError/InvalidCronError:
    never an OverflowError from converting it to UTC."""
    with fresh_table(bridge):
        config = WorkerJobConfig(type="echo", user_id=1, due=due)
        try:
            job = schedule_job(config) if cron is None else schedule_cron_job(config, cron)
        except (InvalidDueError, InvalidCronError):
            assert all_jobs() == []
            return
        stored = fetch(job.id)
        # Compared as UTC instants: Python never calls an aware datetime that falls in
        # its zone's gap (1895-12-01 00:00 in Australia/West) equal to one in another zone.
        if cron is None:
            assert stored.due == due.astimezone(UTC)
        else:
            assert stored.due > due.astimezone(UTC)
