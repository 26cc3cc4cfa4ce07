"""The fault-injection suite: a workload on real processes, a fault, and the invariants.

Each test runs a workload of one-off jobs, sleeping jobs, failing-with-retry
jobs and a cron job every second on PostgreSQL, Redis and real `celery`
processes, injects its fault, lets the system recover, and then checks the
invariants over the whole table (see :meth:`Workload.verify`). A line per test
(jobs, faults, lost, duplicated, recovery time) is printed at the end of the run.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, select, update

from tests.acceptance.conftest import (  # noqa: F401 (fixtures)
    Processes,
    bridge,
    processes,
    pytest_runtest_makereport,
    wait_until,
)
from worker_bridge import WorkerJobConfig, schedule_cron_job, schedule_jobs
from worker_bridge.job import Job
from worker_bridge.models import JobState, WorkerJob
from worker_bridge.store import store_for

pytestmark = [pytest.mark.faults, pytest.mark.e2e]

SUMMARY: list[str] = []


@pytest.fixture
def backend() -> str:
    return "postgresql"


@pytest.fixture
def checker(database_url: str) -> Iterator[Engine]:
    """An engine for the checks that survives a database restart (pre-ping)."""
    engine = create_engine(database_url, pool_pre_ping=True)
    yield engine
    engine.dispose()


@dataclass
class Report:
    name: str
    jobs: int
    faults: int
    lost: int
    duplicated: int
    recovery: float
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.name:<58} jobs={self.jobs:<4} faults={self.faults:<3} lost={self.lost} "
            f"duplicated={self.duplicated} recovery={self.recovery:.1f}s"
        )


class Workload:
    """The jobs a fault test runs, and the invariants they must keep."""

    def __init__(self, engine: Engine, record_dir: Path, job_type: str = "work") -> None:
        self.engine = engine
        self.record_dir = record_dir
        #: ``work``, or ``work_batched`` for the same workload in batched mode.
        self.job_type = job_type
        self.roots: list[int] = []
        self.cron_root: int | None = None
        self.results_before: dict[int, Any] = {}
        self.restarts = 0

    def start(self, one_off: int = 120, sleepy: int = 8, failing: int = 10) -> None:
        due = datetime.now(UTC)
        configs = (
            [
                WorkerJobConfig(
                    type=self.job_type,
                    user_id=1000 + i,
                    data={"sleep": 0.02},
                    due=due,
                    remove_delay=3_600_000,
                )
                for i in range(one_off)
            ]
            + [
                WorkerJobConfig(
                    type=self.job_type,
                    user_id=2000 + i,
                    data={"sleep": 1.5},
                    due=due,
                    remove_delay=3_600_000,
                )
                for i in range(sleepy)
            ]
            + [
                WorkerJobConfig(
                    type=self.job_type,
                    user_id=3000 + i,
                    data={"fail_times": 1},
                    auto_reschedule_on_failure=True,
                    auto_reschedule_on_failure_delay=300,
                    remove_delay=3_600_000,
                    due=due,
                )
                for i in range(failing)
            ]
        )
        self.roots = [job.id for job in schedule_jobs(configs)]
        cron = schedule_cron_job(
            WorkerJobConfig(type=self.job_type, user_id=1, remove_delay=3_600_000),
            "* * * * * *",
        )
        self.cron_root = cron.id

    def rows(self) -> list[WorkerJob]:
        table = WorkerJob.__table__
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(table).where(table.c.type == self.job_type).order_by(table.c.id)
            )
            return [Job.from_row(row) for row in rows]

    def snapshot(self) -> None:
        """Remember the results already written, to check that the fault kept them."""
        self.results_before = {
            job.id: (job.success, job.result) for job in self.rows() if job.finished is not None
        }

    def job(self, job_id: int) -> WorkerJob:
        """One row, read now."""
        with self.engine.connect() as connection:
            job = store_for(connection).get_job(connection, job_id)
        assert job is not None, f"job {job_id} is gone"
        return job

    def finished(self, job_id: int) -> WorkerJob | None:
        """The row once it is finished, else None (for wait_until)."""
        job = self.job(job_id)
        return job if job.finished is not None else None

    def running(self, job_id: int) -> WorkerJob | None:
        """The row while it is running, else None (for wait_until)."""
        job = self.job(job_id)
        return job if job.state is JobState.RUNNING else None

    def finished_count(self) -> int:
        return sum(1 for job in self.rows() if job.finished is not None)

    def stop_cron(self) -> None:
        """End the cron chain, so that the workload can finish."""
        table = WorkerJob.__table__
        now = datetime.now(UTC)
        with self.engine.begin() as connection:
            # Stop the chain where it stands: a live occurrence is cancelled,
            # and a running one's follow-up (if any) is cancelled on the next pass.
            connection.execute(
                update(table)
                .where(
                    table.c.type == self.job_type,
                    table.c.user_id == 1,
                    table.c.finished.is_(None),
                    table.c.started.is_(None),
                )
                .values(
                    started=now,
                    finished=now,
                    success=False,
                    task_id=None,
                    result={"error": "stopped by the test", "cancelled": True},
                )
            )

    def settle(self, timeout: float, supervisor: Processes | None = None) -> float:
        """Wait until every row is finished (the cron chain stopped); return when.

        With ``supervisor``, a process that exited is started again, as its
        supervisor would in production; the restarts are counted.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if supervisor is not None:
                self.restarts += len(supervisor.restart_exited())
            self.stop_cron()
            if all(job.finished is not None for job in self.rows()):
                return time.monotonic()
            time.sleep(0.2)
        return time.monotonic()

    def executions(self) -> dict[int, list[dict[str, Any]]]:
        path = self.record_dir / "work.jsonl"
        by_job: dict[int, list[dict[str, Any]]] = defaultdict(list)
        if path.exists():
            for line in path.read_text().splitlines():
                entry = json.loads(line)
                by_job[int(entry["job_id"])].append(entry)
        return by_job

    def verify(
        self,
        name: str,
        faults: int,
        fault_time: float,
        settled: float,
        *,
        allow_overlap: bool = False,
        allow_rerun: bool = False,
    ) -> Report:
        """Check the invariants over the whole table and add the fault's line to the summary.

        ``allow_rerun``: a row whose run completed but whose outcome was not
        yet written when its process died may run again, one run after the
        other (a batch writes its outcomes in groups); runs that overlap are
        still a problem.
        """
        rows = self.rows()
        by_id = {job.id: job for job in rows}
        problems: list[str] = []
        lost = [job.id for job in rows if job.finished is None]
        for job in rows:
            if (
                job.success is False
                and job.state is not JobState.CANCELLED
                and (job.result or {}).get("exception") != "RuntimeError"
            ):
                problems.append(f"job {job.id} failed not by its own doing: {job.result}")
                lost.append(job.id)
        # Every failing root ends in success through its retries; every root ends.
        children: dict[int, list[int]] = defaultdict(list)
        for job in rows:
            if job.rescheduled_from_job is not None:
                children[job.rescheduled_from_job].append(job.id)
                parent = by_id.get(job.rescheduled_from_job)
                if parent is None or parent.finished is None:
                    problems.append(
                        f"job {job.id} follows {job.rescheduled_from_job}, "
                        "which is not a finished row"
                    )
        for parent_id, kids in children.items():
            if len(kids) > 1:
                problems.append(f"job {parent_id} has {len(kids)} follow-ups: {kids}")
        for root in self.roots:
            job, hops = by_id[root], 0
            while job.success is False and job.state is not JobState.CANCELLED and hops < 20:
                kids = children.get(job.id, [])
                if not kids:
                    problems.append(f"failed job {job.id} has no retry")
                    lost.append(job.id)
                    break
                job, hops = by_id[kids[0]], hops + 1
            if job.success is not True:
                problems.append(f"chain of root {root} ends in {job.state.value} (job {job.id})")
        # No two executions of one row overlap; no row completes twice.
        duplicated = 0
        for job_id, entries in self.executions().items():
            runs: dict[str, dict[str, float]] = defaultdict(dict)
            for entry in entries:
                runs[entry["token"]][entry["phase"]] = entry["t"]
            completed = [r for r in runs.values() if "end" in r]
            spans = sorted(
                (r["start"], r.get("end", r["start"])) for r in runs.values() if "start" in r
            )
            overlap = any(b[0] < a[1] for a, b in itertools.pairwise(spans))
            if len(completed) > 1 or overlap:
                duplicated += 1
                if not (allow_overlap or (allow_rerun and not overlap)):
                    problems.append(f"job {job_id} ran twice: {dict(runs)}")
        for job_id, before in self.results_before.items():
            after = by_id.get(job_id)
            if after is None or (after.success, after.result) != before:
                problems.append(f"job {job_id}'s result changed across the fault")
        report = Report(
            name,
            len(rows),
            faults,
            len(set(lost)),
            duplicated,
            max(0.0, settled - fault_time),
            problems,
        )
        SUMMARY.append(report.line())
        return report


@pytest.fixture
def workload(checker: Engine, tmp_path: Path) -> Workload:
    return Workload(checker, tmp_path)


def run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=120)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SUMMARY:
        terminalreporter.section("fault injection")
        for line in SUMMARY:
            terminalreporter.write_line(line)


def recent(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)
