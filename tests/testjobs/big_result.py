"""Returns a result of data["bytes"] bytes of JSON (default 2 MiB: over the 1 MiB limit)."""

from __future__ import annotations

from typing import Any

from worker_bridge.params import JobParams


def run(params: JobParams) -> dict[str, Any]:
    size = int(params.job.data.get("bytes", 2 * 1024 * 1024))
    # {"blob":"..."} is 11 bytes of JSON around the string.
    return {"blob": "r" * max(0, size - 11)}
