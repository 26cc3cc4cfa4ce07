"""Read-only reports over the table: listing, lineage, statistics (behind ``Store``).

Portable SQLAlchemy Core only, so that they run unchanged on PostgreSQL and
SQLite. A row's status always comes from
:func:`~worker_bridge.models.state_expression`, so the rule that derives it from
the timestamps lives in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    Row,
    and_,
    case,
    func,
    literal_column,
    select,
    true,
    tuple_,
    type_coerce,
    union_all,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement

from worker_bridge.errors import ConfigurationError
from worker_bridge.job import Job, JobState
from worker_bridge.models import console_key, state_condition, state_expression
from worker_bridge.store.schema import jobs_table

#: How many rows :func:`job_lineage` follows each way by default.
LINEAGE_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class JobSummary:
    """The columns of a row worth a line in a listing, and its derived status.

    ``data`` and ``result`` are left out: they may each be up to a MiB.
    """

    id: int
    type: str
    user_id: int
    status: JobState
    due: datetime
    started: datetime | None
    finished: datetime | None
    attempts: int
    cron_schedule: str | None
    rescheduled_from_job: int | None


@dataclass(frozen=True, slots=True)
class Lineage:
    """The rows before and after one job in its chain of follow-ups."""

    #: From the first job of the chain to the one just before the job.
    earlier: list[JobSummary]
    #: From the job's follow-up to the latest row of the chain.
    later: list[JobSummary]
    #: Whether either direction stopped at the limit before the chain's end.
    truncated: bool


@dataclass(frozen=True, slots=True)
class JobStats:
    """Row counts by type and status, and the pending row due the longest."""

    #: type -> status -> number of rows; only the combinations that occur.
    counts: dict[str, dict[JobState, int]]
    #: The pending row with the earliest due time (lowest id on a tie), or None.
    oldest_pending: JobSummary | None


def _summary_columns() -> list[ColumnElement[Any]]:
    c = jobs_table.c
    return [
        c.id,
        c.type,
        c.user_id,
        state_expression().label("status"),
        c.due,
        c.started,
        c.finished,
        c.attempts,
        c.cron_schedule,
        c.rescheduled_from_job,
    ]


def _summary(row: Row[*tuple[Any, ...]]) -> JobSummary:
    return JobSummary(
        id=row.id,
        type=row.type,
        user_id=row.user_id,
        status=JobState(row.status),
        due=row.due,
        started=row.started,
        finished=row.finished,
        attempts=row.attempts,
        cron_schedule=row.cron_schedule,
        rescheduled_from_job=row.rescheduled_from_job,
    )


#: The timestamps a job list can be ranged on (each has an index).
TIME_FIELDS = ("due", "finished")


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which rows a listing, a count or a bulk cancel applies to: every field given must hold."""

    job_type: str | None = None
    user_id: int | None = None
    status: JobState | None = None
    task_id: str | None = None
    #: JSON containment: rows whose ``data`` contains this object (PostgreSQL only).
    data: dict[str, Any] | None = None
    #: The timestamp ``since`` (inclusive) and ``until`` (exclusive) apply to: one of TIME_FIELDS.
    time_field: str = "due"
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.time_field not in TIME_FIELDS:
            raise ValueError(f"time_field must be one of {TIME_FIELDS}, not {self.time_field!r}")

    @property
    def is_empty(self) -> bool:
        """Whether it selects every row (``data={}`` is contained in every row's data)."""
        return replace(self, data=self.data or None) == JobFilter(time_field=self.time_field)

    def where(self, dialect: str, *, keyed: bool = True) -> ColumnElement[bool]:
        """The filter as a SQL condition for the ``dialect`` (``true()`` when empty).

        ``keyed``: on the console's keys (:func:`~worker_bridge.models.console_key`),
        which its indexes of finished rows serve; else on the plain columns, which
        the partial indexes of live rows serve.
        """
        c = jobs_table.c

        def key(column: ColumnElement[Any]) -> ColumnElement[Any]:
            return console_key(column) if keyed else column

        conditions: list[ColumnElement[bool]] = []
        if self.job_type is not None:
            conditions.append(key(c.type) == self.job_type)
        if self.user_id is not None:
            conditions.append(key(c.user_id) == self.user_id)
        if self.status is not None:
            conditions.append(state_condition(self.status))
        if self.task_id is not None:
            conditions.append(key(c.task_id) == self.task_id)
        if self.data:  # an empty object is contained in every row's data: no filter
            if dialect != "postgresql":
                raise ConfigurationError(
                    f"filtering on data (JSON containment) needs PostgreSQL; this is {dialect}"
                )
            # type_coerce: JSONB's operators in Python, no cast in SQL (the GIN index applies).
            conditions.append(type_coerce(c.data, JSONB).contains(self.data))
        column = key(c[self.time_field])
        if self.since is not None:
            conditions.append(column >= self.since)
        if self.until is not None:
            conditions.append(column < self.until)
        return and_(true(), *conditions)

    @property
    def has_range(self) -> bool:
        """Whether a time range is given."""
        return self.since is not None or self.until is not None

    def parts(self) -> list[bool]:
        """Which of the finished rows (True) and the live rows (False) can match.

        The two are read apart: the console's indexes hold finished rows only
        (a live row changes, and each change of an indexed row writes every
        index again), and live rows have indexes of their own.
        """
        if self.status is not None:
            return [self.status in _FINISHED]
        if self.has_range and self.time_field == "finished":
            return [True]
        return [True, False]


