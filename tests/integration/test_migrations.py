"""`worker-bridge db upgrade` creates worker_jobs on an empty database, idempotently."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from tests.conftest import ADMIN_URL
from worker_bridge.migrations import VERSION_TABLE, downgrade_database, upgrade_database
from worker_bridge.models import Base


@pytest.fixture
def empty_database() -> Iterator[str]:
    name = f"worker_bridge_empty_{uuid.uuid4().hex[:8]}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WORKER_BRIDGE_DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "worker_bridge.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_db_upgrade_creates_the_table_and_is_idempotent(empty_database: str) -> None:
    first = _cli(empty_database, "db", "upgrade")
    assert first.returncode == 0, first.stderr
    assert "migrated" in first.stdout
    second = _cli(empty_database, "db", "upgrade")
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout

    engine = create_engine(empty_database)
    try:
        inspector = inspect(engine)
        assert "worker_jobs" in inspector.get_table_names()
        assert VERSION_TABLE in inspector.get_table_names()
        columns = {c["name"]: c for c in inspector.get_columns("worker_jobs")}
        for name in (
            "id",
            "type",
            "user_id",
            "data",
            "due",
            "started",
            "finished",
            "success",
            "result",
            "cron_schedule",
            "auto_reschedule_on_failure",
            "auto_reschedule_on_failure_delay",
            "remove_delay",
            "remove_at",
            "rescheduled_from_job",
            "created_at",
            "updated_at",
            "dispatched_at",
            "task_id",
            "worker",
            "heartbeat",
            "attempts",
            "recoveries",
        ):
            assert name in columns, name
        assert str(columns["data"]["type"]) == "JSONB"
        assert columns["due"]["type"].timezone is True
        # The model and the migrations describe the same schema. Alembic reads an
        # index on a column with a collation as one on the bare column: that one
        # is compared by its definition instead.
        with engine.connect() as connection:

            def compared(obj: object, name: str | None, *_: object) -> bool:
                return name not in ("ix_worker_jobs_type_id", "ix_worker_jobs_task_id")

            context = MigrationContext.configure(
                connection, opts={"version_table": VERSION_TABLE, "include_object": compared}
            )
            assert compare_metadata(context, Base.metadata) == []
            definitions = dict(
                connection.execute(
                    text(
                        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = "
                        "'worker_jobs' AND indexname LIKE 'ix_worker_jobs_%id'"
                    )
                ).all()
            )
        only_finished = " WHERE (finished IS NOT NULL)"
        for index, column in (
            ("ix_worker_jobs_type_id", "type"),
            ("ix_worker_jobs_task_id", "task_id"),
        ):
            assert definitions[index].endswith(f'({column} COLLATE "C", id)' + only_finished)
        assert definitions["ix_worker_jobs_user_id_id"].endswith(
            "(((user_id)::bigint), id)" + only_finished
        )
        for name in ("due", "finished"):
            utc = f"timezone('UTC'::text, timezone('UTC'::text, {name})), id)"
            assert definitions[f"ix_worker_jobs_{name}_id"].endswith(utc + only_finished)
    finally:
        engine.dispose()


def test_downgrade_then_upgrade(empty_database: str) -> None:
    engine = create_engine(empty_database)
    try:
        upgrade_database(engine)
        downgrade_database(engine, "base")
        assert "worker_jobs" not in inspect(engine).get_table_names()
        upgrade_database(engine)
        assert "worker_jobs" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def test_db_upgrade_reports_an_unreachable_database_in_one_line() -> None:
    result = _cli("postgresql+psycopg://someone:s3cret-pw@127.0.0.1:1/nowhere", "db", "upgrade")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot reach the database" in lines[0]
    assert "s3cret-pw" not in result.stderr + result.stdout


def test_0002_builds_the_console_indexes_on_a_table_with_rows(empty_database: str) -> None:
    engine = create_engine(empty_database)
    try:
        upgrade_database(engine, "0001")
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO worker_jobs (type, user_id, data, due) "
                    "SELECT 'echo', n, jsonb_build_object('n', n), now() "
                    "FROM generate_series(1, 500) AS n"
                )
            )
        upgrade_database(engine)
        indexes = {index["name"] for index in inspect(engine).get_indexes("worker_jobs")}
        assert {
            "ix_worker_jobs_type_id", "ix_worker_jobs_task_id", "ix_worker_jobs_user_id_id",
            "ix_worker_jobs_finished_id",
            "ix_worker_jobs_due_id", "ix_worker_jobs_live_cron", "ix_worker_jobs_data",
        } <= indexes  # fmt: skip
        with engine.connect() as connection:
            valid = connection.execute(
                text(
                    "SELECT bool_and(indisvalid) FROM pg_index "
                    "WHERE indrelid = 'worker_jobs'::regclass"
                )
            ).scalar()
            assert valid is True
            assert "worker_job_minutes" in inspect(connection).get_table_names()
        downgrade_database(engine, "0001")
        assert "ix_worker_jobs_data" not in {
            index["name"] for index in inspect(engine).get_indexes("worker_jobs")
        }
        # What an interrupted CONCURRENTLY build leaves: the index there, INVALID.
        with engine.begin() as connection:
            connection.execute(text("CREATE INDEX ix_worker_jobs_due_id ON worker_jobs (due, id)"))
            connection.execute(
                text(
                    "UPDATE pg_index SET indisvalid = false "
                    "WHERE indexrelid = 'ix_worker_jobs_due_id'::regclass"
                )
            )
        upgrade_database(engine)
        with engine.connect() as connection:
            assert (
                connection.execute(
                    text(
                        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_worker_jobs_due_id'::regclass"
                    )
                ).scalar()
                is True
            )
    finally:
        engine.dispose()
