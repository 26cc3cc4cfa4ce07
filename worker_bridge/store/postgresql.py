"""The store on PostgreSQL: advisory pair locks, SKIP LOCKED, data-modifying CTEs.

Every write that must be atomic is one statement here. Statements that run
once per job (the claim, the finish, ``schedule_job``'s insert) run their
SQLAlchemy-compiled SQL on psycopg's own connection (see ``driver``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, ClassVar

import psycopg
from sqlalchemy import (
    ARRAY,
    BigInteger,
    Connection,
    Engine,
    any_,
    bindparam,
    create_engine,
    func,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError

from worker_bridge.errors import PendingJobConflictError
from worker_bridge.job import Job, NewJob
from worker_bridge.outcome import Outcome
from worker_bridge.payload import json_dumps
from worker_bridge.store.base import Store
from worker_bridge.store.driver import DriverStatement
from worker_bridge.store.postgresql_recovery import RECOVER_LOST
from worker_bridge.store.postgresql_statements import (
    CLAIM_DUE,
    FINISH_MANY,
    FINISH_WITH_FOLLOW_UP,
    INSERT_BATCH,
    LOCK_PAIR,
    LOCK_PAIRS,
    LOCK_TYPES,
    NEXT_IDS,
    SUPERSEDE_AND_INSERT,
)
from worker_bridge.store.records import LostAttempt, Recovered, WrittenOutcome
from worker_bridge.store.schema import (
    CLAIM,
    FINISH,
    JOB_WIDTH,
    claim_statement,
    finish_params,
    job_values,
    jobs_table,
)
from worker_bridge.wakeup import ListenWaiter, Waiter

_ONE_PENDING_INDEX = "uq_worker_jobs_one_pending"
#: SQLSTATEs besides class 08 (connection exception) that a new connection may
#: cure: admin_shutdown (a restart, pg_terminate_backend), crash_shutdown,
#: cannot_connect_now (starting up), too_many_connections.
_TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})
#: Single-statement tries before a write that met a concurrent writer gives up.
_OPTIMISTIC_TRIES = 5

# schedule_job's statement and the finish run once per job: on psycopg's own
# connection (see driver).
_SUPERSEDE_AND_INSERT_ON_DRIVER = DriverStatement(SUPERSEDE_AND_INSERT, json=("data",))
_FINISH_WITH_FOLLOW_UP_ON_DRIVER = DriverStatement(FINISH_WITH_FOLLOW_UP, json=("data", "outcome"))

# The claim commits asynchronously: set_config(..., true) holds for the
# statement's own transaction, so no other statement is affected. Why that is
# safe is in the README (Performance): the finish, which commits
# synchronously, flushes the claim to disk with it, and a claim lost in a
# crash of the server is written again by the attempt's next heartbeat.
_CLAIM_ASYNC_COMMIT = CLAIM.returning(
    func.set_config("synchronous_commit", "off", True).label("commit_mode")
)
_CLAIM_ON_DRIVER = DriverStatement(_CLAIM_ASYNC_COMMIT)
# A batch's claim, the same way; the ids are one array parameter.
_CLAIM_MANY_ON_DRIVER = DriverStatement(
    claim_statement(
        jobs_table.c.id == any_(bindparam("job_ids", type_=ARRAY(BigInteger)))
    ).returning(func.set_config("synchronous_commit", "off", True).label("commit_mode"))
)

_FINISH_ON_DRIVER = DriverStatement(FINISH, json=("outcome",))


def _is_autocommit(connection: Connection) -> bool:
    return bool(getattr(connection.connection.dbapi_connection, "autocommit", False))


class PostgreSQLStore(Store):
    """worker_bridge's queries on PostgreSQL."""

    dialect: ClassVar[str] = "postgresql"
    concurrent_dispatchers: ClassVar[bool] = True
    dispatch_mode: ClassVar[str] = "LISTEN/NOTIFY wake-ups, several dispatchers may run at once"

    def create_engine(self, url: str, **options: Any) -> Engine:
        # Every connection runs in UTC, so that timestamps need no conversion.
        # No pool_pre_ping: it costs a round trip on every checkout, on the hot
        # path of every job. A connection found dead is invalidated with the
        # whole pool on first use, and every entry point retries that operation.
        settings: dict[str, Any] = {
            "json_serializer": json_dumps,
            "connect_args": {"options": "-c timezone=UTC"},
        }
        settings.update(options)
        return create_engine(make_url(url), **settings)

    def autocommit_engine(self, engine: Engine, **options: Any) -> Engine:
        # A pool of its own whose connections stay in autocommit: sharing
        # ``engine``'s pool would switch each connection's mode at every
        # checkout and back at every return, which costs more than the
        # statement on the worker's hot path.
        return self.create_engine(
            engine.url.render_as_string(hide_password=False),
            **{**options, "isolation_level": "AUTOCOMMIT"},
        )

    def autocommit_view(self, engine: Engine) -> Engine:
        return engine.execution_options(isolation_level="AUTOCOMMIT")

    def ensure_schema(self, engine: Engine) -> None:
        # Migrations stay an explicit step here (worker-bridge db upgrade).
        pass

    def waiter(self, engine: Engine) -> Waiter:
        return ListenWaiter(engine)

    def is_disconnect(self, error: DBAPIError) -> bool:
        if error.connection_invalidated:
            return True
        if not isinstance(error.orig, psycopg.OperationalError | psycopg.InterfaceError):
            return False
        # No SQLSTATE: the client found the socket refused or closed. Otherwise
        # only the server's "connection lost or refused for now" codes; a lock
        # timeout or a missing database will not come back by retrying.
        sqlstate = getattr(error.orig, "sqlstate", None)
        return sqlstate is None or sqlstate.startswith("08") or sqlstate in _TRANSIENT_SQLSTATES

    def lock_pair(self, connection: Connection, job_type: str, user_id: int) -> None:
        connection.execute(LOCK_PAIR, {"type": job_type, "user_id": user_id})

    def _one_statement(
        self, connection: Connection, statement: DriverStatement, params: dict[str, Any],
        job: NewJob, *, lock_first: bool, tries: int = 1,
    ) -> Any:  # fmt: skip
        # With lock_first (in a transaction) the pair's lock comes first, in a
        # statement of its own, so that the write sees every earlier writer of
        # the pair. Without it the write is one round trip, which the
        # one-pending index may refuse when a concurrent writer got in first;
        # on an autocommit connection it is then tried again, with a fresh
        # snapshot that sees (and supersedes) that writer's row.
        if lock_first:
            self.lock_pair(connection, job.type, job.user_id)
        for attempt in range(tries):
            try:
                return statement.execute(connection, params).fetchone()
            except IntegrityError as exc:
                if _ONE_PENDING_INDEX not in str(exc.orig):
                    raise
                if attempt == tries - 1:
                    raise PendingJobConflictError(
                        f"another writer scheduled a {job.type} job for user {job.user_id} first"
                    ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def supersede_and_insert(
        self,
        connection: Connection,
        job: NewJob,
        *,
        now: datetime,
        stale_before: datetime,
        serialize: bool = True,
    ) -> Job:
        params = {**job_values(job), "now": now, "stale_before": stale_before}
        row = self._one_statement(
            connection, _SUPERSEDE_AND_INSERT_ON_DRIVER, params, job, lock_first=serialize
        )
        return Job.from_row(row)

    def supersede_and_insert_many(
        self, connection: Connection, jobs: Sequence[NewJob], *, now: datetime,
        stale_before: datetime,
    ) -> list[Job]:  # fmt: skip
        if not jobs:
            return []
        self._lock_pairs(connection, jobs)
        # Ids drawn in order, and only once the pairs are ours: they fix which job
        # supersedes which, and a later writer of a pair always gets larger ids.
        ids = sorted(connection.execute(NEXT_IDS, {"n": len(jobs)}).scalars())
        rows = json_dumps(
            [
                {**job_values(job), "id": job_id, "due": job.due.isoformat()}
                for job_id, job in zip(ids, jobs, strict=True)
            ]
        )
        result = connection.execute(
            INSERT_BATCH, {"rows": rows, "now": now, "stale_before": stale_before}
        )
        return sorted((Job.from_row(row) for row in result), key=lambda job: job.id)

    def lock_types(self, connection: Connection, job_types: Sequence[str]) -> None:
        if job_types:
            connection.execute(LOCK_TYPES, {"types": sorted(set(job_types))}).all()

    def _lock_pairs(self, connection: Connection, jobs: Sequence[NewJob]) -> None:
        pairs = sorted({(job.type, job.user_id) for job in jobs})
        keys = json_dumps([{"type": job_type, "user_id": user_id} for job_type, user_id in pairs])
        connection.execute(LOCK_PAIRS, {"keys": keys})

    def claim_due_jobs(
        self,
        connection: Connection,
        *,
        now: datetime,
        limit: int,
        exclude_types: Sequence[str] = (),
    ) -> list[Job]:
        params = {"now": now, "limit": limit, "exclude_types": list(exclude_types)}
        rows = connection.execute(CLAIM_DUE, params)
        return sorted((Job.from_row(row) for row in rows), key=lambda job: job.due)

    def claim_job(
        self, connection: Connection, job_id: int, token: str, *, worker: str, now: datetime
    ) -> Job | None:
        params = {"job_id": job_id, "token": token, "claimed_by": worker, "now": now}
        row = _CLAIM_ON_DRIVER.execute(connection, params).fetchone()
        return None if row is None else Job.from_row(row, JOB_WIDTH)

    def claim_jobs(
        self,
        connection: Connection,
        job_ids: Sequence[int],
        token: str,
        *,
        worker: str,
        now: datetime,
    ) -> list[Job]:
        params = {"job_ids": list(job_ids), "token": token, "claimed_by": worker, "now": now}
        rows = _CLAIM_MANY_ON_DRIVER.execute(connection, params).fetchall()
        return sorted((Job.from_row(row, JOB_WIDTH) for row in rows), key=lambda job: job.id)

    def wait_for_dispatch_commit(
        self, connection: Connection, job_ids: Sequence[int], *, timeout_ms: int
    ) -> None:
        # Call inside a transaction: the locks taken here are released when it ends.
        connection.execute(
            text("SELECT set_config('lock_timeout', :t, true)"), {"t": f"{timeout_ms}ms"}
        )
        connection.execute(
            select(jobs_table.c.id)
            .where(jobs_table.c.id.in_(list(job_ids)))
            .with_for_update(read=True)
        )

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
        params = finish_params(
            job_id, token, now=now, success=success, result=result, remove_at=remove_at
        )
        return bool(_FINISH_ON_DRIVER.execute(connection, params).rowcount == 1)

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
        follow_up = outcome.follow_up
        if follow_up is None:
            written = self.finish_job(
                connection, job.id, token, now=now, success=outcome.success,
                result=outcome.result, remove_at=outcome.remove_at,
            )  # fmt: skip
            return WrittenOutcome(written)
        params = {
            **job_values(follow_up),
            "now": now,
            "stale_before": stale_before,
            **finish_params(
                job.id,
                token,
                now=now,
                success=outcome.success,
                result=outcome.result,
                remove_at=outcome.remove_at,
            ),
        }
        autocommit = _is_autocommit(connection)
        row = self._one_statement(
            connection,
            _FINISH_WITH_FOLLOW_UP_ON_DRIVER,
            params,
            follow_up,
            lock_first=not autocommit,
            tries=_OPTIMISTIC_TRIES if autocommit else 1,
        )
        if row is None:
            return WrittenOutcome(False)
        return WrittenOutcome(True, Job.from_row(row))

    def write_outcomes(
        self,
        connection: Connection,
        token: str,
        outcomes: Sequence[tuple[Job, Outcome]],
        *,
        now: datetime,
        stale_before: datetime,
    ) -> list[WrittenOutcome]:
        # Four statements for a whole batch, whatever its size: the follow-ups'
        # pair locks (taken before any finish, as write_outcome takes them),
        # every finish, then the follow-ups of the rows whose finish applied.
        if not outcomes:
            return []
        follow_ups = [outcome.follow_up for _, outcome in outcomes if outcome.follow_up]
        if follow_ups:
            self._lock_pairs(connection, follow_ups)
        finishes = json_dumps(
            [
                {
                    "id": job.id,
                    "succeeded": outcome.success,
                    "outcome": outcome.result,
                    "removable_at": None
                    if outcome.remove_at is None
                    else outcome.remove_at.isoformat(),
                }
                for job, outcome in outcomes
            ]
        )
        written = set(
            connection.execute(
                FINISH_MANY, {"outcomes": finishes, "token": token, "now": now}
            ).scalars()
        )
        inserted = self.supersede_and_insert_many(
            connection,
            [job for job in follow_ups if job.rescheduled_from_job in written],
            now=now,
            stale_before=stale_before,
        )
        by_origin = {job.rescheduled_from_job: job for job in inserted}
        return [WrittenOutcome(job.id in written, by_origin.get(job.id)) for job, _ in outcomes]

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
        params: dict[str, Any] = {
            "redispatch_lost": redispatch_before is not None,
            "now": now,
            "stale_before": stale_before,
            "heartbeat_before": heartbeat_before,
            "redispatch_before": redispatch_before or now,
            "lost_ids": [],
            "lost_token": None,
            "limit": limit,
        }
        if lost_attempt is not None:
            params.update(
                lost_ids=list(lost_attempt.job_ids),
                lost_token=lost_attempt.token,
                process_lost=lost_attempt.reason,
            )
        rows = connection.execute(RECOVER_LOST, params)
        return [Recovered(r.id, r.type, r.user_id, r.reason, r.cancelled_by) for r in rows]

    def estimate_rows(self, connection: Connection) -> int | None:
        # The planner's figure, kept by ANALYZE and autovacuum: no scan, so
        # the console can say "about 1.2 million" of a table it cannot count fast.
        estimate = connection.execute(
            text("SELECT reltuples FROM pg_class WHERE oid = 'worker_jobs'::regclass")
        ).scalar()
        return None if estimate is None or estimate < 0 else int(estimate)

    def notify_dispatchers(self, connection: Connection) -> None:
        # The channel the dispatchers LISTEN on (the insert trigger's).
        connection.execute(text("SELECT pg_notify('worker_jobs', '')"))
