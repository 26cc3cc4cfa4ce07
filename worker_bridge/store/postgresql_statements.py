"""The PostgreSQL store's statements, built once in SQLAlchemy Core from shared pieces.

Each rule the statements share is one function here, so it is written once:
the pair lock's key (:func:`pair_lock_key`) and lock (:func:`advisory_lock`), the
pair lock taken before any row is touched (:func:`_pair_lock_cte`), the supersede
rule (:func:`_supersede`), the new row drawn from a fresh id
(:func:`_insert_new_job`) and a cancelled row's result
(:func:`cancelled_result`, whose message is a bound parameter). Recovery's
statement is in ``postgresql_recovery``.
No statement text is built by string formatting.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    DateTime,
    Integer,
    Text,
    any_,
    bindparam,
    case,
    cast,
    column,
    false,
    func,
    insert,
    not_,
    null,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import BindParameter, ColumnElement
from sqlalchemy.sql.selectable import CTE

from worker_bridge.job import CANCELLED_MARK
from worker_bridge.models import JSONType, UTCDateTime
from worker_bridge.store.schema import (
    PAIR_LOCK_BUCKETS,
    PAIR_LOCK_CLASS,
    SUPERSEDED,
    TYPE_LOCK_CLASS,
    all_columns,
    jobs_table,
)

t = jobs_table

#: The columns a new row of the scheduling API or a follow-up writes, as bound parameters.
_NEW_ROW = (
    "type",
    "user_id",
    "data",
    "due",
    "cron_schedule",
    "auto_reschedule_on_failure",
    "auto_reschedule_on_failure_delay",
    "remove_delay",
    "rescheduled_from_job",
)
_BIND_TYPES: dict[str, Any] = {"data": JSONType, "due": UTCDateTime}


def now_param() -> BindParameter[Any]:
    return bindparam("now", type_=UTCDateTime)


def stale_before_param() -> BindParameter[Any]:
    return bindparam("stale_before", type_=UTCDateTime)


def pair_lock_key(job_type: ColumnElement[Any], user_id: ColumnElement[Any]) -> ColumnElement[Any]:
    """The second key of a pair's advisory lock: one of ``PAIR_LOCK_BUCKETS`` by hash.

    The only place the hash is written: every statement that locks a pair
    builds its key here, so two writers of one pair always meet on one lock.
    """
    mask = bindparam("lock_mask", PAIR_LOCK_BUCKETS - 1, type_=Integer)
    return func.hashtext(job_type).op("#")(func.hashint4(user_id)).op("&")(mask)


def advisory_lock(
    job_type: ColumnElement[Any], user_id: ColumnElement[Any], *, wait: bool = True
) -> ColumnElement[Any]:
    """The pair's transaction-scoped lock: waited for, or (``wait=False``) tried, true if got."""
    lock = func.pg_advisory_xact_lock if wait else func.pg_try_advisory_xact_lock
    return lock(
        bindparam("lock_class", PAIR_LOCK_CLASS, type_=Integer), pair_lock_key(job_type, user_id)
    )


def cancelled_result(message: str, value: str, by: ColumnElement[Any]) -> ColumnElement[Any]:
    """A cancelled row's result: the bound ``message`` with ``{}`` filled by ``by``."""
    return func.jsonb_build_object(
        "error",
        func.replace(bindparam(message, value, type_=Text), "{}", cast(by, Text)),
        CANCELLED_MARK,
        true(),
        "cancelled_by",
        by,
    )


def _pair_lock_cte() -> CTE:
    # Materialized, and referred to by what follows it, so that the lock is
    # held before the statement touches any row.
    locked = select(advisory_lock(bindparam("type"), bindparam("user_id")).label("l")).subquery("l")
    held = select(true().label("held")).select_from(locked)
    return held.cte("pair_lock").prefix_with("MATERIALIZED")


def _next_id() -> ColumnElement[Any]:
    return func.nextval(func.pg_get_serial_sequence("worker_jobs", "id")).label("id")


def _supersede(
    by: ColumnElement[Any],
    job_type: ColumnElement[Any],
    user_id: ColumnElement[Any],
    *conditions: ColumnElement[bool],
) -> CTE:
    """The supersede rule, as the CTE ``cancelled``: cancel the pair's pending rows for ``by``.

    Pending: same type and user, not finished, and not started or started
    before ``:stale_before``. ``conditions`` narrow it further.
    """
    return (
        update(t)
        .where(
            t.c.type == job_type,
            t.c.user_id == user_id,
            t.c.finished.is_(None),
            or_(t.c.started.is_(None), t.c.started < stale_before_param()),
            *conditions,
        )
        .values(
            started=now_param(),
            finished=now_param(),
            success=false(),
            updated_at=now_param(),
            task_id=null(),
            heartbeat=null(),
            result=cancelled_result("superseded", SUPERSEDED, by),
        )
        .returning(t.c.id)
        .cte("cancelled")
    )


