"""Returns a value that cannot be stored as JSON."""

from worker_bridge.params import JobParams


def run(params: JobParams) -> object:
    return {"when": object()}
