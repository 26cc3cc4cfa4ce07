"""Does nothing: what is measured is the bridge around it (claim, finish, dispatch)."""

from __future__ import annotations

from worker_bridge.params import JobParams


def run(params: JobParams) -> None:
    return None
