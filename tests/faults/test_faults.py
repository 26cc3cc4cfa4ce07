"""Faults injected into a running workload; the invariants must hold after recovery.

The kill faults and the PostgreSQL restart run on Redis and on RabbitMQ (``BOTH_BROKERS``);
RabbitMQ's own restart is in test_rabbitmq.py.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, delete

from tests.acceptance.conftest import RABBITMQ, Processes, wait_until
from tests.conftest import REDIS_HOST
from tests.faults.conftest import Workload
from worker_bridge import WorkerJobConfig, schedule_job
from worker_bridge.models import JobState, WorkerJob
from worker_bridge.store import store_for

SETTLE = 120
#: PostgreSQL + Redis, and PostgreSQL + RabbitMQ.
BOTH_BROKERS = pytest.mark.parametrize("backend", ["postgresql", RABBITMQ])


def _named(name: str, backend: str) -> str:
    """The fault's line in the summary, naming the broker when it is not Redis."""
    return f"{name} (RabbitMQ)" if backend == RABBITMQ else name


def _assert_clean(report: object) -> None:
    assert not report.problems, "\n".join(report.problems[:20])  # type: ignore[attr-defined]
    assert report.lost == 0  # type: ignore[attr-defined]


def _running_pool_pid(workload: Workload) -> int | None:
    for job in workload.rows():
        if job.state is JobState.RUNNING and job.worker and job.data.get("sleep", 0) >= 1:
            return int(job.worker.rsplit(":", 1)[1])
    return None


def _kill_pool_processes_then_a_worker(
    processes: Processes, workload: Workload
) -> tuple[float, int]:
    """Run the workload on two workers; SIGKILL two pool processes mid-job, then a whole
    worker, and start another; (when the faults began, how many)."""
    worker = processes.worker("w1", 2)
    processes.worker("w2", 2)
    processes.dispatcher()
    workload.start()
    wait_until(lambda: workload.finished_count() > 20, 60, "the workload to get going")
    workload.snapshot()
    fault_time = time.monotonic()
    faults = 0
    while faults < 2:
        pid = wait_until(lambda: _running_pool_pid(workload), 30, "a sleeping job to run")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue  # that process had just ended: pick another
        faults += 1
    os.killpg(worker.pid, signal.SIGKILL)  # the whole worker, main process and pool
    worker.wait(10)
    faults += 1
    processes.worker("w3", 2)
    return fault_time, faults


@BOTH_BROKERS
def test_sigkill_of_pool_processes_and_of_the_worker(
    processes: Processes, workload: Workload, backend: str
) -> None:
    fault_time, faults = _kill_pool_processes_then_a_worker(processes, workload)
    settled = workload.settle(SETTLE)
    report = workload.verify(
        _named("SIGKILL pool process x2, worker main process", backend), faults, fault_time, settled
    )
    _assert_clean(report)


def test_sigkill_of_pool_processes_and_of_the_worker_in_batched_mode(
    processes: Processes, checker: Engine, tmp_path: Path
) -> None:
    # The same workload and kills, with the job type batched (up to 20 rows per
    # message): a kill takes back every row of the batch whose outcome was not
    # written, and only those run again.
    workload = Workload(checker, tmp_path, job_type="work_batched")
    fault_time, faults = _kill_pool_processes_then_a_worker(processes, workload)
    settled = workload.settle(SETTLE)
    report = workload.verify(
        "SIGKILL pool process x2, worker main process, batched",
        faults,
        fault_time,
        settled,
        allow_rerun=True,
    )
    _assert_clean(report)
    shared = {job.task_id for job in workload.rows() if job.task_id}
    assert len(shared) < len(workload.rows()), "no two rows travelled in one message"


@BOTH_BROKERS
def test_sigkill_of_the_dispatcher_at_random_moments(
    processes: Processes, workload: Workload, backend: str
) -> None:
    processes.worker("w1", 2)
    rng = random.Random(11)
    workload.start()
    fault_time = time.monotonic()
    faults = 0
    for index in range(6):
        dispatcher = processes.dispatcher(f"d{index}")
        time.sleep(rng.uniform(1.0, 2.5))  # start-up, then somewhere in its cycle
        os.killpg(dispatcher.pid, signal.SIGKILL)
        dispatcher.wait(10)
        faults += 1
    workload.snapshot()
    processes.dispatcher("d-final")
    settled = workload.settle(SETTLE)
    report = workload.verify(
        _named("SIGKILL dispatcher x6 at random moments", backend), faults, fault_time, settled
    )
    _assert_clean(report)


