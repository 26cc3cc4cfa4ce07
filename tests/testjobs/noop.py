"""Does nothing: for throughput."""

from worker_bridge.params import JobParams


def run(params: JobParams) -> None:
    return None
