"""The store's batch operations, on PostgreSQL and on SQLite: the contract suite's second part.

A batch message's rows share one attempt token; these operations claim them,
ask which are still the batch's, write their outcomes together and take back
the rows of a lost batch. Same conventions as ``test_store_contract``.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from tests.integration.test_store_contract import (
    NOW,
    STALE_BEFORE,
    WORKER,
    _cancelled,
    _dispatched,
    _fields,
    _outcome,
    _put,
    _rows,
    _running,
    _superseded,
    contract_bridge,
)
from worker_bridge.bridge import BridgeApp
from worker_bridge.job import Job
from worker_bridge.outcome import FollowUpReason
from worker_bridge.store import LostAttempt, Recovered, WrittenOutcome
from worker_bridge.store.schema import BATCH_STOPPED, PROCESS_LOST

__all__ = ["contract_bridge"]  # the fixture, parametrized over both databases


def _claimed(job: Job, *, at: datetime = NOW) -> Job:
    return dataclasses.replace(
        job, started=at, heartbeat=at, worker=WORKER, attempts=job.attempts + 1, updated_at=at
    )


def test_share_token_gives_dispatched_rows_one_token(contract_bridge: BridgeApp) -> None:
    rows = [_put(contract_bridge, user_id=user, **_dispatched(f"t-{user}")) for user in (1, 2, 3)]
    with contract_bridge.engine.begin() as connection:
        contract_bridge.store.share_token(connection, [rows[0].id, rows[2].id], "t-batch")
    assert _fields(_rows(contract_bridge)) == _fields(
        [
            dataclasses.replace(rows[0], task_id="t-batch"),
            rows[1],
            dataclasses.replace(rows[2], task_id="t-batch"),
        ]
    )


def test_claim_jobs_claims_each_row_that_allows_it(contract_bridge: BridgeApp) -> None:
    mine = [_put(contract_bridge, user_id=user, **_dispatched("t-batch")) for user in (1, 2)]
    running = _put(contract_bridge, user_id=3, **_running("t-batch"))
    cancelled = _put(contract_bridge, user_id=4, **_cancelled())
    outdated = _put(contract_bridge, user_id=5, **_dispatched("t-newer"))
    asked = [job.id for job in (*mine, running, cancelled, outdated)] + [10**9]
    store = contract_bridge.store
    with contract_bridge.autocommit.begin() as connection:
        claimed = store.claim_jobs(connection, asked, "t-batch", worker=WORKER, now=NOW)
    assert _fields(claimed) == _fields([_claimed(job) for job in mine])
    assert _fields(_rows(contract_bridge)) == _fields([*claimed, running, cancelled, outdated])
    with contract_bridge.autocommit.begin() as connection:
        assert store.claim_jobs(connection, asked, "t-batch", worker=WORKER, now=NOW) == []


def test_still_held_names_the_unfinished_rows_carrying_the_token(
    contract_bridge: BridgeApp,
) -> None:
    held = _put(contract_bridge, user_id=1, **_running("t-batch"))
    unstarted = _put(contract_bridge, user_id=2, **_dispatched("t-batch"))
    cancelled = _put(contract_bridge, user_id=3, **{**_cancelled(), "task_id": "t-batch"})
    recovered = _put(contract_bridge, user_id=4)
    other = _put(contract_bridge, user_id=5, **_running("t-other"))
    ids = [job.id for job in (held, unstarted, cancelled, recovered, other)]
    with contract_bridge.engine.connect() as connection:
        assert contract_bridge.store.still_held(connection, ids, "t-batch") == {
            held.id,
            unstarted.id,
        }


def test_refresh_heartbeats_covers_every_row_of_a_batch(contract_bridge: BridgeApp) -> None:
    rows = [_put(contract_bridge, user_id=user, **_running("t-batch")) for user in (1, 2)]
    with contract_bridge.autocommit.begin() as connection:
        alive = contract_bridge.store.refresh_heartbeats(
            connection, [(job.id, "t-batch") for job in rows], now=NOW
        )
    assert alive == {job.id for job in rows}
    assert [job.heartbeat for job in _rows(contract_bridge)] == [NOW, NOW]


def test_write_outcomes_writes_each_rows_outcome_and_follow_up(
    contract_bridge: BridgeApp,
) -> None:
    plain = _put(contract_bridge, user_id=1, remove_delay=90_000, **_running("t-batch"))
    nothing = _put(contract_bridge, user_id=2, **_running("t-batch"))
    retried = _put(
        contract_bridge,
        user_id=3,
        auto_reschedule_on_failure=True,
        auto_reschedule_on_failure_delay=30_000,
        data={"n": 1},
        **_running("t-batch"),
    )
    cron = _put(
        contract_bridge,
        user_id=4,
        due=datetime(2030, 3, 1, 12, 0, tzinfo=UTC),
        cron_schedule="*/5 * * * *",
        **_running("t-batch"),
    )
    stale_sibling = _put(
        contract_bridge,
        user_id=4,
        **_running("t-old", started=STALE_BEFORE - timedelta(seconds=1)),
    )
    cancelled = _put(contract_bridge, user_id=5, **_cancelled())
    outcomes = [
        (plain, _outcome(plain, returned={"answer": 42})),
        (nothing, _outcome(nothing, returned=None)),
        (retried, _outcome(retried, error=RuntimeError("boom"))),
        (cron, _outcome(cron, returned=[1, 2])),
        (cancelled, _outcome(cancelled, returned={"late": True})),
    ]
    assert outcomes[2][1].follow_up_reason is FollowUpReason.RETRY
    assert outcomes[3][1].follow_up_reason is FollowUpReason.NEXT_RUN
    with contract_bridge.engine.begin() as connection:
        written = contract_bridge.store.write_outcomes(
            connection, "t-batch", outcomes, now=NOW, stale_before=STALE_BEFORE
        )
    assert [item.written for item in written] == [True, True, True, True, False]
    assert [item.follow_up is None for item in written] == [True, True, False, False, True]
    retry, next_run = written[2].follow_up, written[3].follow_up
    assert retry is not None and next_run is not None

    def ended(job: Job, outcome_index: int) -> Job:
        outcome = outcomes[outcome_index][1]
        return dataclasses.replace(
            job,
            finished=NOW,
            success=outcome.success,
            result=outcome.result,
            remove_at=outcome.remove_at,
            heartbeat=None,
            updated_at=NOW,
        )

    def follow_up(job: Job, new: Job, due: datetime) -> Job:
        return Job(
            id=new.id,
            type=job.type,
            user_id=job.user_id,
            data=job.data,
            due=due,
            cron_schedule=job.cron_schedule,
            auto_reschedule_on_failure=job.auto_reschedule_on_failure,
            auto_reschedule_on_failure_delay=job.auto_reschedule_on_failure_delay,
            remove_delay=job.remove_delay,
            rescheduled_from_job=job.id,
            created_at=NOW,
            updated_at=NOW,
        )

    expected = [
        ended(plain, 0),
        ended(nothing, 1),
        ended(retried, 2),
        ended(cron, 3),
        _superseded(stale_sibling, next_run.id),
        cancelled,
        *sorted(
            [
                follow_up(retried, retry, NOW + timedelta(seconds=30)),
                follow_up(cron, next_run, datetime(2030, 3, 1, 12, 5, tzinfo=UTC)),
            ],
            key=lambda job: job.id,
        ),
    ]
    assert _fields(_rows(contract_bridge)) == _fields(expected)
    # A JSON null result stays a JSON null, as write_outcome stores it.
    assert _rows(contract_bridge)[1].result is None and _rows(contract_bridge)[1].success
    with contract_bridge.engine.begin() as connection:
        again = contract_bridge.store.write_outcomes(
            connection, "t-batch", outcomes, now=NOW, stale_before=STALE_BEFORE
        )
    assert again == [WrittenOutcome(False)] * 5
    assert _fields(_rows(contract_bridge)) == _fields(expected)


def test_write_outcomes_of_nothing_writes_nothing(contract_bridge: BridgeApp) -> None:
    row = _put(contract_bridge, **_running("t-batch"))
    with contract_bridge.engine.begin() as connection:
        assert (
            contract_bridge.store.write_outcomes(
                connection, "t-batch", [], now=NOW, stale_before=STALE_BEFORE
            )
            == []
        )
    assert _rows(contract_bridge) == [row]


def test_recover_lost_jobs_takes_back_every_started_row_of_a_lost_batch(
    contract_bridge: BridgeApp,
) -> None:
    fresh = NOW - timedelta(seconds=2)
    running = [
        _put(contract_bridge, user_id=user, **_running("t-batch", started=fresh, heartbeat=fresh))
        for user in (1, 2)
    ]
    # The pair of this one has an unstarted pending job: it is cancelled instead.
    crowded = _put(
        contract_bridge, user_id=3, **_running("t-batch", started=fresh, heartbeat=fresh)
    )
    waiting = _put(contract_bridge, user_id=3)
    done = _put(contract_bridge, user_id=4, **{**_cancelled(), "task_id": "t-batch"})
    other = _put(contract_bridge, user_id=5, **_running("t-other", started=fresh, heartbeat=fresh))
    lost = LostAttempt([*(job.id for job in (*running, crowded, done, other))], "t-batch")
    with contract_bridge.engine.begin() as connection:
        recovered = contract_bridge.store.recover_lost_jobs(
            connection,
            now=NOW,
            stale_before=STALE_BEFORE,
            heartbeat_before=NOW - timedelta(minutes=1),
            redispatch_before=None,
            lost_attempt=lost,
        )
    assert sorted(recovered, key=lambda item: item.job_id) == [
        Recovered(running[0].id, "echo", 1, PROCESS_LOST, None),
        Recovered(running[1].id, "echo", 2, PROCESS_LOST, None),
        Recovered(crowded.id, "echo", 3, PROCESS_LOST, waiting.id),
    ]
    reset = [
        dataclasses.replace(
            job,
            started=None,
            dispatched_at=None,
            task_id=None,
            worker=None,
            heartbeat=None,
            recoveries=1,
            updated_at=NOW,
        )
        for job in running
    ]
    assert _fields(_rows(contract_bridge)) == _fields(
        [
            *reset,
            dataclasses.replace(
                crowded,
                finished=NOW,
                success=False,
                task_id=None,
                heartbeat=None,
                recoveries=1,
                updated_at=NOW,
                result={
                    "error": "Cancelled: its worker was lost and job "
                    f"{waiting.id} of the same type and user is already pending.",
                    "cancelled": True,
                    "cancelled_by": waiting.id,
                },
            ),
            waiting,
            done,
            other,
        ]
    )


def test_a_lost_attempt_names_its_reason(contract_bridge: BridgeApp) -> None:
    row = _put(contract_bridge, **_running("t-batch", started=NOW, heartbeat=NOW))
    with contract_bridge.engine.begin() as connection:
        recovered = contract_bridge.store.recover_lost_jobs(
            connection,
            now=NOW,
            stale_before=STALE_BEFORE,
            heartbeat_before=NOW - timedelta(minutes=1),
            redispatch_before=None,
            lost_attempt=LostAttempt([row.id], "t-batch", BATCH_STOPPED),
        )
    assert recovered == [Recovered(row.id, "echo", 1, BATCH_STOPPED, None)]
