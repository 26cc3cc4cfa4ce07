"""Command 1 of the README: `worker-bridge demo` on the embedded default, no server needed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from sqlalchemy import create_engine

from worker_bridge.models import JobState
from worker_bridge.store import JobSummary, store_for


def test_the_demo_runs_the_examples_on_the_embedded_default(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in {
            "WORKER_BRIDGE_DATABASE_URL",
            "CELERY_BROKER_URL",
            "WORKER_BRIDGE_JOBS",
            "CELERY_CONFIG_MODULE",
            "PYTHONPATH",
        }
    }
    result = subprocess.run(
        ["worker-bridge", "demo", "--seconds", "14"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "worker_bridge.sqlite3").exists()
    assert (tmp_path / "worker_bridge-broker.sqlite3").exists()
    assert "succeeded" in result.stdout

    engine = create_engine(f"sqlite:///{tmp_path / 'worker_bridge.sqlite3'}")
    try:
        with engine.connect() as connection:
            jobs = store_for(connection).list_jobs(connection, limit=100)
    finally:
        engine.dispose()
    by_type: dict[str, list[JobSummary]] = {}
    for job in jobs:
        by_type.setdefault(job.type, []).append(job)
    assert [j.status for j in by_type["hello"]] == [JobState.SUCCEEDED]
    ticks = [j for j in by_type["tick"] if j.status is JobState.SUCCEEDED]
    assert len(ticks) >= 2
    flaky = sorted(by_type["flaky"], key=lambda j: j.id)
    assert [j.status for j in flaky] == [JobState.FAILED, JobState.FAILED, JobState.SUCCEEDED]
    assert flaky[1].rescheduled_from_job == flaky[0].id
    assert flaky[2].rescheduled_from_job == flaky[1].id
