"""Many writers scheduling the same (type, user_id) at once leave exactly one pending job."""

from __future__ import annotations

import itertools
import multiprocessing
import threading
from collections.abc import Callable

from worker_bridge import WorkerJobConfig, schedule_job
from worker_bridge.bridge import BridgeApp
from worker_bridge.models import JobState, WorkerJob
from worker_bridge.settings import Settings

WRITERS = 8
ROUNDS = 15


def _check_one_pending_per_key(jobs: list[WorkerJob], expected_total: int) -> None:
    assert len(jobs) == expected_total
    by_key: dict[tuple[str, int], list[WorkerJob]] = {}
    for job in jobs:
        by_key.setdefault((job.type, job.user_id), []).append(job)
    for key, rows in by_key.items():
        pending = [j for j in rows if j.state is JobState.PENDING]
        assert len(pending) == 1, f"{key}: {len(pending)} pending jobs"
        assert pending[0].id == max(j.id for j in rows), "the newest job must be the pending one"
        ids = sorted(j.id for j in rows)
        successor = dict(itertools.pairwise(ids))
        for job in rows:
            if job is pending[0]:
                continue
            assert job.state is JobState.CANCELLED, f"{key}: job {job.id} is {job.state}"
            # Writers serialise, so each job is cancelled by the very next one.
            assert job.result["cancelled_by"] == successor[job.id]


def test_concurrent_threads_leave_one_pending_job(
    bridge: BridgeApp, all_jobs: Callable[[], list[WorkerJob]]
) -> None:
    barrier = threading.Barrier(WRITERS)
    errors: list[BaseException] = []

    def writer(index: int) -> None:
        try:
            for round_ in range(ROUNDS):
                barrier.wait(timeout=30)
                # Every writer hits the same key; half also hit a second key.
                schedule_job(WorkerJobConfig(type="echo", user_id=1, data={"w": index}))
                if index % 2:
                    schedule_job(WorkerJobConfig(type="echo", user_id=2, data={"r": round_}))
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    _check_one_pending_per_key(all_jobs(), WRITERS * ROUNDS + (WRITERS // 2) * ROUNDS)


def _process_writer(database_url: str, barrier: object, index: int) -> None:
    bridge = BridgeApp.from_settings(
        Settings(database_url=database_url, jobs_package="tests.testjobs")
    )
    try:
        for _ in range(ROUNDS):
            barrier.wait(timeout=60)  # type: ignore[attr-defined]
            schedule_job(WorkerJobConfig(type="echo", user_id=5, data={"p": index}), bridge=bridge)
    finally:
        bridge.dispose()


def test_concurrent_processes_leave_one_pending_job(
    bridge: BridgeApp, database_url: str, all_jobs: Callable[[], list[WorkerJob]]
) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WRITERS)
    processes = [
        context.Process(target=_process_writer, args=(database_url, barrier, i))
        for i in range(WRITERS)
    ]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join(timeout=120)
            assert process.exitcode == 0
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
    _check_one_pending_per_key(all_jobs(), WRITERS * ROUNDS)
