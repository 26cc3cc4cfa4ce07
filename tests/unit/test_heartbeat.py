"""The heartbeat reports an attempt lost only when its row refused it while it still ran."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from worker_bridge.heartbeat import Heartbeat

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def test_an_attempt_the_row_no_longer_carries_is_reported_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    heartbeat = Heartbeat(lambda attempts, now: {1}, interval=60)
    heartbeat._attempts.update({1: "a", 2: "b"})  # registered without starting the thread
    assert heartbeat.beat_once(NOW) == {2}
    assert heartbeat.running() == [(1, "a")]
    assert "job 2: heartbeat refused" in caplog.text


def test_an_attempt_that_ended_during_the_write_is_not_reported_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    heartbeat: Heartbeat

    def write(attempts: Sequence[tuple[int, str]], now: datetime) -> set[int]:
        # The job finishes (and its row with it) while the heartbeat is on its way.
        heartbeat.remove(1)
        return set()

    heartbeat = Heartbeat(write, interval=60)
    heartbeat._attempts[1] = "a"
    assert heartbeat.beat_once(NOW) == set()
    assert "heartbeat refused" not in caplog.text


def test_a_new_attempt_of_the_row_is_not_dropped_for_the_old_ones_refusal() -> None:
    heartbeat: Heartbeat

    def write(attempts: Sequence[tuple[int, str]], now: datetime) -> set[int]:
        heartbeat._attempts[1] = "b"  # the row was recovered and this process claimed it again
        return set()

    heartbeat = Heartbeat(write, interval=60)
    heartbeat._attempts[1] = "a"
    assert heartbeat.beat_once(NOW) == set()
    assert heartbeat.running() == [(1, "b")]


def test_an_attempt_whose_finish_landed_before_its_removal_is_not_reported_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The finish commits (the row no longer takes heartbeats) and the beat's write
    # lands before the attempt leaves the heartbeat: the finish, not a lost attempt.
    heartbeat = Heartbeat(lambda attempts, now: set(), interval=60)
    heartbeat._attempts.update({1: "a", 2: "b"})
    heartbeat.ending(1)
    assert heartbeat.beat_once(NOW) == {2}
    assert heartbeat.is_beating(1, "a") and not heartbeat.is_beating(2, "b")
    assert "job 1: heartbeat refused" not in caplog.text
    heartbeat.remove(1)
    assert heartbeat.running() == []


def test_attempts_being_finished_are_left_out_of_the_heartbeats_write() -> None:
    written: list[list[tuple[int, str]]] = []

    def write(attempts: Sequence[tuple[int, str]], now: datetime) -> set[int]:
        written.append(list(attempts))
        return {job_id for job_id, _ in attempts}

    heartbeat = Heartbeat(write, interval=60)
    heartbeat._attempts.update({1: "a", 2: "a"})
    heartbeat.ending(1)
    heartbeat.beat_once(NOW)
    assert written == [[(2, "a")]]
