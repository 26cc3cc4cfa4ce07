"""The fault suite's job: records when each execution starts and ends.

data: {"sleep": seconds, "fail_times": n}: the job fails while its retry
chain (rescheduled_from_job) is shorter than n, so a retried job ends in
success after n failures.
"""

import json
import os
import time
from typing import Any

from worker_bridge.params import JobParams
from worker_bridge.store import store_for


def _record(params: JobParams, phase: str) -> None:
    record_dir = os.environ.get("WORKER_BRIDGE_TEST_RECORD_DIR")
    if not record_dir:
        return
    line = json.dumps({"job_id": params.job.id, "token": params.job.task_id,
                       "pid": os.getpid(), "phase": phase, "t": time.time()}) + "\n"
    fd = os.open(os.path.join(record_dir, "work.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _retries(params: JobParams) -> int:
    """How many retries precede this row: its own reads ride out a database restart
    (the fault suite restarts PostgreSQL under it), so that it fails only on purpose."""

    def count() -> int:
        depth, parent = 0, params.job.rescheduled_from_job
        with params.app.engine.connect() as connection:
            while parent is not None and depth < 50:
                row = store_for(connection).get_job(connection, parent)
                if row is None or row.type != params.job.type or row.cron_schedule:
                    break
                depth, parent = depth + 1, row.rescheduled_from_job
        return depth

    return params.app.reconnecting("work: counting retries", count, 30)


def run(params: JobParams) -> dict[str, Any]:
    _record(params, "start")
    time.sleep(float(params.job.data.get("sleep", 0)))
    fail_times = int(params.job.data.get("fail_times", 0))
    if fail_times and _retries(params) < fail_times:
        _record(params, "end")
        raise RuntimeError("failing on purpose")
    _record(params, "end")
    return {"pid": os.getpid(), "job_id": params.job.id}
