"""The remove_old_worker_jobs job deletes what is past its keep time, and only that."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from worker_bridge.bridge import BridgeApp
from worker_bridge.loader import JobRegistry
from worker_bridge.models import WorkerJob
from worker_bridge.params import JobParams, job_logger


def _run_removal(bridge: BridgeApp, job: WorkerJob) -> object:
    runner = JobRegistry("jobs").runner("remove_old_worker_jobs")
    return runner(JobParams(app=bridge, log=job_logger(job), job=job))


def test_removal_deletes_only_what_is_due(
    bridge: BridgeApp,
    job_factory: Callable[..., WorkerJob],
    all_jobs: Callable[[], list[WorkerJob]],
) -> None:
    now = datetime.now(UTC)
    old = now - timedelta(days=8)
    gone_success = job_factory(
        user_id=1,
        started=now,
        finished=now - timedelta(seconds=5),
        success=True,
        remove_at=now - timedelta(seconds=5),
    )
    kept_success = job_factory(
        user_id=2,
        started=now,
        finished=now,
        success=True,
        remove_delay=60_000,
        remove_at=now + timedelta(minutes=1),
    )
    gone_failed = job_factory(
        user_id=3, started=old, finished=old, success=False, result={"error": "boom"}
    )
    kept_failed = job_factory(
        user_id=4,
        started=now,
        finished=now - timedelta(days=6),
        success=False,
        result={"error": "boom"},
    )
    gone_cancelled = job_factory(
        user_id=5,
        started=old,
        finished=old,
        success=False,
        result={"error": "cancelled", "cancelled": True},
    )
    pending = job_factory(user_id=6, due=old)
    running = job_factory(user_id=7, started=old)
    me = job_factory(type="remove_old_worker_jobs", user_id=0, started=now)

    assert _run_removal(bridge, me) == {"deleted": 3}

    remaining = {j.id for j in all_jobs()}
    assert remaining == {kept_success.id, kept_failed.id, pending.id, running.id, me.id}
    assert not remaining & {gone_success.id, gone_failed.id, gone_cancelled.id}


def test_removing_an_ancestor_keeps_the_lineage_below_it(
    bridge: BridgeApp, job_factory: Callable[..., WorkerJob], fetch: Callable[[int], WorkerJob]
) -> None:
    now = datetime.now(UTC)
    first = job_factory(started=now, finished=now, success=True, remove_at=now)
    second = job_factory(
        started=now,
        finished=now,
        success=True,
        rescheduled_from_job=first.id,
        remove_at=now + timedelta(hours=1),
    )
    third = job_factory(rescheduled_from_job=second.id)
    me = job_factory(type="remove_old_worker_jobs", user_id=0, started=now)

    assert _run_removal(bridge, me) == {"deleted": 1}

    assert fetch(second.id).rescheduled_from_job is None
    assert fetch(third.id).rescheduled_from_job == second.id


def test_failed_retention_is_configurable(
    bridge: BridgeApp,
    job_factory: Callable[..., WorkerJob],
    all_jobs: Callable[[], list[WorkerJob]],
) -> None:
    short = BridgeApp(
        settings=type(bridge.settings)(
            database_url=bridge.settings.database_url,
            jobs_package=bridge.settings.jobs_package,
            failed_retention=timedelta(hours=1),
        ),
        engine=bridge.engine,
        session_factory=bridge.session_factory,
    )
    now = datetime.now(UTC)
    failed = job_factory(
        started=now, finished=now - timedelta(hours=2), success=False, result={"error": "x"}
    )
    me = job_factory(type="remove_old_worker_jobs", user_id=0, started=now)
    assert _run_removal(short, me) == {"deleted": 1}
    assert failed.id not in {j.id for j in all_jobs()}
