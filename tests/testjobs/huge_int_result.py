"""Returns an int of 5000 digits: valid JSON, but over Python's int-to-str limit (4300)."""

from __future__ import annotations

from typing import Any

from worker_bridge.params import JobParams


def run(params: JobParams) -> dict[str, Any]:
    return {"n": 10**5000}
