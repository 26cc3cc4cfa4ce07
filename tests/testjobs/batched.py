"""A batched job type: the dispatcher sends up to ``BATCH_SIZE`` of its due rows per message.

data: {"fail": true} raises; {"cancel": id} cancels row ``id`` from within run(),
as a user would while the batch runs; {"soft_limit": true} raises
:class:`~tests.testjobs.soft_limit.SoftLimitHit`; {"sleep": s} sleeps first;
{"crash": true} raises :class:`Crash`, a BaseException that stands in for the
process dying mid-batch. Each run is recorded like ``record``'s, for the
fault suite's overlap check.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from typing import Any

from tests.testjobs.soft_limit import SoftLimitHit
from worker_bridge.params import JobParams

BATCH_SIZE = 50


class Crash(BaseException):
    """Stands in for the worker process dying in the middle of a batch."""


def run(params: JobParams) -> dict[str, Any]:
    data = params.job.data
    start = time.time()
    time.sleep(float(data.get("sleep", 0)))
    if "cancel" in data:
        with params.app.engine.begin() as connection:
            params.app.store.cancel_job(
                connection, int(data["cancel"]), now=datetime.now(UTC), reason="by a neighbour"
            )
    end = time.time()
    record_dir = os.environ.get("WORKER_BRIDGE_TEST_RECORD_DIR")
    if record_dir:
        line = json.dumps({"job_id": params.job.id, "pid": os.getpid(), "start": start, "end": end})
        fd = os.open(
            os.path.join(record_dir, "executions.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT
        )
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
    if data.get("crash"):
        raise Crash("the process dies here")
    if data.get("soft_limit"):
        raise SoftLimitHit("the soft time limit was hit")
    if data.get("fail"):
        raise RuntimeError("failing on purpose")
    return {"job_id": params.job.id, "pid": os.getpid()}
