"""End to end on PostgreSQL and Redis only: what the embedded SQLite default does not offer.

Several dispatchers at once need SKIP LOCKED; `celery inspect` needs a broker
with broadcast (kombu's SQLAlchemy transport has none). The two dispatchers run
on PostgreSQL + RabbitMQ too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from tests.acceptance.conftest import RABBITMQ, ROOT, Processes, wait_until
from worker_bridge import WorkerJobConfig, schedule_job
from worker_bridge.models import WorkerJob


@pytest.fixture
def backend() -> str:
    return "postgresql"


def _executions(tmp_path: Path) -> list[dict[str, float]]:
    path = tmp_path / "executions.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.mark.parametrize(
    ("backend", "total"), [("postgresql", 2000), (RABBITMQ, 600)], ids=["postgresql", RABBITMQ]
)
def test_two_dispatchers_two_workers_run_each_job_exactly_once(
    processes: Processes, engine: Engine, tmp_path: Path, total: int
) -> None:
    processes.worker("w1")
    processes.worker("w2")
    processes.dispatcher("d1")
    processes.dispatcher("d2")
    due = datetime.now(UTC) + timedelta(seconds=2)
    ids = [
        schedule_job(WorkerJobConfig(type="record", user_id=i, due=due)).id for i in range(total)
    ]
    table = WorkerJob.__table__

    def finished_count() -> bool:
        with engine.connect() as connection:
            return (
                connection.execute(
                    select(func.count()).where(
                        table.c.type == "record", table.c.finished.isnot(None)
                    )
                ).scalar()
                == total
            )

    wait_until(finished_count, 180, f"{total} jobs to finish", interval=0.5)
    executions = Counter(int(e["job_id"]) for e in _executions(tmp_path))
    assert set(executions) == set(ids)
    assert max(executions.values()) == 1, executions.most_common(3)
    with engine.connect() as connection:
        rows = connection.execute(
            select(table.c.success, table.c.attempts, table.c.recoveries, table.c.worker).where(
                table.c.type == "record"
            )
        ).all()
    assert all(r.success and r.attempts == 1 and r.recoveries == 0 for r in rows)
    assert len({r.worker.split("@")[0] for r in rows}) == 2  # both workers took part


def test_inspect_lists_one_task_per_job_type(processes: Processes) -> None:
    processes.worker("wi", 1)
    env = processes.env

    def registered() -> str | None:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker_bridge",
                "inspect",
                "registered",
                "--timeout",
                "2",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return result.stdout if "jobs.echo" in result.stdout else None

    output = wait_until(registered, 60, "the worker to answer inspect", interval=0.5)
    for name in ("jobs.echo", "jobs.async_echo", "jobs.record", "jobs.fail"):
        assert name in output
    assert os.environ.get("CELERY_CONFIG_MODULE") != "x"  # env of the test process untouched