_FINISHED = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


def list_jobs(
    connection: Connection,
    where: JobFilter | None = None,
    *,
    job_type: str | None = None,
    user_id: int | None = None,
    status: JobState | None = None,
    limit: int = 50,
    before_id: int | None = None,
    before_at: datetime | None = None,
    task_id: str | None = None,
) -> list[JobSummary]:
    """Up to ``limit`` rows matching ``where`` (or the filters given), newest first.

    Newest means the highest id; with a time range, the latest in the range's
    column, then the highest id. ``before_id`` pages on (with ``before_at``,
    the previous page's last time, under a time range): keyset pagination,
    as fast on the millionth row as on the first. Under a time range the order
    follows the range's index, so that a window far back in the table costs
    what a recent one does (ordered by id, the database would walk the ids
    down from the newest to reach it).
    """
    if where is None:
        where = JobFilter(job_type=job_type, user_id=user_id, status=status, task_id=task_id)
    c = jobs_table.c
    dialect = connection.dialect.name
    if where.is_empty:
        # Every row: the primary key alone, newest first.
        query = select(*_summary_columns()).order_by(c.id.desc()).limit(limit)
        if before_id is not None:
            query = query.where(c.id < before_id)
        return [_summary(row) for row in connection.execute(query)]
    branches = []
    for finished in where.parts():
        column = (
            (console_key(c[where.time_field]) if finished else c[where.time_field])
            if where.has_range
            else c.id
        )
        branch = (
            select(*_summary_columns(), column.label("sort_key"))
            .where(
                where.where(dialect, keyed=finished)
                & (c.finished.isnot(None) if finished else c.finished.is_(None))
            )
            .order_by(column.desc(), c.id.desc())
            .limit(limit)
        )
        if before_id is not None and where.has_range and before_at is not None:
            # The plain bound lets the index start there; the pair breaks ties.
            branch = branch.where(
                (column <= before_at) & (tuple_(column, c.id) < tuple_(before_at, before_id))
            )
        elif before_id is not None:
            branch = branch.where(c.id < before_id)
        branches.append(branch.subquery())
    merged = union_all(*(select(branch) for branch in branches)).subquery()
    rows = connection.execute(
        select(merged).order_by(merged.c.sort_key.desc(), merged.c.id.desc()).limit(limit)
    )
    return [_summary(row) for row in rows]


@dataclass(frozen=True, slots=True)
class Count:
    """How many rows match, counted up to a cap: ``exact`` False means "at least ``value``"."""

    value: int
    exact: bool


def count_jobs(
    connection: Connection, where: JobFilter, *, cap: int = 10_000, live: bool = False
) -> Count:
    """How many rows match ``where`` (only unfinished ones with ``live``), up to ``cap``.

    Counting every match of a broad filter on millions of rows reads them all;
    a capped count stops at ``cap`` and says so.
    """
    c = jobs_table.c
    value = 0
    for finished in [False] if live else where.parts():
        condition = where.where(connection.dialect.name, keyed=finished) & (
            c.finished.isnot(None) if finished else c.finished.is_(None)
        )
        matching = select(c.id).where(condition).limit(cap + 1).subquery()
        value += int(connection.execute(select(func.count()).select_from(matching)).scalar_one())
    return Count(min(value, cap), exact=value <= cap)


def live_ids(
    connection: Connection, where: JobFilter, *, limit: int, up_to: int | None = None
) -> list[int]:
    """Up to ``limit`` ids of unfinished rows matching ``where``, oldest first, locked
    until the transaction ends (bulk cancel); only ids up to ``up_to`` if given."""
    query = (
        select(jobs_table.c.id)
        .where(where.where(connection.dialect.name, keyed=False) & jobs_table.c.finished.is_(None))
        .order_by(jobs_table.c.id)
        .limit(limit)
        .with_for_update()
    )
    if up_to is not None:
        query = query.where(jobs_table.c.id <= up_to)
    return [row.id for row in connection.execute(query)]


