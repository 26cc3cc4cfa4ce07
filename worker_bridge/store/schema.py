"""What both stores share: the table and its column order, the texts they write, the pair lock.

Each rule the two implementations both apply is written here once: the
columns a row is read with, the values a new row is written with, the
messages of a cancelled row, and the pair lock's constants (its key is
``postgresql_statements.pair_lock_key``).
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import ColumnElement, Table, bindparam, func, update

from worker_bridge.job import CANCELLED_MARK, FIELDS, NewJob
from worker_bridge.models import UTCDateTime, WorkerJob

jobs_table = cast(Table, WorkerJob.__table__)
#: The table's columns in the order :meth:`Job.from_row` reads them.
all_columns = [jobs_table.c[name] for name in FIELDS]
#: How many columns a job row has (a statement may return extras after them).
JOB_WIDTH = len(all_columns)

#: Result message of a pending row cancelled by a newer job of its pair; ``{}`` is
#: the newer job's id (on PostgreSQL filled in by the statement, which draws that id).
SUPERSEDED = "Cancelled: superseded by job {} of the same type and user."
#: Result message of a lost attempt cancelled because its pair has a pending job.
LOST_AND_SUPERSEDED = (
    "Cancelled: its worker was lost and job {} of the same type and user is already pending."
)
#: Result message of a row cancelled by hand, unless the caller gives a reason.
CANCELLED_BY_HAND = "Cancelled by hand."
#: Why recovery took a row back, by the rule that matched (``Recovered.reason``).
LOST_MESSAGE = "dispatched but not started"
STALE_START = "started longer than stale_after ago"
LOST_HEARTBEAT = "heartbeat older than heartbeat_timeout"
PROCESS_LOST = "its worker process died while running it"
BATCH_STOPPED = "its batch stopped before its turn (time limit)"


def cancellation_result(cancelled_by: int | None, reason: str) -> dict[str, Any]:
    """The ``result`` a cancelled row gets."""
    return {"error": reason, CANCELLED_MARK: True, "cancelled_by": cancelled_by}


def job_values(job: NewJob) -> dict[str, Any]:
    """The columns an insert of ``job`` writes (the timestamps aside)."""
    return {
        "type": job.type,
        "user_id": job.user_id,
        "data": job.data,
        "due": job.due,
        "cron_schedule": job.cron_schedule,
        "auto_reschedule_on_failure": job.auto_reschedule_on_failure,
        "auto_reschedule_on_failure_delay": job.auto_reschedule_on_failure_delay,
        "remove_delay": job.remove_delay,
        "rescheduled_from_job": job.rescheduled_from_job,
    }


# Every writer of one (type, user_id) serialises on an advisory lock: the
# partial unique index can only say "one unstarted job", not "cancel the stale
# started ones too", and under READ COMMITTED a second writer must see the
# first one's row before it decides what to cancel.
#
# The lock is one of PAIR_LOCK_BUCKETS, picked by hashing the pair, not one
# per pair: a batch then holds at most that many locks whatever its size (one
# per pair exhausts PostgreSQL's shared lock table, max_locks_per_transaction,
# beyond some ten thousand pairs). The price: writers of different pairs
# that hash alike wait for each other. A lock lasts until its transaction
# ends: one statement for schedule_job on its own, the caller's whole
# transaction when given a session, so a large batch in a long transaction
# holds up most other writers until it commits.
PAIR_LOCK_BUCKETS = 1024
#: First key of worker_bridge's two-key advisory locks, kept apart from an application's.
PAIR_LOCK_CLASS = 0x776A6273
#: First key of the dispatchers' locks of a capped job type (MAX_CONCURRENCY).
TYPE_LOCK_CLASS = PAIR_LOCK_CLASS + 1


def claim_statement(which: ColumnElement[bool]) -> Any:
    """The worker's claim of the rows ``which`` selects, for the message's ``token``.

    It applies to a row only while the row carries the token and is neither
    started nor finished. "Neither started nor finished" is not written as
    two IS NULL tests: those imply the predicate of the partial index of
    pending rows, and a plan cached while that index was small would then scan
    all of it instead of looking the id up in the primary key.
    """
    return (
        update(jobs_table)
        .where(
            which
            & (jobs_table.c.task_id == bindparam("token"))
            & func.coalesce(jobs_table.c.started, jobs_table.c.finished).is_(None)
        )
        .values(
            started=bindparam("now", type_=UTCDateTime),
            heartbeat=bindparam("now", type_=UTCDateTime),
            worker=bindparam("claimed_by"),
            attempts=jobs_table.c.attempts + 1,
            updated_at=bindparam("now", type_=UTCDateTime),
        )
        .returning(*all_columns)
    )


#: The claim of one row, ``job_id``.
CLAIM = claim_statement(jobs_table.c.id == bindparam("job_id"))
#: A batch's claim: every row of ``job_ids`` (a batch's rows share their message's token).
CLAIM_MANY = claim_statement(jobs_table.c.id.in_(bindparam("job_ids", expanding=True)))
# The worker's finish: the end of an attempt, only while the row carries its token.
FINISH = (
    update(jobs_table)
    .where(
        (jobs_table.c.id == bindparam("job_id"))
        & (jobs_table.c.task_id == bindparam("token"))
        & jobs_table.c.started.isnot(None)
        & jobs_table.c.finished.is_(None)
    )
    .values(
        finished=bindparam("now", type_=UTCDateTime),
        success=bindparam("succeeded"),
        result=bindparam("outcome", type_=jobs_table.c.result.type),
        remove_at=bindparam("removable_at", type_=UTCDateTime),
        heartbeat=None,
        updated_at=bindparam("now", type_=UTCDateTime),
    )
)


def finish_params(
    job_id: int, token: str, *, now: Any, success: bool, result: Any, remove_at: Any
) -> dict[str, Any]:
    """The parameters of :data:`FINISH` (and of the finish with a follow-up)."""
    return {
        "job_id": job_id,
        "token": token,
        "now": now,
        "succeeded": success,
        "outcome": result,
        "removable_at": remove_at,
    }
