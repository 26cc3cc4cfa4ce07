"""What the store's writes report back: a recovered row, a written outcome."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from worker_bridge.job import Job
from worker_bridge.store.schema import PROCESS_LOST


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


@dataclass(frozen=True, slots=True)
class LostAttempt:
    """An attempt its worker reported lost, for :meth:`Store.recover_lost_jobs`.

    A batch's rows share their message's token, so one attempt may hold several rows.
    """

    #: The rows the attempt holds (one for a lone job).
    job_ids: Sequence[int]
    #: The attempt token: only rows still carrying it are taken back.
    token: str
    #: Why the attempt is lost, recorded as the ``Recovered.reason``.
    reason: str = PROCESS_LOST
