"""The derived state: the SQL rule and the Python rule agree, on both back ends."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, select

from worker_bridge.models import Base, JobState, WorkerJob, job_state, state_expression

NOW = datetime(2030, 1, 1, tzinfo=UTC)
ROWS: list[tuple[dict[str, Any], JobState]] = [
    ({}, JobState.PENDING),
    ({"dispatched_at": NOW, "task_id": "t"}, JobState.DISPATCHED),
    ({"dispatched_at": NOW, "started": NOW}, JobState.RUNNING),
    (
        {"started": NOW, "finished": NOW, "success": True, "result": {"cancelled": True}},
        JobState.SUCCEEDED,
    ),
    (
        {"started": NOW, "finished": NOW, "success": False, "result": {"cancelled": True}},
        JobState.CANCELLED,
    ),
    (
        {"started": NOW, "finished": NOW, "success": False, "result": {"cancelled": 1}},
        JobState.FAILED,
    ),
    (
        {"started": NOW, "finished": NOW, "success": False, "result": {"cancelled": "maybe"}},
        JobState.FAILED,
    ),
    ({"started": NOW, "finished": NOW, "success": False, "result": None}, JobState.FAILED),
    ({"started": NOW, "finished": NOW, "success": False, "result": [1]}, JobState.FAILED),
]


def _check(engine: Engine) -> None:
    table = WorkerJob.__table__
    with engine.begin() as connection:
        for user_id, (overrides, _) in enumerate(ROWS):
            connection.execute(
                table.insert().values(
                    type="echo",
                    user_id=user_id,
                    data={},
                    due=NOW,
                    created_at=NOW,
                    updated_at=NOW,
                    **overrides,
                )
            )
        rows = connection.execute(
            select(table, state_expression().label("sql_state")).order_by(table.c.user_id)
        ).all()
    for row, (_, expected) in zip(rows, ROWS, strict=True):
        job = WorkerJob(**{k: v for k, v in row._asdict().items() if k != "sql_state"})
        assert job_state(job) is expected
        assert row.sql_state == expected.value


def test_sql_and_python_agree_on_postgresql(engine: Engine) -> None:
    _check(engine)


@pytest.fixture
def sqlite_engine(tmp_path: Any) -> Callable[[], Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'state.sqlite3'}")
    Base.metadata.create_all(engine)
    return lambda: engine


def test_sql_and_python_agree_on_sqlite(sqlite_engine: Callable[[], Engine]) -> None:
    _check(sqlite_engine())
