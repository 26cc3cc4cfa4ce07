"""Example job that fails until its retries have been tried ``fail_times`` times.

Schedule it with ``auto_reschedule_on_failure`` to watch the lineage of retries
grow: each retry row's ``rescheduled_from_job`` points to the failed row.
"""

from __future__ import annotations

from typing import Any

from worker_bridge.params import JobParams


def run(params: JobParams) -> dict[str, Any]:
    fail_times = int(params.job.data.get("fail_times", 2))
    retries = _depth(params)
    if retries < fail_times:
        raise RuntimeError(
            f"flaky job failing on purpose (attempt {retries + 1} of {fail_times + 1})"
        )
    return {"succeeded_after_retries": retries}


def _depth(params: JobParams) -> int:
    """How many earlier rows this retry chain has (read through the lineage)."""
    depth = 0
    job_id = params.job.rescheduled_from_job
    with params.app.engine.connect() as connection:
        while job_id is not None and depth < 100:
            earlier = params.app.store.get_job(connection, job_id)
            if earlier is None:
                break
            depth += 1
            job_id = earlier.rescheduled_from_job
    return depth
