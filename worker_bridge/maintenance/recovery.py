"""Recovery: put back to pending the rows whose attempt was lost, and say why.

A row's attempt is presumed lost when its worker stopped beating
(``heartbeat_timeout``), when it started longer than ``stale_after`` ago, or
when it was sent and never started for ``redispatch_after`` while the broker's
queues are empty (its message was lost: an empty queue tells a lost message
from one waiting in a backlog). The attempt token is cleared with it, so the
lost attempt, should it come back, has every write refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.exc import IntegrityError

from worker_bridge.bridge import BridgeApp
from worker_bridge.metrics import PROCESS
from worker_bridge.store import LostAttempt, Recovered

logger = logging.getLogger(__name__)

#: Counts the messages waiting in the broker's job queues; None when it cannot say.
BacklogProbe = Callable[[], int | None]

#: A cut-off no row is older than: it switches a rule off.
_NEVER = datetime(1970, 1, 1, tzinfo=UTC)


def _no_backlog_probe() -> int | None:
    return None


class JobRecovery:
    """The recovery service of one bridge."""

    def __init__(self, bridge: BridgeApp, backlog: BacklogProbe = _no_backlog_probe) -> None:
        self.bridge = bridge
        self.backlog = backlog
        settings = bridge.settings
        shortest = min(settings.heartbeat_timeout, settings.redispatch_after).total_seconds()
        #: Seconds between two passes: often enough to notice a loss within a
        #: quarter of the shortest timeout, never more than every 0.2 s.
        self.interval = min(max(shortest / 4, 0.2), 15.0)

    def run_once(self, now: datetime) -> list[Recovered]:
        """One pass at ``now``: take back every row whose attempt is presumed lost."""
        settings = self.bridge.settings
        # Only once the queues are empty can an old unstarted row's message be
        # taken for lost; with a backlog it may still be waiting there.
        redispatch_before = now - settings.redispatch_after if self.backlog() == 0 else None
        try:
            with self.bridge.engine.begin() as connection:
                recovered = self.bridge.store.recover_lost_jobs(
                    connection,
                    now=now,
                    stale_before=now - settings.stale_after,
                    heartbeat_before=now - settings.heartbeat_timeout,
                    redispatch_before=redispatch_before,
                )
        except IntegrityError:
            # A scheduler inserted a pending job for the same pair between our
            # snapshot and our lock; that row is recovered on the next pass.
            logger.info("recovery raced with a scheduler; retrying on the next pass")
            return []
        _log(recovered)
        return recovered

    def recover_attempt(self, lost: LostAttempt, now: datetime) -> list[Recovered]:
        """Take back at once the rows of the running attempt ``lost``, reported lost.

        The worker's main process calls this when the pool process running the
        attempt died, and a batch for the rows it did not reach: the rows go
        back to pending (or are cancelled in favour of a pending job of their
        pair) and the dispatchers are woken to send them again, instead of
        waiting out ``heartbeat_timeout``. A row that no longer carries the
        attempt's token, or is finished, is left alone.
        """
        with self.bridge.engine.begin() as connection:
            recovered = self.bridge.store.recover_lost_jobs(
                connection,
                now=now,
                stale_before=_NEVER,
                heartbeat_before=_NEVER,
                redispatch_before=None,
                lost_attempt=lost,
            )
            if recovered:
                self.bridge.store.notify_dispatchers(connection)
        _log(recovered)
        return recovered


def _log(recovered: list[Recovered]) -> None:
    for item in recovered:
        PROCESS.recovered(item.reason)
        if item.cancelled_by is None:
            logger.warning(
                "job %s (%s, user %s) recovered, will run again: %s",
                item.job_id, item.type, item.user_id, item.reason,
                extra={"job_id": item.job_id, "reason": item.reason},
            )  # fmt: skip
        else:
            logger.warning(
                "job %s (%s, user %s) recovered (%s) and cancelled: job %s is already pending",
                item.job_id, item.type, item.user_id, item.reason, item.cancelled_by,
                extra={"job_id": item.job_id},
            )  # fmt: skip
