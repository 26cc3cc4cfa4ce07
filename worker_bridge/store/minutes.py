"""Finished rows by minute and type: the console's chart, and removal's roll-up.

A finished row is counted once: while it is in ``worker_jobs``, from the row;
after removal deleted it, from ``worker_job_minutes``, which the deleting
transaction adds it to. The chart of the last hour is the sum of both, so it
tells the truth whatever ``remove_delay`` is.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Table, case, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from worker_bridge.job import JobState
from worker_bridge.models import (
    WorkerJobMinute,
    console_key,
    minute_of,
    seconds_between,
    state_condition,
)
from worker_bridge.store.schema import jobs_table

minutes_table = cast(Table, WorkerJobMinute.__table__)
#: How long removal keeps a minute's counts (the console charts the last hour).
RETENTION = timedelta(days=7)


@dataclass(frozen=True, slots=True)
class MinuteCounts:
    """The rows of one type that finished in one minute."""

    minute: datetime
    type: str
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    #: How many of them ran (cancelled rows did not), and their start lags in seconds.
    ran: int = 0
    lag_sum: float = 0.0
    lag_max: float = 0.0

    @property
    def finished(self) -> int:
        """Every row that finished in the minute."""
        return self.succeeded + self.failed + self.cancelled

    @property
    def lag_mean(self) -> float | None:
        """The mean start lag of the rows that ran, or None if none ran."""
        return self.lag_sum / self.ran if self.ran else None

    def __add__(self, other: MinuteCounts) -> MinuteCounts:
        return replace(
            self,
            succeeded=self.succeeded + other.succeeded,
            failed=self.failed + other.failed,
            cancelled=self.cancelled + other.cancelled,
            ran=self.ran + other.ran,
            lag_sum=self.lag_sum + other.lag_sum,
            lag_max=max(self.lag_max, other.lag_max),
        )


def _ran() -> ColumnElement[bool]:
    return state_condition(JobState.SUCCEEDED) | state_condition(JobState.FAILED)


def _lag() -> ColumnElement[float]:
    return seconds_between(jobs_table.c.due, jobs_table.c.started)


def _count(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def finished_by_minute(
    connection: Connection, *, since: datetime, until: datetime
) -> list[MinuteCounts]:
    """Rows that finished in ``[since, until)``, by minute and type, removed ones included."""
    t = jobs_table.c
    minute = minute_of(t.finished).label("minute")
    present = connection.execute(
        select(
            minute,
            t.type,
            _count(state_condition(JobState.SUCCEEDED)),
            _count(state_condition(JobState.FAILED)),
            _count(state_condition(JobState.CANCELLED)),
            _count(_ran()),
            func.coalesce(func.sum(case((_ran(), _lag()))), 0.0),
            func.coalesce(func.max(case((_ran(), _lag()))), 0.0),
        )
        .where(
            t.finished.isnot(None)
            & (console_key(t.finished) >= since)
            & (console_key(t.finished) < until)
        )
        .group_by(minute, t.type)
    )
    m = minutes_table.c
    removed = connection.execute(
        select(
            m.minute, m.type, m.succeeded, m.failed, m.cancelled, m.ran, m.lag_sum, m.lag_max
        ).where((m.minute >= minute_of_value(since)) & (m.minute < until))
    )
    return merge(_counts(row) for rows in (present, removed) for row in rows)


def minute_of_value(instant: datetime) -> datetime:
    """The minute ``instant`` falls in (seconds and below zero)."""
    return instant.replace(second=0, microsecond=0)


def _counts(row: Any) -> MinuteCounts:
    minute = row[0]
    if isinstance(minute, str):  # SQLite's bucket is text
        minute = datetime.fromisoformat(minute)
    if minute.tzinfo is None:
        minute = minute.replace(tzinfo=UTC)
    return MinuteCounts(
        minute, row[1], int(row[2]), int(row[3]), int(row[4]), int(row[5]),
        float(row[6]), float(row[7]),
    )  # fmt: skip


def merge(counts: Iterable[MinuteCounts]) -> list[MinuteCounts]:
    """Counts of the same (minute, type) added together, ordered by minute then type."""
    merged: dict[tuple[datetime, str], MinuteCounts] = {}
    for item in counts:
        key = (item.minute, item.type)
        merged[key] = merged[key] + item if key in merged else item
    return [merged[key] for key in sorted(merged)]


def removal_returning() -> list[ColumnElement[Any]]:
    """What removal's DELETE hands back of each row: enough to roll it up, no payload."""
    t = jobs_table.c
    return [
        minute_of(t.finished).label("minute"),
        t.type,
        *(_flag(state_condition(state)) for state in _FINISHED_STATES),
        _flag(_ran()),
        case((_ran(), _lag()), else_=0.0),
        case((_ran(), _lag()), else_=0.0),
    ]


_FINISHED_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


def _flag(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return case((condition, 1), else_=0)


def delete_and_roll_up(connection: Connection, ids: Any) -> int:
    """Delete the rows whose id is in ``ids`` (a subquery) and add them to the minutes."""
    rows = connection.execute(
        delete(jobs_table).where(jobs_table.c.id.in_(ids)).returning(*removal_returning())
    ).all()
    if rows:
        add_minutes(connection, merge(_counts(row) for row in rows))
    return len(rows)


def add_minutes(connection: Connection, counts: Sequence[MinuteCounts]) -> None:
    """Add ``counts`` to ``worker_job_minutes`` (one upsert)."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(minutes_table).values(
        [
            {
                "minute": c.minute,
                "type": c.type,
                "succeeded": c.succeeded,
                "failed": c.failed,
                "cancelled": c.cancelled,
                "ran": c.ran,
                "lag_sum": c.lag_sum,
                "lag_max": c.lag_max,
            }
            for c in counts
        ]
    )
    m = minutes_table.c
    new = statement.excluded
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=[m.minute, m.type],
            set_={
                "succeeded": m.succeeded + new.succeeded,
                "failed": m.failed + new.failed,
                "cancelled": m.cancelled + new.cancelled,
                "ran": m.ran + new.ran,
                "lag_sum": m.lag_sum + new.lag_sum,
                "lag_max": func.greatest(m.lag_max, new.lag_max)
                if dialect is postgresql
                else func.max(m.lag_max, new.lag_max),
            },
        )
    )


def delete_minutes_before(connection: Connection, before: datetime) -> int:
    """Forget the minutes older than ``before``."""
    result = connection.execute(delete(minutes_table).where(minutes_table.c.minute < before))
    return int(result.rowcount)
