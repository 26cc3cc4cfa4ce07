"""Sleeps data["seconds"]; with data["ignore_soft_limit"] it sleeps through the soft limit."""

import time

from celery.exceptions import SoftTimeLimitExceeded

from worker_bridge.params import JobParams


def run(params: JobParams) -> str:
    seconds = float(params.job.data.get("seconds", 1))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(max(0.0, deadline - time.monotonic()))
        except SoftTimeLimitExceeded:
            if not params.job.data.get("ignore_soft_limit"):
                raise
    return "slept"
