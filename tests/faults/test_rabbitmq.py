"""Faults of RabbitMQ itself, and the recovery times of killed jobs, on PostgreSQL + RabbitMQ.

RabbitMQ stopped for 5 s (``rabbitmqctl stop_app``: every connection closes and
the port refuses new ones) and started again while the workload flows: the
queue is durable and its messages persistent, so they come back with it; the
jobs running meanwhile keep running (their acknowledgements fail, and their
redelivered messages find the rows finished and are refused). The same
invariants as for Redis must hold. The kill-recovery times of
test_recovery_times.py (default settings) must hold on RabbitMQ too.
"""

from __future__ import annotations

import socket
import time

import pytest
from kombu import Connection

from tests.acceptance.conftest import RABBITMQ, Processes, wait_until
from tests.conftest import RABBITMQ_HOST, rabbitmqctl
from tests.faults.conftest import Workload
from tests.faults.test_faults import SETTLE, _assert_clean
from tests.faults.test_recovery_times import _run_and_kill
from worker_bridge.job import JobState

OUTAGE = 5.0


@pytest.fixture
def backend() -> str:
    return RABBITMQ


def _port_open() -> bool:
    try:
        with socket.create_connection((RABBITMQ_HOST, 5672), timeout=1):
            return True
    except OSError:
        return False


def _broker_serves(url: str) -> bool:
    """Whether RabbitMQ's application runs again: an AMQP connection opens a channel."""
    try:
        with Connection(url, connect_timeout=2) as connection:
            connection.connect()
            connection.channel().close()
        return True
    except Exception:
        return False


def test_rabbitmq_stopped_and_restarted_while_jobs_flow(
    processes: Processes, workload: Workload, rabbitmq_url: str
) -> None:
    processes.worker("w1", 2)
    processes.dispatcher()
    workload.start(one_off=200)
    wait_until(lambda: workload.finished_count() > 20, 60, "the workload to get going")
    workload.snapshot()
    fault_time = time.monotonic()
    rabbitmqctl("stop_app")
    try:
        wait_until(lambda: not _port_open(), 10, "RabbitMQ to stop listening")
        time.sleep(OUTAGE)  # the outage itself
    finally:
        rabbitmqctl("start_app")
        wait_until(lambda: _broker_serves(rabbitmq_url), 60, "RabbitMQ to serve again")
    # As for Redis: a process that exits is restarted, as a supervisor would (on RabbitMQ
    # none has needed it so far: the workers reconnect; the count is printed).
    settled = workload.settle(SETTLE, supervisor=processes)
    report = workload.verify("RabbitMQ down 5 s (stop_app, start_app)", 1, fault_time, settled)
    print(f"processes restarted after the fault: {workload.restarts}")
    _assert_clean(report)
    assert report.duplicated == 0


@pytest.mark.parametrize(
    ("kill", "target"), [("pool process", 10.0), ("whole worker", 30.0)], ids=["pool", "worker"]
)
def test_a_killed_job_runs_again_in_time_with_the_default_settings_on_rabbitmq(
    processes: Processes, workload: Workload, kill: str, target: float
) -> None:
    """As test_recovery_times.py, on RabbitMQ: the pool process's job runs again at once,
    the whole worker's after the default heartbeat_timeout."""
    running, done, elapsed = _run_and_kill(processes, workload, kill)
    assert done.state is JobState.SUCCEEDED, done.result
    assert done.attempts == 2 and done.recoveries == 1
    assert done.task_id != running.task_id
    report = workload.verify(
        f"SIGKILL {kill} mid-job, default settings (RabbitMQ)",
        1,
        time.monotonic() - elapsed,
        time.monotonic(),
    )
    assert not report.problems, report.problems
    assert report.lost == 0 and report.duplicated == 0
    assert elapsed < target, f"the job ran again {elapsed:.1f} s after the kill"