def _redis(*args: str) -> None:
    subprocess.run(
        ["redis-cli", "-h", REDIS_HOST, *args], capture_output=True, timeout=30, check=False
    )


def _start_redis() -> None:
    os.makedirs("/var/lib/redis", exist_ok=True)
    os.makedirs("/var/log/redis", exist_ok=True)
    subprocess.run(
        [
            "redis-server",
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "-::1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            "/var/lib/redis",
            "--logfile",
            "/var/log/redis/ci.log",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )


def _redis_up() -> bool:
    try:
        return bool(redis.Redis(host=REDIS_HOST, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def test_redis_stopped_and_restarted_while_jobs_flow(
    processes: Processes, workload: Workload, redis_db: int
) -> None:
    processes.worker("w1", 2)
    processes.dispatcher()
    workload.start(one_off=200)
    wait_until(lambda: workload.finished_count() > 20, 60, "the workload to get going")
    workload.snapshot()
    fault_time = time.monotonic()
    _redis("shutdown", "nosave")
    wait_until(lambda: not _redis_up(), 10, "Redis to stop")
    try:
        time.sleep(5)
    finally:
        _start_redis()
        wait_until(_redis_up, 30, "Redis to come back")
        # Redis kept nothing: the run's claim on its database number goes back.
        redis.Redis(host=REDIS_HOST, db=redis_db).set("worker_bridge:test-run", "held", ex=3600)
    # kombu 5.7 can crash a worker while it reconnects (an AttributeError in
    # restore_unacked); a supervisor restarts it, and the table loses nothing.
    settled = workload.settle(SETTLE, supervisor=processes)
    report = workload.verify("Redis down 5 s (nothing persisted)", 1, fault_time, settled)
    print(f"processes restarted after the fault: {workload.restarts}")
    _assert_clean(report)


def _postgres_cluster() -> tuple[str, str]:
    version = sorted(os.listdir("/etc/postgresql"))[0]
    return version, "main"


@BOTH_BROKERS
def test_postgresql_restarted_while_workers_write_results(
    processes: Processes, workload: Workload, backend: str
) -> None:
    processes.worker("w1", 2)
    processes.dispatcher()
    workload.start(one_off=200)
    wait_until(lambda: workload.finished_count() > 30, 60, "the workload to get going")
    workload.snapshot()
    fault_time = time.monotonic()
    version, cluster = _postgres_cluster()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, cluster, "restart", "-m", "fast"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    settled = workload.settle(SETTLE)
    report = workload.verify(
        _named("PostgreSQL restarted under load", backend), 1, fault_time, settled
    )
    _assert_clean(report)


def test_duplicate_messages_and_messages_for_gone_rows(
    processes: Processes, workload: Workload, checker: Engine, redis_db: int
) -> None:
    dispatcher = processes.dispatcher()
    target = schedule_job(WorkerJobConfig(type="work", user_id=1, remove_delay=3_600_000))
    cancelled = schedule_job(WorkerJobConfig(type="work", user_id=2))
    deleted = schedule_job(WorkerJobConfig(type="work", user_id=3))
    client = redis.Redis(host=REDIS_HOST, db=redis_db)
    wait_until(lambda: client.llen("celery") >= 3, 30, "three messages in the queue")
    # Published is not yet committed: stop the dispatcher only once the table
    # records all three dispatches (a stop in between would roll them back).
    wait_until(
        lambda: all(workload.job(j.id).task_id for j in (target, cancelled, deleted)),
        30,
        "the three dispatches to be committed",
    )
    processes.stop(dispatcher)
    fault_time = time.monotonic()
    for raw in client.lrange("celery", 0, -1):  # every message delivered twice
        client.lpush("celery", raw)
    with checker.begin() as connection:
        assert store_for(connection).cancel_job(
            connection, cancelled.id, now=_now(), reason="by the test"
        )
        connection.execute(
            delete(WorkerJob.__table__).where(WorkerJob.__table__.c.id == deleted.id)
        )
    worker = processes.worker("w1", 2)
    wait_until(lambda: workload.finished(target.id), 30, "the target job")
    wait_until(
        lambda: processes.log_of(worker).count("skipped") >= 5,
        30,
        "the worker to skip the five other messages",
    )
    log = processes.log_of(worker)
    assert f"job {deleted.id}: skipped: the row does not exist" in log
    assert f"job {cancelled.id}: skipped: the row is already cancelled" in log
    assert f"job {target.id}: skipped: the row is already" in log
    workload.roots = [target.id]
    report = workload.verify(
        "each message twice; cancelled and deleted rows", 5, fault_time, time.monotonic()
    )
    _assert_clean(report)
    assert report.duplicated == 0
    assert len([e for e in workload.executions()[target.id] if e["phase"] == "start"]) == 1


def _now() -> datetime:
    return datetime.now(UTC)


def test_two_dispatchers_three_workers_one_dispatcher_killed(
    processes: Processes, workload: Workload
) -> None:
    for name in ("w1", "w2", "w3"):
        processes.worker(name, 1)
    doomed = processes.dispatcher("d1")
    processes.dispatcher("d2")
    workload.start(one_off=400, sleepy=6, failing=10)
    wait_until(lambda: workload.finished_count() > 50, 60, "the workload to get going")
    workload.snapshot()
    fault_time = time.monotonic()
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait(10)
    settled = workload.settle(SETTLE)
    report = workload.verify(
        "2 dispatchers + 3 workers, one dispatcher killed", 1, fault_time, settled
    )
    _assert_clean(report)


def test_a_stalled_worker_cannot_overwrite_the_rerun(
    processes: Processes, workload: Workload, tmp_path: Path
) -> None:
    stalled_worker = processes.worker("w1", 1)
    processes.dispatcher()
    job = schedule_job(
        WorkerJobConfig(type="work", user_id=7, data={"sleep": 2}, remove_delay=3_600_000)
    )
    workload.roots = [job.id]
    running = wait_until(lambda: workload.running(job.id), 30, "the job to start")
    pool_pid = int(running.worker.rsplit(":", 1)[1])
    fault_time = time.monotonic()
    os.kill(pool_pid, signal.SIGSTOP)  # alive, but stalled: no heartbeat, no progress
    try:
        processes.worker("w2", 1)
        rerun = wait_until(
            lambda: workload.finished(job.id), 60, "the job to be recovered and run again"
        )
    finally:
        os.kill(pool_pid, signal.SIGCONT)
    assert rerun.success and rerun.recoveries == 1 and rerun.result["pid"] != pool_pid
    # The stalled attempt wakes up, finishes its run() and tries to write: refused.
    wait_until(
        lambda: "result refused" in processes.log_of(stalled_worker),
        30,
        "the stalled attempt's late write to be refused",
    )
    after = workload.job(job.id)
    assert after.result == rerun.result and after.finished == rerun.finished
    report = workload.verify(
        "worker stalled past heartbeat_timeout (SIGSTOP)",
        1,
        fault_time,
        time.monotonic(),
        allow_overlap=True,
    )
    assert not report.problems, report.problems
    assert report.duplicated == 1  # both attempts ran run(); only the current one's write counted
    del tmp_path


def test_a_job_outliving_the_hard_time_limit_is_recorded_not_rerun(
    processes: Processes, workload: Workload
) -> None:
    processes.worker(
        "w1", 2, env={"CELERY_CONFIG_MODULE": "tests.acceptance.celeryconfig_timeouts"}
    )
    processes.dispatcher()
    job = schedule_job(
        WorkerJobConfig(type="sleep", user_id=8, data={"seconds": 30, "ignore_soft_limit": True})
    )
    fault_time = time.monotonic()
    done = wait_until(lambda: workload.finished(job.id), 30, "the hard time limit to end the job")
    assert done.success is False and done.result["exception"] == "TimeLimitExceeded"
    time.sleep(4)  # longer than heartbeat_timeout: the row must not be recovered and rerun
    again = workload.job(job.id)
    assert again.recoveries == 0 and again.attempts == 1 and again.result == done.result
    workload.roots = []
    report = workload.verify("job past the hard time limit", 1, fault_time, time.monotonic())
    assert not report.problems