def running_attempts(connection: Connection, job_ids: Sequence[int]) -> list[tuple[int, str, str]]:
    """(id, type, task id) of the running rows among ``job_ids``: what a cancel must stop.

    Only those three columns: a row's data and result may each be a MiB.
    """
    c = jobs_table.c
    rows = connection.execute(
        select(c.id, c.type, c.task_id)
        .where(c.id.in_(list(job_ids)) & state_condition(JobState.RUNNING) & c.task_id.isnot(None))
        .order_by(c.id)
    )
    return [(row.id, row.type, row.task_id) for row in rows]


def last_id(connection: Connection) -> int:
    """The highest id in the table (0 when empty): where a bulk action's preview stopped."""
    return int(connection.execute(select(func.coalesce(func.max(jobs_table.c.id), 0))).scalar_one())


def job_lineage(connection: Connection, job_id: int, *, limit: int = LINEAGE_LIMIT) -> Lineage:
    """The chain of ``job_id`` through ``rescheduled_from_job``, at most ``limit`` rows each way.

    One recursive query each way. A unique index gives a row one follow-up at
    most, so both directions are chains, not trees; the depth bound also ends
    a cycle that hand-edited rows could form.
    """
    earlier, earlier_cut = _chain(connection, job_id, backward=True, limit=limit)
    later, later_cut = _chain(connection, job_id, backward=False, limit=limit)
    earlier.reverse()  # fetched nearest first; a chain reads from its first job
    return Lineage(earlier=earlier, later=later, truncated=earlier_cut or later_cut)


def _chain(
    connection: Connection, job_id: int, *, backward: bool, limit: int
) -> tuple[list[JobSummary], bool]:
    c = jobs_table.c
    # Inline integer literals, not bound parameters: PostgreSQL types a recursive
    # CTE's columns from its first term, and a driver may bind 0 as a smallint.
    start = select(c.id, c.rescheduled_from_job, literal_column("0", Integer).label("depth"))
    chain = start.where(c.id == job_id).cte("lineage", recursive=True)
    if backward:
        link = c.id == chain.c.rescheduled_from_job
    else:
        link = c.rescheduled_from_job == chain.c.id
    # One row beyond the limit tells a chain that goes on from one that ends there.
    chain = chain.union_all(
        select(c.id, c.rescheduled_from_job, chain.c.depth + literal_column("1", Integer)).where(
            link & (chain.c.depth <= limit)
        )
    )
    rows = connection.execute(
        select(*_summary_columns(), chain.c.depth.label("depth"))
        .select_from(jobs_table.join(chain, c.id == chain.c.id))
        .where(chain.c.depth > 0)
        .order_by(chain.c.depth)
    ).all()
    return [_summary(row) for row in rows if row.depth <= limit], len(rows) > limit


@dataclass(frozen=True, slots=True)
class CronSeries:
    """A live cron row and the rows before it in its chain: one line of the cron series."""

    live: JobSummary
    #: The rows it follows, newest first, up to the number asked.
    history: list[JobSummary]


def cron_series(
    connection: Connection,
    *,
    job_type: str | None = None,
    user_id: int | None = None,
    after: tuple[str, int, int] | None = None,
    limit: int = 50,
    history: int = 5,
) -> list[CronSeries]:
    """Live cron rows ordered by (type, user, id), each with its last ``history`` rows.

    ``after`` is the (type, user_id, id) of the last line of the page before
    (keyset pagination over a partial index of live cron rows). Two queries
    whatever the page's size: the live rows, then one recursive walk back
    from all of them at once.
    """
    c = jobs_table.c
    query = (
        select(*_summary_columns())
        .where(c.cron_schedule.isnot(None) & c.finished.is_(None))
        .order_by(c.type, c.user_id, c.id)
        .limit(limit)
    )
    if job_type is not None:
        query = query.where(c.type == job_type)
    if user_id is not None:
        query = query.where(c.user_id == user_id)
    if after is not None:
        query = query.where(tuple_(c.type, c.user_id, c.id) > tuple_(*after))
    live = [_summary(row) for row in connection.execute(query)]
    earlier: dict[int, list[JobSummary]] = {row.id: [] for row in live}
    if live and history > 0:
        start = select(
            c.id, c.rescheduled_from_job, c.id.label("series"),
            literal_column("0", Integer).label("depth"),
        ).where(c.id.in_(list(earlier)))  # fmt: skip
        chain = start.cte("series", recursive=True)
        chain = chain.union_all(
            select(
                c.id, c.rescheduled_from_job, chain.c.series,
                chain.c.depth + literal_column("1", Integer),
            ).where((c.id == chain.c.rescheduled_from_job) & (chain.c.depth < history))
        )  # fmt: skip
        rows = connection.execute(
            select(*_summary_columns(), chain.c.series, chain.c.depth)
            .select_from(jobs_table.join(chain, c.id == chain.c.id))
            .where(chain.c.depth > 0)
            .order_by(chain.c.series, chain.c.depth)
        )
        for row in rows:
            earlier[row.series].append(_summary(row))
    return [CronSeries(row, earlier[row.id]) for row in live]


