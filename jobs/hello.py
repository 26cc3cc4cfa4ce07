"""Example one-off job: greets, and returns what it did."""

from __future__ import annotations

from typing import Any

from worker_bridge.params import JobParams


def run(params: JobParams) -> dict[str, Any]:
    name = params.job.data.get("name", "world")
    params.log.info("hello, %s", name)
    return {"greeted": name, "user_id": params.job.user_id}
