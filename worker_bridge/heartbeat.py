"""The heartbeat a worker process writes for the jobs it is running.

One daemon thread per process refreshes, in one UPDATE, the heartbeat of
every attempt the process runs. A process that dies or stalls stops beating,
and the dispatcher runs its jobs again once ``heartbeat_timeout`` has passed.
The thread is started on first use in each process, so a forked pool child
gets its own rather than a dead copy of its parent's.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

logger = logging.getLogger(__name__)

#: Writes heartbeats for (row id, token) pairs; returns the ids still current.
HeartbeatWriter = Callable[[Sequence[tuple[int, str]], datetime], set[int]]


class Heartbeat:
    """Keeps the heartbeat of this process's running attempts fresh."""

    def __init__(self, write: HeartbeatWriter, interval: float) -> None:
        self._write = write
        self._interval = interval
        self._attempts: dict[int, str] = {}
        #: Attempts whose outcome is being written: a refusal of their heartbeat is
        #: the finish landing first, not a lost attempt.
        self._ending: set[int] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None

    def add(self, job_id: int, token: str) -> None:
        """Start beating for attempt ``token`` of row ``job_id``."""
        with self._lock:
            self._attempts[job_id] = token
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._loop, name="worker-bridge-heartbeat", daemon=True
                )
                self._thread.start()

    def ending(self, job_id: int) -> None:
        """Row ``job_id``'s outcome is being written: keep beating, but its finish may land
        before the next beat, so a refused heartbeat is not reported as a lost attempt."""
        with self._lock:
            self._ending.add(job_id)

    def remove(self, job_id: int) -> None:
        """Stop beating for row ``job_id``."""
        with self._lock:
            self._attempts.pop(job_id, None)
            self._ending.discard(job_id)

    def is_beating(self, job_id: int, token: str) -> bool:
        """Whether attempt ``token`` of row ``job_id`` is kept alive (not refused by the table)."""
        return self._attempts.get(job_id) == token

    def running(self) -> list[tuple[int, str]]:
        """The attempts being kept alive."""
        with self._lock:
            return list(self._attempts.items())

    def beat_once(self, now: datetime | None = None) -> set[int]:
        """Write one round of heartbeats; return the ids whose attempt was lost."""
        with self._lock:
            # Not the attempts being finished: their finish writes the row, and two
            # multi-row writes of one batch's rows could lock them in opposite orders.
            attempts = [(i, t) for i, t in self._attempts.items() if i not in self._ending]
        if not attempts:
            return set()
        alive = self._write(attempts, now or datetime.now(UTC))
        with self._lock:
            # An attempt that ended while the write was on its way was removed
            # meanwhile: its row is finished, not lost.
            lost = {
                job_id
                for job_id, token in attempts
                if job_id not in alive
                and self._attempts.get(job_id) == token
                and job_id not in self._ending
            }
            for job_id in lost:
                self._attempts.pop(job_id, None)
        for job_id in lost:
            logger.warning(
                "job %s: heartbeat refused, the attempt is no longer current (cancelled, or "
                "recovered and sent again); its result will be refused too",
                job_id,
                extra={"job_id": job_id},
            )
        return lost

    def _loop(self) -> None:
        while not self._wake.wait(self._interval):
            try:
                self.beat_once()
            except Exception:  # a database outage must not kill the thread
                logger.exception("writing heartbeats failed; retrying in %ss", self._interval)
