"""Create worker_jobs, its indexes and the insert notification.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_ts = sa.DateTime(timezone=True)


def _partial(where: str) -> dict[str, Any]:
    return {"postgresql_where": sa.text(where), "sqlite_where": sa.text(where)}


def upgrade() -> None:
    op.create_table(
        "worker_jobs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(),
            primary_key=True,
        ),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("data", _json, nullable=False),
        sa.Column("due", _ts, nullable=False),
        sa.Column("started", _ts),
        sa.Column("finished", _ts),
        sa.Column("success", sa.Boolean()),
        sa.Column("result", _json),
        sa.Column("cron_schedule", sa.Text()),
        sa.Column(
            "auto_reschedule_on_failure", sa.Boolean(), nullable=False, server_default=sa.false()
        ),
        sa.Column(
            "auto_reschedule_on_failure_delay", sa.BigInteger(), nullable=False, server_default="0"
        ),
        sa.Column("remove_delay", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("remove_at", _ts),
        sa.Column(
            "rescheduled_from_job",
            sa.BigInteger(),
            sa.ForeignKey(
                "worker_jobs.id", ondelete="SET NULL", name="fk_worker_jobs_rescheduled_from_job"
            ),
        ),
        sa.Column("dispatched_at", _ts),
        sa.Column("task_id", sa.Text()),
        sa.Column("worker", sa.Text()),
        sa.Column("heartbeat", _ts),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("recoveries", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", _ts, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", _ts, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(
            "auto_reschedule_on_failure_delay >= 0", name="ck_worker_jobs_retry_delay_not_negative"
        ),
        sa.CheckConstraint("remove_delay >= 0", name="ck_worker_jobs_remove_delay_not_negative"),
        sa.CheckConstraint(
            "finished IS NULL OR success IS NOT NULL", name="ck_worker_jobs_finished_has_success"
        ),
    )
    # The dispatcher's scan: due rows nobody has sent yet, oldest first.
    op.create_index(
        "ix_worker_jobs_due_undispatched",
        "worker_jobs",
        ["due"],
        **_partial("started IS NULL AND finished IS NULL AND dispatched_at IS NULL"),
    )
    # The invariant of the scheduling API: at most one unstarted live job per
    # (type, user_id). Scheduling serialises on an advisory lock first; this
    # index is what makes a missed lock an error instead of a duplicate.
    op.create_index(
        "uq_worker_jobs_one_pending",
        "worker_jobs",
        ["type", "user_id"],
        unique=True,
        **_partial("started IS NULL AND finished IS NULL"),
    )
    # The pending-match lookup, which also covers stale started rows.
    op.create_index(
        "ix_worker_jobs_live_type_user",
        "worker_jobs",
        ["type", "user_id"],
        **_partial("finished IS NULL"),
    )
    # Lineage: a row has at most one follow-up, and the ON DELETE SET NULL of
    # the foreign key finds referencing rows through it.
    op.create_index(
        "uq_worker_jobs_rescheduled_from_job",
        "worker_jobs",
        ["rescheduled_from_job"],
        unique=True,
        **_partial("rescheduled_from_job IS NOT NULL"),
    )
    # Recovery: running rows by heartbeat, dispatched-but-unstarted by dispatch time.
    op.create_index(
        "ix_worker_jobs_running_heartbeat",
        "worker_jobs",
        ["heartbeat"],
        **_partial("started IS NOT NULL AND finished IS NULL"),
    )
    op.create_index(
        "ix_worker_jobs_dispatched_unstarted",
        "worker_jobs",
        ["dispatched_at"],
        **_partial("dispatched_at IS NOT NULL AND started IS NULL AND finished IS NULL"),
    )
    # Removal of succeeded rows (remove_at) and of failed/cancelled ones (finished).
    op.create_index(
        "ix_worker_jobs_remove_at",
        "worker_jobs",
        ["remove_at"],
        **_partial("remove_at IS NOT NULL"),
    )
    op.create_index(
        "ix_worker_jobs_failed_finished", "worker_jobs", ["finished"], **_partial("success = false")
    )

    if op.get_bind().dialect.name == "postgresql":
        # One notification per inserting statement (PostgreSQL folds equal
        # notifications of a transaction into one), so a dispatcher waiting on
        # LISTEN wakes as soon as a job is written instead of polling.
        op.execute(
            """
            CREATE FUNCTION worker_jobs_notify_insert() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_notify('worker_jobs', '');
                RETURN NULL;
            END $$
            """
        )
        op.execute(
            """
            CREATE TRIGGER worker_jobs_notify_insert
            AFTER INSERT ON worker_jobs
            FOR EACH STATEMENT EXECUTE FUNCTION worker_jobs_notify_insert()
            """
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS worker_jobs_notify_insert ON worker_jobs")
        op.execute("DROP FUNCTION IF EXISTS worker_jobs_notify_insert()")
    op.drop_table("worker_jobs")
