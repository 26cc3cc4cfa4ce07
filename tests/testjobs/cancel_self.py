"""Cancels its own row from within run(), as a user would while it runs, then ends.

data: {"at": ISO time of the cancellation, "reason": its reason, "fail": true to
raise after cancelling rather than return}
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from worker_bridge.params import JobParams


def run(params: JobParams) -> dict[str, Any]:
    data = params.job.data
    app = params.app
    with app.engine.begin() as connection:
        cancelled = app.store.cancel_job(
            connection, params.job.id, now=datetime.fromisoformat(data["at"]),
            reason=data["reason"],
        )  # fmt: skip
    if data.get("fail"):
        raise RuntimeError(f"failing after cancelling (cancelled: {cancelled})")
    return {"cancelled": cancelled}
