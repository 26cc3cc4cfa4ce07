"""Raises :class:`SoftLimitHit`, standing in for Celery's SoftTimeLimitExceeded.

A test passes ``soft_timeouts=(SoftLimitHit,)`` to its Attempt, as the task
wrapper passes Celery's exception, to take the soft time limit's path without
a time limit or a Celery worker.
"""

from __future__ import annotations

from worker_bridge.params import JobParams


class SoftLimitHit(Exception):
    """What the soft time limit raises inside run() in these tests."""


def run(params: JobParams) -> None:
    raise SoftLimitHit("the soft time limit was hit")
