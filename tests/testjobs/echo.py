"""Returns what it was given, and what it saw of its own row."""

from typing import Any

from worker_bridge.params import JobParams


def run(params: JobParams) -> dict[str, Any]:
    job = params.job
    return {"data": job.data, "user_id": job.user_id, "job_id": job.id, "type": job.type}
