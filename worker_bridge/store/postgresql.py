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
    Connection,
    Engine,
    bindparam,
    create_engine,
    func,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.sql.selectable import TextualSelect

from worker_bridge.errors import PendingJobConflictError
from worker_bridge.job import FIELDS, Job, NewJob
from worker_bridge.models import JSONType, UTCDateTime
from worker_bridge.outcome import Outcome
from worker_bridge.payload import json_dumps
from worker_bridge.store.base import Recovered, Store, WrittenOutcome
from worker_bridge.store.driver import DriverStatement
from worker_bridge.store.schema import (
    CLAIM,
    FINISH,
    JOB_WIDTH,
    LOST_AND_SUPERSEDED,
    LOST_HEARTBEAT,
    LOST_MESSAGE,
    PAIR_LOCK_KEYS,
    STALE_START,
    SUPERSEDED,
    all_columns,
    job_values,
    jobs_table,
    pair_lock_key,
)
from worker_bridge.wakeup import ListenWaiter, Waiter

_ONE_PENDING_INDEX = "uq_worker_jobs_one_pending"
#: Single-statement tries before a write that met a concurrent writer gives up.
_OPTIMISTIC_TRIES = 5
_RETURNING = ", ".join(FIELDS)
_NEW_ROW_COLUMNS = (
    "type, user_id, data, due, cron_schedule, auto_reschedule_on_failure, "
    "auto_reschedule_on_failure_delay, remove_delay, rescheduled_from_job"
)


def _cancelled_by(text_param: str, by: str) -> str:
    """SQL of a cancelled row's result: message ``text_param`` with ``{}`` filled by ``by``."""
    return (
        f"jsonb_build_object('error', replace({text_param}, '{{}}', ({by})::text), "
        f"'cancelled', true, 'cancelled_by', {by})"
    )


def _supersede(by: str, source: str, job_type: str, user_id: str, exclude: str = "") -> str:
    """The CTE ``cancelled``: the supersede rule, cancelling the pair's pending rows for ``by``."""
    return f"""cancelled AS (
        UPDATE worker_jobs AS w
        SET started = :now, finished = :now, success = false, updated_at = :now,
            task_id = NULL, heartbeat = NULL,
            result = {_cancelled_by(":superseded", by)}
        FROM {source}
        WHERE w.type = {job_type} AND w.user_id = {user_id} AND w.finished IS NULL
          AND (w.started IS NULL OR w.started < :stale_before){exclude}
        RETURNING w.id
    )"""


#: A CTE that holds the pair's lock before any row is touched: statements
#: that need it refer to ``(SELECT held FROM pair_lock)``, an InitPlan, which
#: runs before the first row is locked.
_PAIR_LOCK_CTE = f"""pair_lock AS MATERIALIZED (
        SELECT true AS held FROM (
            SELECT pg_advisory_xact_lock(:lock_class, {pair_lock_key(":type", ":user_id")})) AS l
    )"""

#: The one new row (the scheduled job or a follow-up), drawn from the id in ``new_job``.
#: The scalar subquery over ``cancelled`` forces the cancel to run first, so the
#: old row has left the one-pending unique index before the new row enters it.
_INSERT_NEW_JOB = f"""
    INSERT INTO worker_jobs (id, {_NEW_ROW_COLUMNS}, created_at, updated_at)
    SELECT new_job.id, :type, :user_id, :data, :due, :cron_schedule,
           :auto_reschedule_on_failure, :auto_reschedule_on_failure_delay,
           :remove_delay, :rescheduled_from_job, :now, :now
    FROM new_job
    WHERE (SELECT count(*) FROM cancelled) >= 0
    RETURNING {_RETURNING}"""

_NEW_JOB_BINDS = (
    bindparam("data", type_=JSONType),
    bindparam("due", type_=UTCDateTime),
    bindparam("now", type_=UTCDateTime),
    bindparam("stale_before", type_=UTCDateTime),
)


def _statement(sql: str, *binds: Any) -> TextualSelect:
    # The constants each statement uses, bound once: the pair-lock keys and the
    # supersede message.
    constants = {**PAIR_LOCK_KEYS, "superseded": SUPERSEDED}
    used = {name: value for name, value in constants.items() if f":{name}" in sql}
    return text(sql).bindparams(*binds, **used).columns(*all_columns)


