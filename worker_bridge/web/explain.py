"""Why a pending job has not run yet, and a job's timeline: pure functions of a row and now."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from worker_bridge.job import Job, JobState


@dataclass(frozen=True, slots=True)
class Step:
    """One moment of a job's life, and how long after the one before it came."""

    name: str
    at: datetime | None
    #: Seconds since the previous step that happened (None for the first, or a step not yet).
    after: float | None


def timeline(job: Job) -> list[Step]:
    """Due, dispatched, started, heartbeat, finished, each with its lag behind the previous."""
    moments = [
        ("due", job.due),
        ("dispatched", job.dispatched_at),
        ("started", job.started),
        ("last heartbeat", job.heartbeat),
        ("finished", job.finished),
    ]
    steps = []
    previous: datetime | None = None
    for name, at in moments:
        after = None if at is None or previous is None else (at - previous).total_seconds()
        steps.append(Step(name, at, after))
        if at is not None:
            previous = at
    return steps


def why_not_run(
    job: Job, *, now: datetime, known_types: frozenset[str], in_flight: int, max_in_flight: int
) -> str | None:
    """Why a pending or dispatched job has not started yet; None for any other state."""
    state = job.state
    if state is JobState.DISPATCHED:
        assert job.dispatched_at is not None
        waited = (now - job.dispatched_at).total_seconds()
        return (
            f"dispatched {waited:.1f} s ago: its message waits in the broker for a worker "
            "(is a worker consuming its queue?)"
        )
    if state is not JobState.PENDING:
        return None
    if job.type not in known_types:
        return f"no job module for its type {job.type!r}: the dispatcher will fail it unsent"
    if job.due > now:
        return f"not due yet: due in {(job.due - now).total_seconds():.1f} s"
    if in_flight >= max_in_flight:
        return (
            f"waiting for the in-flight window: {in_flight} jobs are in the broker, "
            f"worker_bridge_max_in_flight is {max_in_flight}"
        )
    late = (now - job.due).total_seconds()
    return f"due {late:.1f} s ago: the dispatcher sends it on its next pass (is one running?)"
