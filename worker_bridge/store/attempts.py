"""The worker's writes, each conditional on the attempt token."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    bindparam,
    func,
    select,
    text,
    tuple_,
    update,
)

from worker_bridge.models import UTCDateTime, WorkerJob
from worker_bridge.store._common import (
    DriverStatement,
    all_columns,
    is_postgresql,
    job_from_row,
    jobs_table,
)
from worker_bridge.store.reading import get_job

# The worker's two statements are built once: building an UPDATE costs more
# CPU than running it, and they run once per job.
_CLAIM = (
    update(jobs_table)
    .where(
        (jobs_table.c.id == bindparam("job_id"))
        & (jobs_table.c.task_id == bindparam("token"))
        # "Neither started nor finished". Not written as two IS NULL tests:
        # those imply the predicate of the partial index of pending rows, and
        # a plan cached while that index was small would then scan all of it
        # instead of looking the id up in the primary key.
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

# On PostgreSQL the claim commits asynchronously: set_config(..., true) holds
# for the statement's own transaction, so no other statement is affected.
# Why that is safe is in the README (Performance): the finish, which commits
# synchronously, flushes the claim to disk with it, and a claim lost in a
# crash of the server is written again by the attempt's next heartbeat.
_CLAIM_ASYNC_COMMIT = _CLAIM.returning(
    func.set_config("synchronous_commit", "off", True).label("commit_mode")
)
_CLAIMED_COLUMNS = len(all_columns)
_CLAIM_ON_DRIVER = DriverStatement(_CLAIM_ASYNC_COMMIT)

_FINISH = (
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
_FINISH_ON_DRIVER = DriverStatement(_FINISH, json=("outcome",))


def claim_job(
    connection: Connection, job_id: int, token: str, *, worker: str, now: datetime
) -> WorkerJob | None:
    """Start the attempt ``token`` of row ``job_id``; None if it may not run.

    Atomic: one conditional UPDATE. It applies only while the row still
    carries this dispatch's token and is neither started nor finished, so a
    duplicate or outdated message, a cancelled or a running row is refused.
    """
    params = {"job_id": job_id, "token": token, "claimed_by": worker, "now": now}
    if is_postgresql(connection):
        row = _CLAIM_ON_DRIVER.execute(connection, params).fetchone()
    else:
        row = connection.execute(_CLAIM, params).one_or_none()
    return None if row is None else job_from_row(row, _CLAIMED_COLUMNS)


def wait_for_dispatch_commit(connection: Connection, job_id: int, *, timeout_ms: int) -> None:
    """Block until no other transaction holds row ``job_id`` (at most ``timeout_ms``).

    A dispatcher publishes before it commits, so a fast worker's claim can see
    the row as it was before the dispatch and miss it; after this wait the
    dispatch has committed or rolled back, and a second claim sees which. Call
    inside a transaction: the lock taken here is released when it ends.
    """
    if not is_postgresql(connection):
        return
    connection.execute(
        text("SELECT set_config('lock_timeout', :t, true)"), {"t": f"{timeout_ms}ms"}
    )
    connection.execute(
        select(jobs_table.c.id).where(jobs_table.c.id == job_id).with_for_update(read=True)
    )


def refresh_heartbeats(
    connection: Connection, attempts: Sequence[tuple[int, str]], *, now: datetime
) -> set[int]:
    """Refresh the heartbeat of these (row id, token) attempts; return the ids still theirs.

    A row that still carries the attempt's token but shows no start lost its
    claim, which commits asynchronously, in a crash of the database server
    (every other change to the row clears or replaces the token): the
    heartbeat writes the start again, so that recovery does not take the
    running job for one whose message was lost and send it a second time.
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
    connection: Connection,
    job_id: int,
    token: str,
    *,
    now: datetime,
    success: bool,
    result: Any,
    remove_at: datetime | None,
) -> bool:
    """Write the end of attempt ``token``.

    Returns False, and writes nothing, when the attempt is no longer the row's
    current one (recovered and sent again, or cancelled meanwhile).
    """
    params = {
        "job_id": job_id,
        "token": token,
        "now": now,
        "succeeded": success,
        "outcome": result,
        "removable_at": remove_at,
    }
    # Off psycopg, DriverStatement runs _FINISH through SQLAlchemy.
    return bool(_FINISH_ON_DRIVER.execute(connection, params).rowcount == 1)


def describe_refusal(connection: Connection, job_id: int, token: str) -> str:
    """Why row ``job_id`` refused attempt ``token`` (for the one log line)."""
    job = get_job(connection, job_id)
    if job is None:
        return "the row does not exist (removed, or a forged message)"
    if job.finished is not None:
        return f"the row is already {job.state.value}"
    if job.task_id != token:
        return "the message is outdated: the row was sent again under another task id"
    return "the row is already running"
