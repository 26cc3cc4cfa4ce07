"""The console's indexes, and worker_job_minutes for finished rows once removed.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ts = sa.DateTime(timezone=True)


def _partial(where: str) -> dict[str, Any]:
    return {"postgresql_where": sa.text(where), "sqlite_where": sa.text(where)}


#: The instant through UTC and back: the same value, through an immutable
#: expression that only the console's queries spell out.
_UTC = "(timezone('UTC', timezone('UTC', {})))"


def _indexes() -> list[tuple[str, list[Any], dict[str, Any]]]:
    # The job list filters by type, by user, or by a time range, and pages
    # newest first: (key, id) serves both at once, as fast on the millionth row
    # as on the first. The keys are expressions equal in value to their
    # columns, which the console's queries spell out and nothing else does
    # (worker_bridge.models.console_key): a plain (type, id) or (due, id) index
    # can be picked by the hot path's statements when the table has no
    # statistics (new, truncated, restored), and then the supersede lookup
    # reads every row of a type, or the dispatcher's claim every finished row.
    #
    # They hold finished rows only: a live row changes several times (sent,
    # claimed, heartbeats, finished), each change writes an entry into every
    # index, and live rows have partial indexes of their own. A finished row is
    # written into these once.
    finished = {"postgresql_where": sa.text("finished IS NOT NULL")}
    return [
        ("ix_worker_jobs_type_id", [sa.text('(type COLLATE "C")'), "id"], finished),
        # From Flower's task id to its row.
        ("ix_worker_jobs_task_id", [sa.text('(task_id COLLATE "C")'), "id"], finished),
        ("ix_worker_jobs_user_id_id", [sa.text("(CAST(user_id AS BIGINT))"), "id"], finished),
        ("ix_worker_jobs_finished_id", [sa.text(_UTC.format("finished")), "id"], finished),
        ("ix_worker_jobs_due_id", [sa.text(_UTC.format("due")), "id"], finished),
        # The cron series: the live row of each (type, user, schedule), a small
        # set; no hot-path statement implies its predicate.
        (
            "ix_worker_jobs_live_cron",
            ["type", "user_id", "id"],
            _partial("cron_schedule IS NOT NULL AND finished IS NULL"),
        ),
        # JSON containment (data @> '{...}'); jsonb_path_ops is the smaller GIN
        # opclass and serves @> alone, which is all the console asks.
        (
            "ix_worker_jobs_data",
            ["data"],
            {**finished, "postgresql_using": "gin", "postgresql_ops": {"data": "jsonb_path_ops"}},
        ),
    ]


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # CONCURRENTLY: building them on a table of millions of rows must not
        # stop the application's writes. It cannot run in a transaction, and an
        # interrupted run leaves some built: IF NOT EXISTS lets the next one go on.
        with op.get_context().autocommit_block():
            indexes = _indexes()
            # An interrupted CONCURRENTLY build leaves its index INVALID (kept up
            # to date but never used): drop it so that it is built again.
            invalid = op.get_bind().execute(
                sa.text(
                    "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                    "WHERE i.indrelid = 'worker_jobs'::regclass AND NOT i.indisvalid"
                )
            )
            names = {name for name, _columns, _options in indexes}
            for (name,) in invalid:
                if name in names:
                    op.drop_index(name, table_name="worker_jobs", postgresql_concurrently=True)
            for name, columns, options in indexes:
                op.create_index(
                    name, "worker_jobs", columns, postgresql_concurrently=True,
                    if_not_exists=True, **options,
                )  # fmt: skip
    else:
        # SQLite (a single machine's small tables): the cron series' index alone.
        op.create_index(
            "ix_worker_jobs_live_cron",
            "worker_jobs",
            ["type", "user_id", "id"],
            **_partial("cron_schedule IS NOT NULL AND finished IS NULL"),
        )
    op.create_table(
        "worker_job_minutes",
        sa.Column("minute", _ts, primary_key=True),
        sa.Column("type", sa.Text(), primary_key=True),
        sa.Column("succeeded", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("cancelled", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("ran", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("lag_sum", sa.Float(), nullable=False, server_default="0"),
        sa.Column("lag_max", sa.Float(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("worker_job_minutes")
    if op.get_bind().dialect.name == "postgresql":
        for name, _columns, _options in _indexes():
            op.drop_index(name, table_name="worker_jobs")
    else:
        op.drop_index("ix_worker_jobs_live_cron", table_name="worker_jobs")
