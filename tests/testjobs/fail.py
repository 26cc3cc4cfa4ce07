"""Always fails."""

from worker_bridge.params import JobParams


def run(params: JobParams) -> None:
    raise ValueError(params.job.data.get("message", "this job always fails"))
