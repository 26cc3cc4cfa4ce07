"""Which rows travel together (the dispatcher's grouping) and a job module's BATCH_SIZE."""

from __future__ import annotations

import types
from datetime import UTC, datetime

import pytest

from worker_bridge.errors import JobModuleError
from worker_bridge.job import Job
from worker_bridge.loader import MAX_BATCH_SIZE, JobOptions, read_options
from worker_bridge.routing import group_into_messages

DUE = datetime(2030, 1, 1, tzinfo=UTC)
SIZES = {"batched": 4, "small": 2, "alone": 1}


def rows(spec: str) -> list[Job]:
    """'b b a b' -> rows of types batched, batched, alone, batched with ids 1, 2, 3, 4."""
    names = {"b": "batched", "s": "small", "a": "alone"}
    return [
        Job(id=number, type=names[kind], user_id=number, data={}, due=DUE, task_id=f"t{number}")
        for number, kind in enumerate(spec.split(), start=1)
    ]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("a a", [[1], [2]]),
        # A batched type's lone row goes alone: its latency is a lone job's.
        ("b", [[1]]),
        ("b a", [[1], [2]]),
        ("b b", [[1, 2]]),
        ("b a b b", [[1, 3, 4], [2]]),
        ("b b b b", [[1, 2, 3, 4]]),
        # Five rows over a size of four: two messages of nearly equal size.
        ("b b b b b", [[1, 2, 3], [4, 5]]),
        ("b b b b b b b b b", [[1, 2, 3], [4, 5, 6], [7, 8, 9]]),
        ("s b s s b", [[1, 3], [2, 5], [4]]),
    ],
)
def test_group_into_messages(spec: str, expected: list[list[int]]) -> None:
    jobs = rows(spec)
    messages = group_into_messages(jobs, SIZES.__getitem__)
    assert [[job.id for job in message] for message in messages] == expected
    # Every row travels exactly once.
    assert sorted(job.id for message in messages for job in message) == [j.id for j in jobs]


def test_group_into_messages_of_nothing() -> None:
    assert group_into_messages([], SIZES.__getitem__) == []


def module(**attributes: object) -> types.ModuleType:
    made = types.ModuleType("jobs.example")
    made.__dict__.update(attributes)
    return made


def test_read_options() -> None:
    assert read_options(module()) == JobOptions(batch_size=1)
    assert not read_options(module()).batched
    assert read_options(module(BATCH_SIZE=100)) == JobOptions(batch_size=100)
    assert read_options(module(BATCH_SIZE=100)).batched
    assert read_options(module(BATCH_SIZE=MAX_BATCH_SIZE)).batch_size == MAX_BATCH_SIZE


@pytest.mark.parametrize("bad", [0, -1, MAX_BATCH_SIZE + 1, 2.5, "10", True, None])
def test_read_options_names_a_bad_batch_size(bad: object) -> None:
    with pytest.raises(JobModuleError, match=r"jobs\.example: BATCH_SIZE must be an int from 1"):
        read_options(module(BATCH_SIZE=bad))
