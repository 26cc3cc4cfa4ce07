"""The dispatcher's queries: claim due rows, flow control, recovery."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    bindparam,
    func,
    select,
    text,
    update,
)

from worker_bridge.models import UTCDateTime, WorkerJob
from worker_bridge.store._common import (
    PAIR_LOCK_KEYS,
    all_columns,
    cancellation_result,
    is_postgresql,
    job_from_row,
    jobs_table,
)

# Claim due rows for sending. One statement: the SELECT ... FOR UPDATE SKIP
# LOCKED picks rows no other dispatcher holds, the UPDATE marks them with a
# fresh task id (the attempt token), and the row locks last until the caller
# commits, which it does only after publishing. Other dispatchers skip the
# locked rows; a worker whose claim reaches a row first waits for the commit.
_CLAIM_DUE = (
    text(
        """
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
        RETURNING w.*
        """
    )
    .bindparams(bindparam("now", type_=UTCDateTime))
    .columns(*all_columns)
)


def claim_due_jobs(connection: Connection, *, now: datetime, limit: int) -> list[WorkerJob]:
    """Mark up to ``limit`` due, unsent rows as dispatched with a new task id.

    The caller publishes one message per returned row and commits after; if it
    dies first, the rows fall back to pending and the messages it did publish
    carry task ids the table never recorded, so workers refuse them.
    """
    if is_postgresql(connection):
        rows = connection.execute(_CLAIM_DUE, {"now": now, "limit": limit})
        return sorted((job_from_row(row) for row in rows), key=lambda job: job.due)
    # SQLite: the single writer lock stands in for SKIP LOCKED.
    ids = list(
        connection.execute(
            select(jobs_table.c.id)
            .where(
                (jobs_table.c.due <= now)
                & jobs_table.c.started.is_(None)
                & jobs_table.c.finished.is_(None)
                & jobs_table.c.dispatched_at.is_(None)
            )
            .order_by(jobs_table.c.due)
            .limit(limit)
        ).scalars()
    )
    jobs = []
    for job_id in ids:
        row = connection.execute(
            update(jobs_table)
            .where(jobs_table.c.id == job_id)
            .values(dispatched_at=now, task_id=str(uuid.uuid4()), updated_at=now)
            .returning(*all_columns)
        ).one()
        jobs.append(job_from_row(row))
    return jobs


def count_in_flight(connection: Connection) -> int:
    """How many live rows are dispatched but not started (messages in the broker)."""
    count: int = connection.execute(
        select(func.count())
        .select_from(jobs_table)
        .where(
            jobs_table.c.dispatched_at.isnot(None)
            & jobs_table.c.started.is_(None)
            & jobs_table.c.finished.is_(None)
        )
    ).scalar_one()
    return count


def next_due(connection: Connection) -> datetime | None:
    """The due time of the earliest unsent pending row, or None."""
    due: datetime | None = connection.execute(
        select(func.min(jobs_table.c.due)).where(
            jobs_table.c.started.is_(None)
            & jobs_table.c.finished.is_(None)
            & jobs_table.c.dispatched_at.is_(None)
        )
    ).scalar()
    return _as_utc(due)


def _as_utc(value: datetime | str | None) -> datetime | None:
    # Aggregates lose the column type, so SQLite hands back a naive string.
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def fail_unsendable(
    connection: Connection, job_ids: Sequence[int], *, now: datetime, error: str
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


# Reset to pending every live row whose attempt is presumed lost:
#   - dispatched, never started, for longer than redispatch_after (lost message;
#     the caller enables this rule only when the broker queue is empty, so a
#     message still waiting in a backlog is never taken for lost);
#   - started, heartbeat older than heartbeat_timeout (dead or stalled worker);
#   - started longer ago than stale_after (the seed's rule).
# A started row whose (type, user_id) already has an unstarted pending job
# would break the one-pending invariant if reset; it is cancelled in favour of
# that job instead. pg_try_advisory_xact_lock skips pairs a scheduler holds
# right now; they are picked up on the next pass.
_RECOVER_LOST = text(
    """
        WITH lost AS (
            SELECT w.id, w.type, w.user_id, w.started IS NOT NULL AS was_started,
                   CASE
                       WHEN w.started IS NULL THEN 'dispatched but not started'
                       WHEN w.started < :stale_before THEN 'started longer than stale_after ago'
                       ELSE 'heartbeat older than heartbeat_timeout'
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
                       :lock_class, (hashtext(w.type) # hashint4(w.user_id)) & :lock_mask))
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
                result = jsonb_build_object(
                    'error', 'Cancelled: its worker was lost and job ' || lost.pending_sibling
                             || ' of the same type and user is already pending.',
                    'cancelled', true,
                    'cancelled_by', lost.pending_sibling)
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
    **PAIR_LOCK_KEYS,
)


@dataclass(frozen=True, slots=True)
class Recovery:
    """A row the dispatcher took back from a lost attempt."""

    job_id: int
    type: str
    user_id: int
    #: Why the attempt was presumed lost.
    reason: str
    #: The pending job that superseded it, when it was cancelled instead of reset.
    cancelled_by: int | None


def recover_lost_jobs(
    connection: Connection,
    *,
    now: datetime,
    stale_before: datetime,
    heartbeat_before: datetime,
    redispatch_before: datetime | None,
    limit: int = 1000,
) -> list[Recovery]:
    """Put rows whose attempt is lost back to pending (see ``_RECOVER_LOST``).

    ``redispatch_before=None`` leaves dispatched-but-unstarted rows alone.
    """
    params: dict[str, Any] = {
        "redispatch_lost": redispatch_before is not None,
        "now": now,
        "stale_before": stale_before,
        "heartbeat_before": heartbeat_before,
        "redispatch_before": redispatch_before or now,
        "limit": limit,
    }
    if is_postgresql(connection):
        rows = connection.execute(_RECOVER_LOST, params)
        return [Recovery(r.id, r.type, r.user_id, r.reason, r.cancelled_by) for r in rows]
    del params["redispatch_lost"]
    if redispatch_before is None:
        # Nothing was dispatched before the epoch: the lost-message rule matches nothing.
        params["redispatch_before"] = datetime(1970, 1, 1, tzinfo=UTC)
    return _recover_lost_portable(connection, **params)


def _recover_lost_portable(
    connection: Connection,
    *,
    now: datetime,
    stale_before: datetime,
    heartbeat_before: datetime,
    redispatch_before: datetime,
    limit: int,
) -> list[Recovery]:
    lost = connection.execute(
        select(jobs_table.c.id, jobs_table.c.type, jobs_table.c.user_id, jobs_table.c.started)
        .where(
            jobs_table.c.finished.is_(None)
            & (
                (jobs_table.c.started.is_(None) & (jobs_table.c.dispatched_at < redispatch_before))
                | (
                    jobs_table.c.started.isnot(None)
                    & (
                        (jobs_table.c.started < stale_before)
                        | (
                            func.coalesce(jobs_table.c.heartbeat, jobs_table.c.started)
                            < heartbeat_before
                        )
                    )
                )
            )
        )
        .limit(limit)
    ).all()
    recoveries = []
    for job_id, job_type, user_id, started in lost:
        if started is None:
            reason = "dispatched but not started"
        elif started < stale_before:
            reason = "started longer than stale_after ago"
        else:
            reason = "heartbeat older than heartbeat_timeout"
        sibling = None
        if started is not None:
            sibling = connection.execute(
                select(func.min(jobs_table.c.id)).where(
                    (jobs_table.c.type == job_type)
                    & (jobs_table.c.user_id == user_id)
                    & jobs_table.c.started.is_(None)
                    & jobs_table.c.finished.is_(None)
                )
            ).scalar()
        values: dict[str, Any] = {
            "task_id": None,
            "heartbeat": None,
            "updated_at": now,
            "recoveries": jobs_table.c.recoveries + 1,
        }
        if sibling is None:
            values.update(started=None, dispatched_at=None, worker=None)
        else:
            values.update(
                finished=now,
                success=False,
                result=cancellation_result(
                    sibling,
                    f"Cancelled: its worker was lost and job {sibling} of the same "
                    "type and user is already pending.",
                ),
            )
        connection.execute(update(jobs_table).where(jobs_table.c.id == job_id).values(**values))
        recoveries.append(Recovery(job_id, job_type, user_id, reason, sibling))
    return recoveries