def _insert_new_job(new_job: CTE, cancelled: CTE, *ctes: CTE) -> Any:
    """Insert the one new row under the id in ``new_job``, after ``cancelled`` has run.

    The scalar subquery over ``cancelled`` forces the cancel to run first, so
    the old row has left the one-pending unique index before the new row
    enters it.
    """
    values = [bindparam(name, type_=_BIND_TYPES.get(name)) for name in _NEW_ROW]
    source = select(new_job.c.id, *values, now_param(), now_param()).where(
        select(func.count()).select_from(cancelled).scalar_subquery() >= 0
    )
    columns = ["id", *_NEW_ROW, "created_at", "updated_at"]
    statement = insert(t).from_select(columns, source, include_defaults=False)
    return statement.returning(*all_columns).add_cte(*ctes, new_job, cancelled)


def _supersede_and_insert() -> Any:
    # Cancel the matching pending rows and insert the new one in one
    # statement. It takes the pair's lock itself, before it locks or inserts
    # any row, and draws the new id only then. A writer that holds the lock
    # (scheduling in the caller's transaction takes it in a statement of its
    # own first, and sees every row committed before it got it) never meets a
    # row this statement inserted behind its back: at worst this statement,
    # whose snapshot predates the wait, meets the one-pending unique index,
    # and is tried again with a fresh snapshot.
    pair_lock = _pair_lock_cte()
    new_job = select(_next_id()).select_from(pair_lock).where(pair_lock.c.held).cte("new_job")
    cancelled = _supersede(
        new_job.c.id, bindparam("type"), bindparam("user_id"), new_job.c.id.isnot(None)
    )
    return _insert_new_job(new_job, cancelled, pair_lock)


def _finish_with_follow_up() -> Any:
    # The finish of an attempt and its follow-up in one statement: the same
    # supersede-and-insert, gated on the finish (``ended``) having applied
    # under the attempt's token. The row being finished is left out of the
    # supersede rule: it is ended here, not cancelled.
    pair_lock = _pair_lock_cte()
    ended = (
        update(t)
        .where(
            t.c.id == bindparam("job_id"),
            t.c.task_id == bindparam("token"),
            t.c.started.isnot(None),
            t.c.finished.is_(None),
            select(pair_lock.c.held).scalar_subquery(),
        )
        .values(
            finished=now_param(),
            success=bindparam("succeeded", type_=Boolean),
            result=bindparam("outcome", type_=JSONType),
            remove_at=bindparam("removable_at", type_=UTCDateTime),
            heartbeat=null(),
            updated_at=now_param(),
        )
        .returning(t.c.id)
        .cte("ended")
    )
    new_job = select(_next_id()).select_from(ended).cte("new_job")
    cancelled = _supersede(
        new_job.c.id,
        bindparam("type"),
        bindparam("user_id"),
        new_job.c.id.isnot(None),
        t.c.id != bindparam("job_id"),
    )
    return _insert_new_job(new_job, cancelled, pair_lock, ended)


def _finish_many() -> Any:
    # A batch's finishes in one statement: each row's outcome is an element of
    # one JSON array, and applies, as FINISH does, only while the row carries
    # the batch's token. ``->`` keeps a JSON null result a JSON null.
    element = (
        func.jsonb_array_elements(cast(bindparam("outcomes"), JSONB))
        .table_valued(column("value", JSONB))
        .render_derived(name="o")
    )
    value = element.c.value

    def field(name: str) -> ColumnElement[Any]:
        return value.op("->>", return_type=Text)(name)

    return (
        update(t)
        .where(
            t.c.id == cast(field("id"), BigInteger),
            t.c.task_id == bindparam("token", type_=Text),
            t.c.started.isnot(None),
            t.c.finished.is_(None),
        )
        .values(
            finished=now_param(),
            success=cast(field("succeeded"), Boolean),
            result=value.op("->", return_type=JSONB)("outcome"),
            remove_at=cast(field("removable_at"), DateTime(timezone=True)),
            heartbeat=null(),
            updated_at=now_param(),
        )
        .returning(t.c.id)
    )


#: A batch's finishes (without follow-ups), in one statement.
FINISH_MANY = _finish_many()
#: schedule_job's one statement: lock the pair, cancel what it supersedes, insert.
SUPERSEDE_AND_INSERT = _supersede_and_insert()
#: An attempt's finish and its follow-up, in one statement.
FINISH_WITH_FOLLOW_UP = _finish_with_follow_up()

# A separate statement, because a statement's snapshot is taken before any
# lock it acquires: what follows it in the transaction sees every writer of
# the pair that committed before.
LOCK_PAIR = select(advisory_lock(bindparam("type"), bindparam("user_id")))

NEXT_IDS = text(
    "SELECT nextval(pg_get_serial_sequence('worker_jobs', 'id')) FROM generate_series(1, :n)"
)