# Cancel the matching pending rows and insert the new one in one statement.
# The statement takes the pair's lock itself, before it locks or inserts any
# row, and draws the new id only then. A writer that holds the lock
# (scheduling in the caller's transaction takes it in a statement of its own
# first, and sees every row committed before it got it) never meets a row
# this statement inserted behind its back: at worst this statement, whose
# snapshot predates the wait, meets the one-pending unique index, and is tried
# again with a fresh snapshot.
_SUPERSEDE_AND_INSERT = _statement(
    f"""
    WITH {_PAIR_LOCK_CTE}, new_job AS (
        SELECT nextval(pg_get_serial_sequence('worker_jobs', 'id')) AS id
        FROM pair_lock WHERE held
    ), {_supersede("new_job.id", "new_job", ":type", ":user_id")}
    {_INSERT_NEW_JOB}
    """,
    *_NEW_JOB_BINDS,
)
_SUPERSEDE_AND_INSERT_ON_DRIVER = DriverStatement(_SUPERSEDE_AND_INSERT, json=("data",))

# The finish of an attempt and its follow-up in one statement: the same
# supersede-and-insert, gated on the finish (``ended``) having applied under
# the attempt's token. The row being finished is left out of the supersede
# rule: it is ended here, not cancelled.
_FINISH_WITH_FOLLOW_UP = _statement(
    f"""
    WITH {_PAIR_LOCK_CTE}, ended AS (
        UPDATE worker_jobs
        SET finished = :now, success = :succeeded, result = :outcome,
            remove_at = :removable_at, heartbeat = NULL, updated_at = :now
        WHERE id = :job_id AND task_id = :token AND started IS NOT NULL
          AND finished IS NULL AND (SELECT held FROM pair_lock)
        RETURNING id
    ), new_job AS (
        SELECT nextval(pg_get_serial_sequence('worker_jobs', 'id')) AS id FROM ended
    ), {_supersede("new_job.id", "new_job", ":type", ":user_id", " AND w.id <> :job_id")}
    {_INSERT_NEW_JOB}
    """,
    *_NEW_JOB_BINDS,
    bindparam("outcome", type_=JSONType),
    bindparam("removable_at", type_=UTCDateTime),
)
_FINISH_WITH_FOLLOW_UP_ON_DRIVER = DriverStatement(_FINISH_WITH_FOLLOW_UP, json=("data", "outcome"))

# A separate statement, because a statement's snapshot is taken before any
# lock it acquires: what follows it in the transaction sees every writer of
# the pair that committed before.
LOCK_PAIR = text(
    f"SELECT pg_advisory_xact_lock(:lock_class, {pair_lock_key(':type', ':user_id')})"
).bindparams(**PAIR_LOCK_KEYS)

_NEXT_IDS = text(
    "SELECT nextval(pg_get_serial_sequence('worker_jobs', 'id')) FROM generate_series(1, :n)"
)

# A batch's locks, taken in one fixed order so that two overlapping batches
# cannot deadlock.
_LOCK_PAIRS = text(
    f"""
    SELECT pg_advisory_xact_lock(:lock_class, k.bucket)
    FROM (SELECT DISTINCT {pair_lock_key("type", "user_id")} AS bucket
          FROM jsonb_to_recordset(CAST(:keys AS jsonb)) AS x(type text, user_id int)) AS k
    ORDER BY k.bucket
    """
).bindparams(**PAIR_LOCK_KEYS)

# One statement for a whole batch. Within the batch, each job but the last
# of its pair is written already cancelled by the next one (what scheduling
# them in turn would leave); the pending jobs already in the table are
# cancelled by the batch's first job of their pair, before the inserts.
_INSERT_BATCH = _statement(
    f"""
    WITH input AS (
        SELECT i.*, lead(i.id) OVER (PARTITION BY i.type, i.user_id ORDER BY i.id)
                   AS superseded_by
        FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS i(
            id bigint, type text, user_id int, data jsonb, due timestamptz,
            cron_schedule text, auto_reschedule_on_failure boolean,
            auto_reschedule_on_failure_delay bigint, remove_delay bigint)
    ), firsts AS (
        SELECT type, user_id, min(id) AS id FROM input GROUP BY type, user_id
    ), {_supersede("f.id", "firsts AS f", "f.type", "f.user_id")}
    INSERT INTO worker_jobs (
        id, type, user_id, data, due, cron_schedule, auto_reschedule_on_failure,
        auto_reschedule_on_failure_delay, remove_delay, started, finished, success,
        result, created_at, updated_at)
    SELECT i.id, i.type, i.user_id, i.data, i.due, i.cron_schedule,
           i.auto_reschedule_on_failure, i.auto_reschedule_on_failure_delay,
           i.remove_delay,
           CASE WHEN i.superseded_by IS NOT NULL THEN CAST(:now AS timestamptz) END,
           CASE WHEN i.superseded_by IS NOT NULL THEN CAST(:now AS timestamptz) END,
           CASE WHEN i.superseded_by IS NOT NULL THEN false END,
           CASE WHEN i.superseded_by IS NOT NULL
                THEN {_cancelled_by(":superseded", "i.superseded_by")} END,
           :now, :now
    FROM input AS i
    WHERE (SELECT count(*) FROM cancelled) >= 0
    ORDER BY i.id
    RETURNING {_RETURNING}
    """,
    bindparam("now", type_=UTCDateTime),
    bindparam("stale_before", type_=UTCDateTime),
)

