"""Scheduling many jobs in one go, with the supersede rule of scheduling them one by one."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection, bindparam, text

from worker_bridge.db import json_dumps
from worker_bridge.models import NewJob, UTCDateTime, WorkerJob
from worker_bridge.store._common import (
    PAIR_LOCK_KEYS,
    all_columns,
    is_postgresql,
    job_from_row,
)
from worker_bridge.store.scheduling import supersede_and_insert

_NEXT_IDS = text(
    "SELECT nextval(pg_get_serial_sequence('worker_jobs', 'id')) FROM generate_series(1, :n)"
)

# Every writer of a (type, user_id) pair takes its lock (see _common); taking a
# batch's locks in one fixed order keeps two overlapping batches from deadlocking.
_LOCK_PAIRS = text(
    """
    SELECT pg_advisory_xact_lock(:lock_class, k.bucket)
    FROM (SELECT DISTINCT (hashtext(type) # hashint4(user_id)) & :lock_mask AS bucket
          FROM jsonb_to_recordset(CAST(:keys AS jsonb)) AS x(type text, user_id int)) AS k
    ORDER BY k.bucket
    """
).bindparams(**PAIR_LOCK_KEYS)

# One statement for the whole batch. Within the batch, each job but the last
# of its pair is written already cancelled by the next one (what scheduling
# them in turn would leave); the pending jobs already in the table are
# cancelled by the batch's first job of their pair, before the inserts (the
# scalar subquery over `cancelled` forces that order, as in the one-job form).
_INSERT_BATCH = (
    text(
        """
        WITH input AS (
            SELECT i.*, lead(i.id) OVER (PARTITION BY i.type, i.user_id ORDER BY i.id)
                       AS superseded_by
            FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS i(
                id bigint, type text, user_id int, data jsonb, due timestamptz,
                cron_schedule text, auto_reschedule_on_failure boolean,
                auto_reschedule_on_failure_delay bigint, remove_delay bigint)
        ), firsts AS (
            SELECT type, user_id, min(id) AS id FROM input GROUP BY type, user_id
        ), cancelled AS (
            UPDATE worker_jobs AS w
            SET started = :now, finished = :now, success = false, updated_at = :now,
                task_id = NULL, heartbeat = NULL,
                result = jsonb_build_object(
                    'error', 'Cancelled: superseded by job ' || f.id
                             || ' of the same type and user.',
                    'cancelled', true, 'cancelled_by', f.id)
            FROM firsts AS f
            WHERE w.type = f.type AND w.user_id = f.user_id AND w.finished IS NULL
              AND (w.started IS NULL OR w.started < :stale_before)
            RETURNING w.id
        )
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
               CASE WHEN i.superseded_by IS NOT NULL THEN jsonb_build_object(
                   'error', 'Cancelled: superseded by job ' || i.superseded_by
                            || ' of the same type and user.',
                   'cancelled', true, 'cancelled_by', i.superseded_by) END,
               :now, :now
        FROM input AS i
        WHERE (SELECT count(*) FROM cancelled) >= 0
        ORDER BY i.id
        RETURNING *
        """
    )
    .bindparams(
        bindparam("now", type_=UTCDateTime),
        bindparam("stale_before", type_=UTCDateTime),
    )
    .columns(*all_columns)
)


def supersede_and_insert_many(
    connection: Connection, jobs: Sequence[NewJob], *, now: datetime, stale_before: datetime
) -> list[WorkerJob]:
    """Insert ``jobs`` as if each were passed to ``supersede_and_insert`` in turn.

    Returns the rows in the order of ``jobs``. On PostgreSQL the batch costs a
    fixed number of statements whatever its size.
    """
    if not jobs:
        return []
    if not is_postgresql(connection):
        return [
            supersede_and_insert(connection, job, now=now, stale_before=stale_before)
            for job in jobs
        ]
    pairs = sorted({(job.type, job.user_id) for job in jobs})
    keys = json_dumps([{"type": job_type, "user_id": user_id} for job_type, user_id in pairs])
    connection.execute(_LOCK_PAIRS, {"keys": keys})
    # Ids drawn in order, and only once the pairs are ours: they fix which job
    # supersedes which, and a later writer of a pair always gets larger ids.
    ids = sorted(connection.execute(_NEXT_IDS, {"n": len(jobs)}).scalars())
    rows = json_dumps(
        [
            {
                "id": job_id,
                "type": job.type,
                "user_id": job.user_id,
                "data": job.data,
                "due": job.due.isoformat(),
                "cron_schedule": job.cron_schedule,
                "auto_reschedule_on_failure": job.auto_reschedule_on_failure,
                "auto_reschedule_on_failure_delay": job.auto_reschedule_on_failure_delay,
                "remove_delay": job.remove_delay,
            }
            for job_id, job in zip(ids, jobs, strict=True)
        ]
    )
    result = connection.execute(
        _INSERT_BATCH, {"rows": rows, "now": now, "stale_before": stale_before}
    )
    return sorted((job_from_row(row) for row in result), key=lambda job: job.id)
