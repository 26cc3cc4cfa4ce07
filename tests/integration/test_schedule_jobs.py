"""schedule_jobs: many jobs in one go, with the supersede rule of scheduling them in turn."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from tests.integration.test_concurrency import _check_one_pending_per_key
from worker_bridge import WorkerJobConfig, schedule_job, schedule_jobs
from worker_bridge.bridge import BridgeApp
from worker_bridge.errors import InvalidUserIdError
from worker_bridge.models import JobState, WorkerJob

Fetch = Callable[[int], WorkerJob]


def test_a_batch_of_distinct_jobs(bridge: BridgeApp, fetch: Fetch) -> None:
    due = datetime.now(UTC) + timedelta(minutes=5)
    configs = [
        WorkerJobConfig(
            type="echo",
            user_id=i,
            data={"i": i},
            due=due,
            auto_reschedule_on_failure=bool(i % 2),
            remove_delay=i,
        )
        for i in range(50)
    ]
    jobs = schedule_jobs(configs)
    assert [j.user_id for j in jobs] == list(range(50))
    assert [j.id for j in jobs] == sorted(j.id for j in jobs)
    for config, job in zip(configs, jobs, strict=True):
        stored = fetch(job.id)
        assert stored.state is JobState.PENDING
        assert stored.data == config.data and stored.due == due
        assert stored.auto_reschedule_on_failure == config.auto_reschedule_on_failure
        assert stored.remove_delay == config.remove_delay


def test_repeated_pairs_supersede_in_order(
    bridge: BridgeApp, fetch: Fetch, job_factory: Callable[..., WorkerJob]
) -> None:
    now = datetime.now(UTC)
    existing = schedule_job(WorkerJobConfig(type="echo", user_id=1))
    running = job_factory(type="echo", user_id=1, started=now)
    stale = job_factory(type="echo", user_id=1, started=now - timedelta(hours=2))
    a, b, other, c = schedule_jobs(
        [
            WorkerJobConfig(type="echo", user_id=1, data={"n": "a"}),
            WorkerJobConfig(type="echo", user_id=1, data={"n": "b"}),
            WorkerJobConfig(type="other", user_id=1),
            WorkerJobConfig(type="echo", user_id=1, data={"n": "c"}),
        ]
    )
    assert fetch(existing.id).result["cancelled_by"] == a.id
    assert fetch(stale.id).result["cancelled_by"] == a.id
    assert fetch(running.id).state is JobState.RUNNING
    assert fetch(a.id).state is JobState.CANCELLED and fetch(a.id).result["cancelled_by"] == b.id
    assert fetch(b.id).result["cancelled_by"] == c.id
    assert fetch(c.id).state is JobState.PENDING and fetch(c.id).data == {"n": "c"}
    assert fetch(other.id).state is JobState.PENDING
    assert a.state is JobState.CANCELLED and c.state is JobState.PENDING


def _outcome(jobs: list[WorkerJob], all_rows: list[WorkerJob]) -> list[tuple[str, Any]]:
    """Each scheduled job's final state, with 'cancelled by' as a position in the batch."""
    position = {job.id: index for index, job in enumerate(jobs)}
    by_id = {row.id: row for row in all_rows}
    return [
        (by_id[job.id].state.value, position.get((by_id[job.id].result or {}).get("cancelled_by")))
        for job in jobs
    ]


def test_same_outcome_as_one_by_one(
    bridge: BridgeApp, engine: Engine, all_jobs: Callable[[], list[WorkerJob]]
) -> None:
    rng = random.Random(7)
    configs = [
        WorkerJobConfig(type=rng.choice(["echo", "other"]), user_id=rng.randint(0, 4))
        for _ in range(200)
    ]
    batch = _outcome(schedule_jobs(configs), all_jobs())
    with engine.begin() as connection:
        connection.execute(text("TRUNCATE worker_jobs, worker_job_minutes RESTART IDENTITY"))
    one_by_one = _outcome([schedule_job(config) for config in configs], all_jobs())
    assert batch == one_by_one


def test_one_bad_config_writes_nothing(
    bridge: BridgeApp, all_jobs: Callable[[], list[WorkerJob]]
) -> None:
    existing = schedule_job(WorkerJobConfig(type="echo", user_id=1))
    with pytest.raises(InvalidUserIdError, match=r"configs\[2\]: user_id must be an int"):
        schedule_jobs(
            [
                WorkerJobConfig(type="echo", user_id=1),
                WorkerJobConfig(type="echo", user_id=2),
                WorkerJobConfig(type="echo", user_id="3"),
            ]
        )  # type: ignore[arg-type]
    assert [(j.id, j.state) for j in all_jobs()] == [(existing.id, JobState.PENDING)]


def test_the_batch_joins_the_callers_transaction(
    bridge: BridgeApp, engine: Engine, all_jobs: Callable[[], list[WorkerJob]]
) -> None:
    with Session(engine) as session:
        schedule_jobs([WorkerJobConfig(type="echo", user_id=i) for i in range(5)], session=session)
        session.rollback()
    assert all_jobs() == []
    assert schedule_jobs([]) == []


def test_concurrent_overlapping_batches_leave_one_pending_job_per_pair(
    bridge: BridgeApp, all_jobs: Callable[[], list[WorkerJob]]
) -> None:
    writers, rounds = 8, 10
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(rounds):
                barrier.wait(timeout=30)
                schedule_jobs(
                    [WorkerJobConfig(type="echo", user_id=rng.randint(0, 5)) for _ in range(20)]
                )
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    _check_one_pending_per_key(all_jobs(), writers * rounds * 20)


def _advisory_locks_held(session: Session) -> int:
    """How many advisory locks the session's transaction holds right now."""
    held: int = session.execute(
        text(
            "SELECT count(*) FROM pg_locks "
            "WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        )
    ).scalar_one()
    return held


def test_a_batch_of_tens_of_thousands_of_pairs_holds_a_bounded_number_of_locks(
    bridge: BridgeApp, engine: Engine
) -> None:
    """One advisory lock per pair would exhaust PostgreSQL's lock table
    ("out of shared memory") beyond some ten thousand pairs; the pairs'
    locks are hash buckets, so any batch holds at most PAIR_LOCK_BUCKETS."""
    from worker_bridge.store.schema import PAIR_LOCK_BUCKETS

    count = 30_000
    configs = [WorkerJobConfig(type="echo", user_id=i) for i in range(count)]
    with Session(engine) as session, session.begin():
        jobs = schedule_jobs(configs, session=session)
        held = _advisory_locks_held(session)
    assert 0 < held <= PAIR_LOCK_BUCKETS
    assert len(jobs) == count
    with engine.connect() as connection:
        pending = connection.execute(
            text("SELECT count(*) FROM worker_jobs WHERE type = 'echo' AND started IS NULL")
        ).scalar_one()
    assert pending == count


def test_many_batches_in_one_transaction_hold_a_bounded_number_of_locks(
    bridge: BridgeApp, engine: Engine
) -> None:
    """Locks last until the transaction ends, so batches in one transaction add
    up: 25 batches of 1,000 distinct pairs must still fit in the lock table."""
    from worker_bridge.store.schema import PAIR_LOCK_BUCKETS

    with Session(engine) as session, session.begin():
        for start in range(0, 25_000, 1_000):
            schedule_jobs(
                [WorkerJobConfig(type="echo", user_id=u) for u in range(start, start + 1_000)],
                session=session,
            )
        held = _advisory_locks_held(session)
    assert 0 < held <= PAIR_LOCK_BUCKETS