# Claim due rows for sending. One statement: the SELECT ... FOR UPDATE SKIP
# LOCKED picks rows no other dispatcher holds, the UPDATE marks them with a
# fresh task id (the attempt token), and the row locks last until the caller
# commits, which it does only after publishing. Other dispatchers skip the
# locked rows; a worker whose claim reaches a row first waits for the commit.
_CLAIM_DUE = (
    text(
        f"""
        WITH due AS (
            SELECT id FROM worker_jobs
            WHERE due <= :now AND started IS NULL AND finished IS NULL
              AND dispatched_at IS NULL
            ORDER BY due
            LIMIT :limit
            FOR UPDATE SKIP LOCKED
        )
        UPDATE worker_jobs AS w
        SET dispatched_at = :now, task_id = gen_random_uuid()::text, updated_at = :now
        FROM due
        WHERE w.id = due.id
        RETURNING {", ".join(f"w.{name}" for name in FIELDS)}
        """
    )
    .bindparams(bindparam("now", type_=UTCDateTime))
    .columns(*all_columns)
)

# The claim commits asynchronously: set_config(..., true) holds for the
# statement's own transaction, so no other statement is affected. Why that is
# safe is in the README (Performance): the finish, which commits
# synchronously, flushes the claim to disk with it, and a claim lost in a
# crash of the server is written again by the attempt's next heartbeat.
_CLAIM_ASYNC_COMMIT = CLAIM.returning(
    func.set_config("synchronous_commit", "off", True).label("commit_mode")
)
_CLAIM_ON_DRIVER = DriverStatement(_CLAIM_ASYNC_COMMIT)

_FINISH_ON_DRIVER = DriverStatement(FINISH, json=("outcome",))

