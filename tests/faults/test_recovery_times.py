"""How fast a killed job runs again with the DEFAULT recovery settings (no short timeouts).

A pool process killed mid-job: the worker's main process reports the attempt lost and the
job runs again under a new attempt within seconds (target: under 10 s). A whole worker
killed: the job's heartbeat expires and recovery sends it again (target: under 30 s).
Each execution records its start and end, so that an overlap would show.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.acceptance.conftest import Processes, wait_until
from tests.faults.conftest import Workload
from worker_bridge import WorkerJobConfig, schedule_job
from worker_bridge.job import Job, JobState

#: worker_bridge's own defaults: the project's celeryconfig sets nothing.
DEFAULTS = {"CELERY_CONFIG_MODULE": "celeryconfig"}


def _start(processes: Processes, name: str, *args: str) -> subprocess.Popen[bytes]:
    return processes.start(name, *args, env=DEFAULTS)


def _worker(processes: Processes, name: str) -> subprocess.Popen[bytes]:
    return _start(
        processes, name, "worker", "--loglevel", "INFO", "--concurrency", "1",
        "-n", f"{name}@%h", "--without-mingle", "--without-gossip",
    )  # fmt: skip


def _dispatcher(processes: Processes) -> subprocess.Popen[bytes]:
    return _start(processes, "d1", "beat", "--loglevel", "INFO",
                  "--pidfile", str(processes.log_dir / "d1.pid"))  # fmt: skip


def _run_and_kill(processes: Processes, workload: Workload, kill: str) -> tuple[Job, Job, float]:
    """Start a 4-second job, kill its pool process or its whole worker, wait for the rerun."""
    first = _worker(processes, "w1")
    _dispatcher(processes)
    job = schedule_job(
        WorkerJobConfig(type="work", user_id=9, data={"sleep": 4}, remove_delay=3_600_000)
    )
    workload.roots = [job.id]
    running = wait_until(lambda: workload.running(job.id), 60, "the job to start")
    pool_pid = int((running.worker or "").rsplit(":", 1)[1])
    time.sleep(0.5)  # well inside run(): the kill interrupts the job, not its claim
    killed_at = time.monotonic()
    if kill == "pool process":
        os.kill(pool_pid, signal.SIGKILL)
    else:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        _worker(processes, "w2")
    done = wait_until(lambda: workload.finished(job.id), 90, "the job to run again")
    return running, done, time.monotonic() - killed_at


@pytest.mark.parametrize(
    ("kill", "target"), [("pool process", 10.0), ("whole worker", 30.0)], ids=["pool", "worker"]
)
def test_a_killed_job_runs_again_in_time_with_the_default_settings(
    processes: Processes, workload: Workload, kill: str, target: float
) -> None:
    running, done, elapsed = _run_and_kill(processes, workload, kill)
    assert done.state is JobState.SUCCEEDED, done.result
    assert done.attempts == 2 and done.recoveries == 1
    assert done.task_id != running.task_id  # the rerun is a new attempt
    report = workload.verify(
        f"SIGKILL {kill} mid-job, default settings", 1, time.monotonic() - elapsed,
        time.monotonic(),
    )  # fmt: skip
    assert not report.problems, report.problems
    assert report.lost == 0 and report.duplicated == 0
    assert elapsed < target, f"the job ran again {elapsed:.1f} s after the kill"
