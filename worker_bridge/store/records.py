"""What the store's writes report back: a recovered row, a written outcome."""

from __future__ import annotations

from dataclasses import dataclass

from worker_bridge.job import Job


@dataclass(frozen=True, slots=True)
class Recovered:
    """A row taken back from an attempt presumed lost."""

    job_id: int
    type: str
    user_id: int
    #: Why the attempt was presumed lost (one of ``schema.LOST_MESSAGE``, ...).
    reason: str
    #: The pending job that superseded it, when it was cancelled instead of reset.
    cancelled_by: int | None


@dataclass(frozen=True, slots=True)
class WrittenOutcome:
    """What :meth:`Store.write_outcome` did."""

    #: False when the attempt was no longer the row's current one: nothing written.
    written: bool
    #: The follow-up row inserted with the result, if any.
    follow_up: Job | None = None
