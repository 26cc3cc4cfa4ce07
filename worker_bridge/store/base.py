"""The store interface: every query against ``worker_jobs``, one method each.

:class:`Store` is what the rest of worker_bridge calls; one subclass per
database implements it (``postgresql.PostgreSQLStore``,
``sqlite.SQLiteStore``), chosen once per engine by :func:`worker_bridge.store.store_for`.
The methods written here in portable SQLAlchemy Core are shared by both; the
abstract ones differ per database. Every query method takes the caller's
``Connection`` and leaves the transaction to the caller, so that several
writes (and the application's own rows) commit or roll back together.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import Connection, Engine, func, select, tuple_, update
from sqlalchemy.exc import DBAPIError

from worker_bridge.job import Job, NewJob
from worker_bridge.outcome import Outcome
from worker_bridge.store import minutes, reports
from worker_bridge.store.records import LostAttempt, Recovered, WrittenOutcome
from worker_bridge.store.schema import (
    CLAIM,
    CLAIM_MANY,
    FINISH,
    all_columns,
    cancellation_result,
    finish_params,
    job_values,
    jobs_table,
)
from worker_bridge.wakeup import Waiter

#: The live, dispatched, unstarted rows: their messages wait in the broker.
_IN_FLIGHT = (
    jobs_table.c.dispatched_at.isnot(None)
    & jobs_table.c.started.is_(None)
    & jobs_table.c.finished.is_(None)
)
#: The rows a dispatcher may send: neither started, finished nor sent.
_UNSENT = (
    jobs_table.c.started.is_(None)
    & jobs_table.c.finished.is_(None)
    & jobs_table.c.dispatched_at.is_(None)
)


class Store(ABC):
    """The queries of one database; subclasses implement the abstract ones."""

    #: Dialect name (``Engine.dialect.name``) this store serves.
    dialect: ClassVar[str]
    #: Whether several dispatchers may run against this database at once.
    concurrent_dispatchers: ClassVar[bool]
    #: How the dispatcher works here, for its start-up log line.
    dispatch_mode: ClassVar[str]

    # --- engines ------------------------------------------------------------------

    @abstractmethod
    def create_engine(self, url: str, **options: Any) -> Engine:
        """An engine for ``url`` set up as worker_bridge needs it (``options`` win)."""

    @abstractmethod
    def autocommit_engine(self, engine: Engine, **options: Any) -> Engine:
        """An engine for single-statement writes on ``engine``'s database."""

    @abstractmethod
    def autocommit_view(self, engine: Engine) -> Engine:
        """``engine`` itself, sharing its pool, used for single-statement writes."""

    @abstractmethod
    def ensure_schema(self, engine: Engine) -> None:
        """Create or migrate the table where that is done on first use."""

    @abstractmethod
    def waiter(self, engine: Engine) -> Waiter:
        """How a dispatcher waits for new rows on this database."""

    @abstractmethod
    def is_disconnect(self, error: DBAPIError) -> bool:
        """Whether ``error`` means the database could not be reached (worth retrying)."""

    # --- reading ------------------------------------------------------------------

    def get_job(self, connection: Connection, job_id: int) -> Job | None:
        """The row with ``job_id``, or None."""
        row = connection.execute(
            select(*all_columns).where(jobs_table.c.id == job_id)
        ).one_or_none()
        return None if row is None else Job.from_row(row)

    def get_jobs(self, connection: Connection, job_ids: Sequence[int]) -> list[Job]:
        """The rows with these ids, in id order; missing ids are left out."""
        rows = connection.execute(
            select(*all_columns).where(jobs_table.c.id.in_(list(job_ids))).order_by(jobs_table.c.id)
        )
        return [Job.from_row(row) for row in rows]

    #: Up to ``limit`` rows matching a filter, newest (highest id) first.
    list_jobs = staticmethod(reports.list_jobs)
    #: How many rows match a filter, counted up to a cap.
    count_jobs = staticmethod(reports.count_jobs)
    #: Ids of the unfinished rows matching a filter, oldest first.
    live_ids = staticmethod(reports.live_ids)
    #: The highest id in the table.
    last_id = staticmethod(reports.last_id)
    #: (id, type, task id) of the running rows among some ids.
    running_attempts = staticmethod(reports.running_attempts)
    #: Live cron rows, each with the rows before it in its chain.
    cron_series = staticmethod(reports.cron_series)
    #: The row that follows a job in its chain, if any.
    follow_up_of = staticmethod(reports.follow_up_of)
    #: The chain of a job through ``rescheduled_from_job``, ``limit`` rows each way.
    job_lineage = staticmethod(reports.job_lineage)
    #: Counts by type and status, and the pending row due the longest.
    job_stats = staticmethod(reports.job_stats)
    #: The rows a job cancelled when it was scheduled (supersede links, backwards).
    superseded_by = staticmethod(reports.superseded_by)
    #: Live rows by type (pending, due, dispatched, running, stale), in one grouped query.
    live_backlog = staticmethod(reports.live_backlog)
    #: Rows that finished in a time window, by minute and type (removed ones included).
    finished_by_minute = staticmethod(minutes.finished_by_minute)

    def describe_refusal(self, connection: Connection, job_id: int, token: str) -> str:
        """Why row ``job_id`` refused attempt ``token`` (for the one log line)."""
        return refusal_reason(self.get_job(connection, job_id), token)

    # --- scheduling -----------------------------------------------------------------

    @abstractmethod
    def supersede_and_insert(
        self,
        connection: Connection,
        job: NewJob,
        *,
        now: datetime,
        stale_before: datetime,
        serialize: bool = True,
    ) -> Job:
        """Cancel the pending jobs ``job`` supersedes, then insert it.

        Pending means: same type and user, not finished, and either not
        started or started before ``stale_before``. Cancelled rows get
        ``started = finished = now``, ``success = false`` and a result naming
        the new row. With ``serialize`` (the default) it waits for a
        concurrent writer of the pair; without it, on an autocommit
        connection, a concurrent writer's pending row makes it raise
        :class:`~worker_bridge.errors.PendingJobConflictError` (the caller
        retries, and the retry cancels that row).
        """

    @abstractmethod
    def supersede_and_insert_many(
        self, connection: Connection, jobs: Sequence[NewJob], *, now: datetime,
        stale_before: datetime,
    ) -> list[Job]:  # fmt: skip
        """Insert ``jobs`` as if each were passed to ``supersede_and_insert`` in turn.

        Returns the rows as stored (a job superseded by a later one of the
        batch comes back cancelled), in the order of ``jobs``.
        """

    def insert_unless_live(
        self, connection: Connection, job: NewJob, *, now: datetime
    ) -> Job | None:
        """Insert ``job`` unless a live row of its type and user exists (None then)."""
        self.lock_pair(connection, job.type, job.user_id)
        live = connection.execute(
            select(jobs_table.c.id)
            .where(
                (jobs_table.c.type == job.type)
                & (jobs_table.c.user_id == job.user_id)
                & jobs_table.c.finished.is_(None)
            )
            .limit(1)
        ).first()
        if live is not None:
            return None
        return self._insert(connection, job, now=now)

    def cancel_job(
        self, connection: Connection, job_id: int, *, now: datetime, reason: str
    ) -> bool:
        """Cancel one live row by hand; False if it was already finished or absent.

        A running row is cancelled too: its worker's finish is then refused,
        since the attempt token is cleared.
        """
        return self.cancel_jobs(connection, [job_id], now=now, reason=reason) == 1

    def cancel_jobs(
        self, connection: Connection, job_ids: Sequence[int], *, now: datetime, reason: str
    ) -> int:
        """Cancel the live rows among ``job_ids`` as :meth:`cancel_job` does; return how many."""
        if not job_ids:
            return 0
        result = connection.execute(
            update(jobs_table)
            .where(jobs_table.c.id.in_(list(job_ids)) & jobs_table.c.finished.is_(None))
            .values(
                started=func.coalesce(jobs_table.c.started, now),
                finished=now,
                success=False,
                result=cancellation_result(None, reason),
                task_id=None,
                heartbeat=None,
                updated_at=now,
            )
        )
        return int(result.rowcount)

    def run_now(self, connection: Connection, job_id: int, *, now: datetime) -> bool:
        """Make a pending, unsent row due at ``now``; False if it is not pending or already due.

        The dispatchers are woken in the same transaction (on PostgreSQL), so
        the row is sent on their next pass.
        """
        result = connection.execute(
            update(jobs_table)
            .where((jobs_table.c.id == job_id) & _UNSENT & (jobs_table.c.due > now))
            .values(due=now, updated_at=now)
        )
        if result.rowcount != 1:
            return False
        self.notify_dispatchers(connection)
        return True

    def estimate_rows(self, connection: Connection) -> int | None:
        """The table's row count as the planner estimates it (no scan), or None where unknown."""
        return None

    def lock_pair(self, connection: Connection, job_type: str, user_id: int) -> None:  # noqa: B027
        """Take the transaction-scoped lock that serialises writers of (type, user_id).

        Nothing by default: a database with one writer at a time needs no lock.
        """

    def _insert(self, connection: Connection, job: NewJob, *, now: datetime) -> Job:
        row = connection.execute(
            jobs_table.insert()
            .values(**job_values(job), created_at=now, updated_at=now)
            .returning(*all_columns)
        ).one()
        return Job.from_row(row)

    # --- dispatching ----------------------------------------------------------------

    @abstractmethod
    def claim_due_jobs(
        self,
        connection: Connection,
        *,
        now: datetime,
        limit: int,
        exclude_types: Sequence[str] = (),
    ) -> list[Job]:
        """Mark up to ``limit`` due, unsent rows as dispatched with a new task id.

        Rows of ``exclude_types`` (types at their concurrency cap) are left
        alone. The caller publishes one message per returned row and commits
        after; if it dies first, the rows fall back to pending and the
        messages it did publish carry task ids the table never recorded, so
        workers refuse them.
        """

    def unclaim_jobs(self, connection: Connection, job_ids: Sequence[int]) -> None:
        """Undo :meth:`claim_due_jobs` for rows ``job_ids``, in its transaction, before
        anything was published for them: they are pending and unsent again."""
        if job_ids:
            connection.execute(
                update(jobs_table)
                .where(jobs_table.c.id.in_(list(job_ids)))
                .values(dispatched_at=None, task_id=None)
            )

    def lock_types(self, connection: Connection, job_types: Sequence[str]) -> None:  # noqa: B027
        """Take the transaction-scoped locks of ``job_types``, so that dispatchers counting
        and sending a capped type do it one at a time. Nothing where one dispatcher runs."""

    def count_live_by_type(
        self, connection: Connection, job_types: Sequence[str]
    ) -> dict[str, int]:
        """How many rows of each of ``job_types`` are dispatched or running (sent, unfinished)."""
        if not job_types:
            return {}
        rows = connection.execute(
            select(jobs_table.c.type, func.count())
            .where(
                jobs_table.c.type.in_(list(job_types))
                & jobs_table.c.finished.is_(None)
                & jobs_table.c.dispatched_at.isnot(None)
            )
            .group_by(jobs_table.c.type)
        )
        return {job_type: count for job_type, count in rows}

    def fail_unsendable(
        self, connection: Connection, job_ids: Sequence[int], *, now: datetime, error: str
    ) -> None:
        """Finish rows that cannot be sent (no module for their type) as failed."""
        if not job_ids:
            return
        connection.execute(
            update(jobs_table)
            .where(jobs_table.c.id.in_(list(job_ids)) & jobs_table.c.finished.is_(None))
            .values(
                started=now,
                finished=now,
                success=False,
                updated_at=now,
                task_id=None,
                result={"error": error, "exception": "UnknownJobTypeError"},
            )
        )

    def share_token(self, connection: Connection, job_ids: Sequence[int], token: str) -> None:
        """Give dispatched rows ``job_ids`` one attempt token: the batch message's task id.

        Call in the dispatching transaction, before publishing; the rows'
        own tokens from :meth:`claim_due_jobs` were never published.
        """
        connection.execute(
            update(jobs_table).where(jobs_table.c.id.in_(list(job_ids))).values(task_id=token)
        )

    def count_in_flight(self, connection: Connection) -> int:
        """How many live rows are dispatched but not started (messages in the broker)."""
        count: int = connection.execute(
            select(func.count()).select_from(jobs_table).where(_IN_FLIGHT)
        ).scalar_one()
        return count

    def next_due(self, connection: Connection) -> datetime | None:
        """The due time of the earliest unsent pending row, or None."""
        due: datetime | str | None = connection.execute(
            select(func.min(jobs_table.c.due)).where(_UNSENT)
        ).scalar()
        # Aggregates lose the column type, so SQLite hands back a naive string.
        if isinstance(due, str):
            due = datetime.fromisoformat(due)
        if due is None:
            return None
        return due.replace(tzinfo=UTC) if due.tzinfo is None else due.astimezone(UTC)

    # --- attempts -------------------------------------------------------------------

    def claim_job(
        self, connection: Connection, job_id: int, token: str, *, worker: str, now: datetime
    ) -> Job | None:
        """Start the attempt ``token`` of row ``job_id``; None if it may not run.

        Atomic: one conditional UPDATE. It applies only while the row still
        carries this dispatch's token and is neither started nor finished, so
        a duplicate or outdated message, a cancelled or a running row is refused.
        """
        params = {"job_id": job_id, "token": token, "claimed_by": worker, "now": now}
        row = connection.execute(CLAIM, params).one_or_none()
        return None if row is None else Job.from_row(row)

    def claim_jobs(
        self,
        connection: Connection,
        job_ids: Sequence[int],
        token: str,
        *,
        worker: str,
        now: datetime,
    ) -> list[Job]:
        """Start the attempt ``token`` on every row of ``job_ids`` that allows it, in id order.

        A batch's claim: one conditional UPDATE, with :meth:`claim_job`'s rule
        for each row; the rows that refuse it are left out.
        """
        params = {"job_ids": list(job_ids), "token": token, "claimed_by": worker, "now": now}
        rows = connection.execute(CLAIM_MANY, params)
        return sorted((Job.from_row(row) for row in rows), key=lambda job: job.id)

    def still_held(self, connection: Connection, job_ids: Sequence[int], token: str) -> set[int]:
        """Which rows of ``job_ids`` are unfinished and still carry attempt ``token``.

        A batch asks before each row's turn: a row cancelled, or recovered
        and sent again, since the batch claimed it is not run.
        """
        held = connection.execute(
            select(jobs_table.c.id).where(
                jobs_table.c.id.in_(list(job_ids))
                & (jobs_table.c.task_id == token)
                & jobs_table.c.finished.is_(None)
            )
        ).scalars()
        return set(held)

    def live_rows_of_attempt(self, connection: Connection, job_type: str, token: str) -> set[int]:
        """The unfinished rows of ``job_type`` carrying attempt ``token`` (a batch shares one)."""
        rows = connection.execute(
            select(jobs_table.c.id).where(
                (jobs_table.c.type == job_type)
                & jobs_table.c.finished.is_(None)
                & (jobs_table.c.task_id == token)
            )
        ).scalars()
        return set(rows)

    def wait_for_dispatch_commit(  # noqa: B027
        self, connection: Connection, job_ids: Sequence[int], *, timeout_ms: int
    ) -> None:
        """Block until no other transaction holds rows ``job_ids`` (at most ``timeout_ms``).

        A dispatcher publishes before it commits, so a fast worker's claim can
        see the row as it was before the dispatch and miss it; after this wait
        the dispatch has committed or rolled back, and a second claim sees
        which. Nothing to wait for where one writer at a time holds the database.
        """

    def refresh_heartbeats(
        self, connection: Connection, attempts: Sequence[tuple[int, str]], *, now: datetime
    ) -> set[int]:
        """Refresh the heartbeat of these (row id, token) attempts; return the ids still theirs.

        A row that still carries the attempt's token but shows no start lost
        its claim, which commits asynchronously on PostgreSQL, in a crash of
        the server (every other change to the row clears or replaces the
        token): the heartbeat writes the start again, so that recovery does
        not take the running job for one whose message was lost.
        """
        if not attempts:
            return set()
        alive = connection.execute(
            update(jobs_table)
            .where(
                tuple_(jobs_table.c.id, jobs_table.c.task_id).in_(list(attempts))
                & jobs_table.c.finished.is_(None)
            )
            .values(heartbeat=now, started=func.coalesce(jobs_table.c.started, now))
            .returning(jobs_table.c.id)
        ).scalars()
        return set(alive)

    def finish_job(
        self,
        connection: Connection,
        job_id: int,
        token: str,
        *,
        now: datetime,
        success: bool,
        result: Any,
        remove_at: datetime | None,
    ) -> bool:
        """Write the end of attempt ``token``; False, writing nothing, if no longer current.

        Refused when the attempt is no longer the row's current one (recovered
        and sent again, or cancelled meanwhile).
        """
        params = finish_params(
            job_id, token, now=now, success=success, result=result, remove_at=remove_at
        )
        return connection.execute(FINISH, params).rowcount == 1

    @abstractmethod
    def write_outcome(
        self,
        connection: Connection,
        job: Job,
        token: str,
        outcome: Outcome,
        *,
        now: datetime,
        stale_before: datetime,
    ) -> WrittenOutcome:
        """Write the end of attempt ``token`` of ``job`` and its follow-up, atomically.

        The finish applies only while the row carries ``token``; the
        follow-up (if the outcome has one) is inserted only with it, under the
        pair's lock and with the supersede rule of ``supersede_and_insert``.
        On an autocommit connection this is one atomic write; in a
        transaction, it is part of the caller's.
        """

    def write_outcomes(
        self,
        connection: Connection,
        token: str,
        outcomes: Sequence[tuple[Job, Outcome]],
        *,
        now: datetime,
        stale_before: datetime,
    ) -> list[WrittenOutcome]:
        """Write the outcomes of several rows of attempt ``token`` (a batch), in one transaction.

        The same as :meth:`write_outcome` for each (job, outcome) in turn,
        answering in the same order; call in a transaction, so that they
        commit together. This portable form writes them one by one.
        """
        return [
            self.write_outcome(connection, job, token, outcome, now=now, stale_before=stale_before)
            for job, outcome in outcomes
        ]

    # --- maintenance ----------------------------------------------------------------

    @abstractmethod
    def recover_lost_jobs(
        self,
        connection: Connection,
        *,
        now: datetime,
        stale_before: datetime,
        heartbeat_before: datetime,
        redispatch_before: datetime | None,
        lost_attempt: LostAttempt | None = None,
        limit: int = 1000,
    ) -> list[Recovered]:
        """Put back to pending every live row whose attempt is presumed lost.

        Lost means: dispatched, never started, before ``redispatch_before``
        (a lost message; None leaves such rows alone, for while the broker
        holds a backlog); started, with a heartbeat older than
        ``heartbeat_before`` (a dead or stalled worker); or started before
        ``stale_before`` (the seed's rule); and the started rows of
        ``lost_attempt``, which its worker reported lost. A
        started row whose pair already
        has an unstarted pending job is cancelled in favour of that job
        instead, keeping one pending job per pair.
        """

    def notify_dispatchers(self, connection: Connection) -> None:  # noqa: B027
        """Wake the waiting dispatchers now (rows became due); nothing where they poll."""

    def delete_removable_jobs(
        self, connection: Connection, *, now: datetime, failed_before: datetime, limit: int = 10_000
    ) -> int:
        """Delete up to ``limit`` rows that are due for removal; return how many.

        Succeeded rows go once ``remove_at`` (finished + remove_delay) has
        passed; failed and cancelled rows once they finished before
        ``failed_before``. Rows that point to a deleted row keep living: the
        foreign key sets their ``rescheduled_from_job`` to NULL. The deleted
        rows are added to ``worker_job_minutes`` in the same transaction, and
        minutes older than ``minutes.RETENTION`` are forgotten.
        """
        removable = (
            select(jobs_table.c.id)
            .where(jobs_table.c.remove_at <= now)
            .union_all(
                # "= false", as the partial index's predicate says: with "IS
                # false" PostgreSQL cannot prove it, and reads the whole table
                # every minute to find the few failed rows past their retention.
                select(jobs_table.c.id).where(
                    (jobs_table.c.success == False)  # noqa: E712
                    & (jobs_table.c.finished < failed_before)
                )
            )
            .limit(limit)
        )
        # In the same transaction, the deleted rows join the chart's minutes:
        # counted once, whether still in the table or not.
        deleted = minutes.delete_and_roll_up(connection, removable)
        if deleted < limit:
            minutes.delete_minutes_before(connection, now - minutes.RETENTION)
        return deleted


def refusal_reason(job: Job | None, token: str) -> str:
    """Why ``job`` (None: no such row) refuses a claim by attempt ``token``."""
    if job is None:
        return "the row does not exist (removed, or a forged message)"
    if job.finished is not None:
        return f"the row is already {job.state.value}"
    if job.task_id != token:
        return "the message is outdated: the row was sent again under another task id"
    return "the row is already running"