def _lock_pairs() -> Any:
    # A batch's locks, taken in one fixed order so that two overlapping
    # batches cannot deadlock.
    keys = (
        func.jsonb_to_recordset(cast(bindparam("keys"), JSONB))
        .table_valued(column("type", Text), column("user_id", Integer))
        .render_derived(name="x", with_types=True)
    )
    buckets = select(pair_lock_key(keys.c.type, keys.c.user_id).label("bucket")).distinct()
    k = buckets.subquery("k")
    lock_class = bindparam("lock_class", PAIR_LOCK_CLASS, type_=Integer)
    return select(func.pg_advisory_xact_lock(lock_class, k.c.bucket)).order_by(k.c.bucket)


LOCK_PAIRS = _lock_pairs()


def _lock_types() -> Any:
    # The dispatchers' locks of capped job types, in one fixed order (no deadlock).
    names = (
        func.unnest(bindparam("types", type_=ARRAY(Text)))
        .table_valued("name")
        .render_derived(name="n")
    )
    keys = select(func.hashtext(names.c.name).label("key")).distinct().subquery("k")
    lock_class = bindparam("type_lock_class", TYPE_LOCK_CLASS, type_=Integer)
    return select(func.pg_advisory_xact_lock(lock_class, keys.c.key)).order_by(keys.c.key)


#: Locks of the job types whose MAX_CONCURRENCY a dispatcher is about to count and fill.
LOCK_TYPES = _lock_types()


def _insert_batch() -> Any:
    # One statement for a whole batch. Within the batch, each job but the
    # last of its pair is written already cancelled by the next one (what
    # scheduling them in turn would leave); the pending jobs already in the
    # table are cancelled by the batch's first job of their pair, before the
    # inserts.
    rows = (
        func.jsonb_to_recordset(cast(bindparam("rows"), JSONB))
        .table_valued(
            column("id", BigInteger),
            column("type", Text),
            column("user_id", Integer),
            column("data", JSONB),
            column("due", DateTime(timezone=True)),
            column("cron_schedule", Text),
            column("auto_reschedule_on_failure", Boolean),
            column("auto_reschedule_on_failure_delay", BigInteger),
            column("remove_delay", BigInteger),
            column("rescheduled_from_job", BigInteger),
        )
        .render_derived(name="i", with_types=True)
    )
    next_of_pair = func.lead(rows.c.id).over(
        partition_by=(rows.c.type, rows.c.user_id), order_by=rows.c.id
    )
    batch = select(rows, next_of_pair.label("superseded_by")).cte("input")
    firsts = (
        select(batch.c.type, batch.c.user_id, func.min(batch.c.id).label("id"))
        .group_by(batch.c.type, batch.c.user_id)
        .cte("firsts")
    )
    cancelled = _supersede(firsts.c.id, firsts.c.type, firsts.c.user_id)
    superseded = batch.c.superseded_by.isnot(None)
    when_superseded = DateTime(timezone=True)
    source = (
        select(
            batch.c.id,
            batch.c.type,
            batch.c.user_id,
            batch.c.data,
            batch.c.due,
            batch.c.cron_schedule,
            batch.c.auto_reschedule_on_failure,
            batch.c.auto_reschedule_on_failure_delay,
            batch.c.remove_delay,
            batch.c.rescheduled_from_job,
            case((superseded, cast(now_param(), when_superseded))),
            case((superseded, cast(now_param(), when_superseded))),
            case((superseded, false())),
            case((superseded, cancelled_result("superseded", SUPERSEDED, batch.c.superseded_by))),
            now_param(),
            now_param(),
        )
        .where(select(func.count()).select_from(cancelled).scalar_subquery() >= 0)
        .order_by(batch.c.id)
    )
    columns = [
        "id",
        *_NEW_ROW,
        "started",
        "finished",
        "success",
        "result",
        "created_at",
        "updated_at",
    ]
    statement = insert(t).from_select(columns, source, include_defaults=False)
    return statement.returning(*all_columns).add_cte(batch, firsts, cancelled)


INSERT_BATCH = _insert_batch()


def _claim_due() -> Any:
    # Claim due rows for sending. One statement: the SELECT ... FOR UPDATE
    # SKIP LOCKED picks rows no other dispatcher holds, the UPDATE marks them
    # with a fresh task id (the attempt token), and the row locks last until
    # the caller commits, which it does only after publishing. Other
    # dispatchers skip the locked rows; a worker whose claim reaches a row
    # first waits for the commit.
    due = (
        select(t.c.id)
        .where(
            t.c.due <= now_param(),
            t.c.started.is_(None),
            t.c.finished.is_(None),
            t.c.dispatched_at.is_(None),
            # Types at their concurrency cap (an empty array excludes none).
            not_(t.c.type == any_(bindparam("exclude_types", type_=ARRAY(Text)))),
        )
        .order_by(t.c.due)
        .limit(bindparam("limit", type_=Integer))
        .with_for_update(skip_locked=True)
        .cte("due")
    )
    return (
        update(t)
        .where(t.c.id == due.c.id)
        .values(
            dispatched_at=now_param(),
            task_id=cast(func.gen_random_uuid(), Text),
            updated_at=now_param(),
        )
        .returning(*all_columns)
    )


CLAIM_DUE = _claim_due()
