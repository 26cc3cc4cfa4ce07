"""A second type, to show that scheduling one type leaves the other alone."""

from worker_bridge.params import JobParams


def run(params: JobParams) -> None:
    return None