def follow_up_of(connection: Connection, job_id: int) -> int | None:
    """The id of the row that follows ``job_id`` (its cron follow-up or retry), or None."""
    found: int | None = connection.execute(
        select(jobs_table.c.id).where(jobs_table.c.rescheduled_from_job == job_id)
    ).scalar()
    return found


def job_stats(connection: Connection) -> JobStats:
    """Counts by type and status, and the pending row due the longest."""
    # Grouping by the status label through a subquery: grouping by the CASE
    # itself would repeat it with fresh bound parameters, which PostgreSQL does
    # not recognise as the selected expression.
    per_row = select(jobs_table.c.type, state_expression().label("status")).subquery()
    counts: dict[str, dict[JobState, int]] = {}
    for job_type, status, count in connection.execute(
        select(per_row.c.type, per_row.c.status, func.count())
        .group_by(per_row.c.type, per_row.c.status)
        .order_by(per_row.c.type)
    ):
        counts.setdefault(job_type, {})[JobState(status)] = count
    oldest = connection.execute(
        select(*_summary_columns())
        .where(state_expression() == JobState.PENDING.value)
        .order_by(jobs_table.c.due, jobs_table.c.id)
        .limit(1)
    ).first()
    return JobStats(counts=counts, oldest_pending=None if oldest is None else _summary(oldest))


@dataclass(frozen=True, slots=True)
class TypeBacklog:
    """The live rows of one job type at one instant: what the metrics gauges show."""

    type: str
    #: Pending rows (not sent), and those of them already due.
    pending: int
    due: int
    #: Sent to the broker, not yet started.
    dispatched: int
    running: int
    #: Running rows whose heartbeat is older than the cut-off given.
    stale_heartbeats: int
    #: The due time of the oldest due pending row, or None.
    oldest_due: datetime | None


def live_backlog(
    connection: Connection, *, now: datetime, heartbeat_before: datetime
) -> list[TypeBacklog]:
    """Live rows by type in one grouped query over the unfinished rows (a partial index)."""
    t = jobs_table.c
    unsent = t.started.is_(None) & t.dispatched_at.is_(None)
    due = unsent & (t.due <= now)

    def count_of(condition: ColumnElement[bool]) -> ColumnElement[Any]:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    rows = connection.execute(
        select(
            t.type,
            count_of(unsent),
            count_of(due),
            count_of(t.started.is_(None) & t.dispatched_at.isnot(None)),
            count_of(t.started.isnot(None)),
            count_of(
                t.started.isnot(None) & (func.coalesce(t.heartbeat, t.started) < heartbeat_before)
            ),
            func.min(case((due, t.due))),
        )
        .where(t.finished.is_(None))
        .group_by(t.type)
        .order_by(t.type)
    )
    return [
        TypeBacklog(job_type, int(p), int(d), int(s), int(r), int(h), _utc(oldest))
        for job_type, p, d, s, r, h, oldest in rows
    ]


def _utc(value: datetime | str | None) -> datetime | None:
    # An aggregate loses the column's type: SQLite hands back a naive string.
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def superseded_by(connection: Connection, job: Job) -> list[JobSummary]:
    """The rows ``job`` cancelled when it was scheduled (its pair's pending jobs).

    The supersede rule cancels them in the statement that inserts ``job``, so
    they finished at its ``created_at``: the index of failed rows by finish
    time finds them without scanning the table.
    """
    c = jobs_table.c
    rows = connection.execute(
        select(*_summary_columns())
        .where(
            # "= false", as the partial index's predicate says: "IS false" would
            # not prove it, and the lookup would read the whole table.
            c.success == False,  # noqa: E712
            c.finished == job.created_at,
            c.type == job.type,
            c.user_id == job.user_id,
            c.result["cancelled_by"].as_integer() == job.id,
        )
        .order_by(c.id)
    )
    return [_summary(row) for row in rows]
