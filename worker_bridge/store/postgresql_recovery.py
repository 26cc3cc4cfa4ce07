"""The PostgreSQL store's recovery statement, in SQLAlchemy Core.

It locks pairs and cancels rows with the pieces of ``postgresql_statements``,
so the pair lock's key and a cancelled row's result are written once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Integer,
    Text,
    and_,
    any_,
    bindparam,
    case,
    cast,
    false,
    func,
    not_,
    null,
    or_,
    select,
    union_all,
    update,
)

from worker_bridge.models import UTCDateTime
from worker_bridge.store.postgresql_statements import (
    advisory_lock,
    cancelled_result,
    now_param,
    stale_before_param,
)
from worker_bridge.store.schema import (
    LOST_AND_SUPERSEDED,
    LOST_HEARTBEAT,
    LOST_MESSAGE,
    PROCESS_LOST,
    STALE_START,
    jobs_table,
)

t = jobs_table


def _recover_lost() -> Any:
    # Reset to pending every live row whose attempt is presumed lost (the
    # rules are in Store.recover_lost_jobs). A started row whose pair already
    # has an unstarted pending job would break the one-pending invariant if
    # reset; it is cancelled in favour of that job instead.
    # pg_try_advisory_xact_lock skips pairs a scheduler holds right now; they
    # are picked up on the next pass.
    stale_before = stale_before_param()
    heartbeat_before = bindparam("heartbeat_before", type_=UTCDateTime)
    p = t.alias("p")
    pending_sibling = (
        select(func.min(p.c.id))
        .where(
            p.c.type == t.c.type,
            p.c.user_id == t.c.user_id,
            p.c.started.is_(None),
            p.c.finished.is_(None),
        )
        .scalar_subquery()
    )
    # The attempt a worker reported lost (its pool process died), by rows and token.
    reported = and_(
        t.c.id == any_(bindparam("lost_ids", type_=ARRAY(BigInteger))),
        t.c.task_id == bindparam("lost_token", type_=Text),
        t.c.started.isnot(None),
    )
    reason = case(
        (reported, bindparam("process_lost", PROCESS_LOST, type_=Text)),
        (t.c.started.is_(None), bindparam("lost_message", LOST_MESSAGE, type_=Text)),
        (t.c.started < stale_before, bindparam("stale_start", STALE_START, type_=Text)),
        else_=bindparam("lost_heartbeat", LOST_HEARTBEAT, type_=Text),
    )
    lost = (
        select(
            t.c.id,
            t.c.type,
            t.c.user_id,
            t.c.started.isnot(None).label("was_started"),
            reason.label("reason"),
            pending_sibling.label("pending_sibling"),
        )
        .where(
            t.c.finished.is_(None),
            or_(
                reported,
                and_(
                    t.c.started.is_(None),
                    t.c.dispatched_at < bindparam("redispatch_before", type_=UTCDateTime),
                    bindparam("redispatch_lost", type_=Boolean),
                ),
                and_(
                    t.c.started.isnot(None),
                    or_(
                        t.c.started < stale_before,
                        func.coalesce(t.c.heartbeat, t.c.started) < heartbeat_before,
                    ),
                ),
            ),
            or_(t.c.started.is_(None), advisory_lock(t.c.type, t.c.user_id, wait=False)),
        )
        .limit(bindparam("limit", type_=Integer))
        .with_for_update(of=t, skip_locked=True)
        .cte("lost")
    )
    recovered = t.c.recoveries + 1
    reset = (
        update(t)
        .where(t.c.id == lost.c.id, or_(not_(lost.c.was_started), lost.c.pending_sibling.is_(None)))
        .values(
            started=null(),
            dispatched_at=null(),
            task_id=null(),
            worker=null(),
            heartbeat=null(),
            recoveries=recovered,
            updated_at=now_param(),
        )
        .returning(
            t.c.id,
            t.c.type,
            t.c.user_id,
            lost.c.reason,
            cast(null(), BigInteger).label("cancelled_by"),
        )
        .cte("reset")
    )
    superseded = (
        update(t)
        .where(t.c.id == lost.c.id, lost.c.was_started, lost.c.pending_sibling.isnot(None))
        .values(
            finished=now_param(),
            success=false(),
            task_id=null(),
            heartbeat=null(),
            recoveries=recovered,
            updated_at=now_param(),
            result=cancelled_result(
                "lost_and_superseded", LOST_AND_SUPERSEDED, lost.c.pending_sibling
            ),
        )
        .returning(
            t.c.id,
            t.c.type,
            t.c.user_id,
            lost.c.reason,
            lost.c.pending_sibling.label("cancelled_by"),
        )
        .cte("superseded")
    )
    return union_all(select(reset), select(superseded))


RECOVER_LOST = _recover_lost()