# Reset to pending every live row whose attempt is presumed lost (the rules
# are in Store.recover_lost_jobs). A started row whose pair already has an
# unstarted pending job would break the one-pending invariant if reset; it is
# cancelled in favour of that job instead. pg_try_advisory_xact_lock skips
# pairs a scheduler holds right now; they are picked up on the next pass.
_RECOVER_LOST = text(
    f"""
        WITH lost AS (
            SELECT w.id, w.type, w.user_id, w.started IS NOT NULL AS was_started,
                   CASE
                       WHEN w.started IS NULL THEN CAST(:lost_message AS text)
                       WHEN w.started < :stale_before THEN CAST(:stale_start AS text)
                       ELSE CAST(:lost_heartbeat AS text)
                   END AS reason,
                   (SELECT min(p.id) FROM worker_jobs AS p
                    WHERE p.type = w.type AND p.user_id = w.user_id
                      AND p.started IS NULL AND p.finished IS NULL) AS pending_sibling
            FROM worker_jobs AS w
            WHERE w.finished IS NULL
              AND (
                (w.started IS NULL AND w.dispatched_at < :redispatch_before
                 AND :redispatch_lost)
                OR (w.started IS NOT NULL
                    AND (w.started < :stale_before
                         OR coalesce(w.heartbeat, w.started) < :heartbeat_before))
              )
              AND (w.started IS NULL OR pg_try_advisory_xact_lock(
                       :lock_class, {pair_lock_key("w.type", "w.user_id")}))
            LIMIT :limit
            FOR UPDATE OF w SKIP LOCKED
        ), reset AS (
            UPDATE worker_jobs AS w
            SET started = NULL, dispatched_at = NULL, task_id = NULL, worker = NULL,
                heartbeat = NULL, recoveries = w.recoveries + 1, updated_at = :now
            FROM lost
            WHERE w.id = lost.id AND (NOT lost.was_started OR lost.pending_sibling IS NULL)
            RETURNING w.id, w.type, w.user_id, lost.reason, CAST(NULL AS bigint) AS cancelled_by
        ), superseded AS (
            UPDATE worker_jobs AS w
            SET finished = :now, success = false, task_id = NULL, heartbeat = NULL,
                recoveries = w.recoveries + 1, updated_at = :now,
                result = {_cancelled_by(":lost_and_superseded", "lost.pending_sibling")}
            FROM lost
            WHERE w.id = lost.id AND lost.was_started AND lost.pending_sibling IS NOT NULL
            RETURNING w.id, w.type, w.user_id, lost.reason, lost.pending_sibling AS cancelled_by
        )
        SELECT * FROM reset UNION ALL SELECT * FROM superseded
        """
).bindparams(
    bindparam("now", type_=UTCDateTime),
    bindparam("stale_before", type_=UTCDateTime),
    bindparam("heartbeat_before", type_=UTCDateTime),
    bindparam("redispatch_before", type_=UTCDateTime),
    lost_message=LOST_MESSAGE,
    stale_start=STALE_START,
    lost_heartbeat=LOST_HEARTBEAT,
    lost_and_superseded=LOST_AND_SUPERSEDED,
    **PAIR_LOCK_KEYS,
)


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
        return error.connection_invalidated or isinstance(
            error.orig, psycopg.OperationalError | psycopg.InterfaceError
        )

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
        pairs = sorted({(job.type, job.user_id) for job in jobs})
        keys = json_dumps([{"type": job_type, "user_id": user_id} for job_type, user_id in pairs])
        connection.execute(_LOCK_PAIRS, {"keys": keys})
        # Ids drawn in order, and only once the pairs are ours: they fix which job
        # supersedes which, and a later writer of a pair always gets larger ids.
        ids = sorted(connection.execute(_NEXT_IDS, {"n": len(jobs)}).scalars())
        rows = json_dumps(
            [
                {**job_values(job), "id": job_id, "due": job.due.isoformat()}
                for job_id, job in zip(ids, jobs, strict=True)
            ]
        )
        result = connection.execute(
            _INSERT_BATCH, {"rows": rows, "now": now, "stale_before": stale_before}
        )
        return sorted((Job.from_row(row) for row in result), key=lambda job: job.id)

    def claim_due_jobs(self, connection: Connection, *, now: datetime, limit: int) -> list[Job]:
        rows = connection.execute(_CLAIM_DUE, {"now": now, "limit": limit})
        return sorted((Job.from_row(row) for row in rows), key=lambda job: job.due)

    def claim_job(
        self, connection: Connection, job_id: int, token: str, *, worker: str, now: datetime
    ) -> Job | None:
        params = {"job_id": job_id, "token": token, "claimed_by": worker, "now": now}
        row = _CLAIM_ON_DRIVER.execute(connection, params).fetchone()
        return None if row is None else Job.from_row(row, JOB_WIDTH)

    def wait_for_dispatch_commit(
        self, connection: Connection, job_id: int, *, timeout_ms: int
    ) -> None:
        # Call inside a transaction: the lock taken here is released when it ends.
        connection.execute(
            text("SELECT set_config('lock_timeout', :t, true)"), {"t": f"{timeout_ms}ms"}
        )
        connection.execute(
            select(jobs_table.c.id).where(jobs_table.c.id == job_id).with_for_update(read=True)
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
        params = {
            "job_id": job_id,
            "token": token,
            "now": now,
            "succeeded": success,
            "outcome": result,
            "removable_at": remove_at,
        }
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
            "job_id": job.id,
            "token": token,
            "succeeded": outcome.success,
            "outcome": outcome.result,
            "removable_at": outcome.remove_at,
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

    def recover_lost_jobs(
        self,
        connection: Connection,
        *,
        now: datetime,
        stale_before: datetime,
        heartbeat_before: datetime,
        redispatch_before: datetime | None,
        limit: int = 1000,
    ) -> list[Recovered]:
        rows = connection.execute(
            _RECOVER_LOST,
            {
                "redispatch_lost": redispatch_before is not None,
                "now": now,
                "stale_before": stale_before,
                "heartbeat_before": heartbeat_before,
                "redispatch_before": redispatch_before or now,
                "limit": limit,
            },
        )
        return [Recovered(r.id, r.type, r.user_id, r.reason, r.cancelled_by) for r in rows]
