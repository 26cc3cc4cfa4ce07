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


def _indexes(postgresql: bool) -> list[tuple[str, list[str], dict[str, Any]]]:
    indexes: list[tuple[str, list[str], dict[str, Any]]] = [
        # The job list filters by type or user and pages newest first: (column, id)
        # serves both at once, as fast on the millionth row as on the first.
        ("ix_worker_jobs_type_id", ["type", "id"], {}),
        ("ix_worker_jobs_user_id_id", ["user_id", "id"], {}),
        # Time ranges over due and finished, listed by that time then id (keyset
        # pages on both); the chart of the last hour reads finished.
        ("ix_worker_jobs_finished_id", ["finished", "id"], {}),
        ("ix_worker_jobs_due_id", ["due", "id"], {}),
        # The cron series: the live row of each (type, user, schedule), a small set.
        (
            "ix_worker_jobs_live_cron",
            ["type", "user_id", "id"],
            _partial("cron_schedule IS NOT NULL AND finished IS NULL"),
        ),
    ]
    if postgresql:
        # JSON containment (data @> '{...}'); jsonb_path_ops is the smaller GIN
        # opclass and serves @> alone, which is all the console asks.
        indexes.append(
            (
                "ix_worker_jobs_data",
                ["data"],
                {"postgresql_using": "gin", "postgresql_ops": {"data": "jsonb_path_ops"}},
            )
        )
    return indexes


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # CONCURRENTLY: building them on a table of millions of rows must not
        # stop the application's writes. It cannot run in a transaction, and an
        # interrupted run leaves some built: IF NOT EXISTS lets the next one go on.
        with op.get_context().autocommit_block():
            indexes = _indexes(postgresql=True)
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
        for name, columns, options in _indexes(postgresql=False):
            op.create_index(name, "worker_jobs", columns, **options)
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
        op.drop_index("ix_worker_jobs_data", table_name="worker_jobs")
    for name in (
        "ix_worker_jobs_live_cron",
        "ix_worker_jobs_due_id",
        "ix_worker_jobs_finished_id",
        "ix_worker_jobs_user_id_id",
        "ix_worker_jobs_type_id",
    ):
        op.drop_index(name, table_name="worker_jobs")
