"""Records each execution (row id, process, start and end) so tests can check overlap.

data: {"sleep": seconds to sleep, "fail": true to raise after sleeping}
"""

import json
import os
import time
from typing import Any

from worker_bridge.params import JobParams


def run(params: JobParams) -> dict[str, Any]:
    start = time.time()
    time.sleep(float(params.job.data.get("sleep", 0)))
    end = time.time()
    record_dir = os.environ.get("WORKER_BRIDGE_TEST_RECORD_DIR")
    if record_dir:
        line = (
            json.dumps({"job_id": params.job.id, "pid": os.getpid(), "start": start, "end": end})
            + "\n"
        )
        fd = os.open(
            os.path.join(record_dir, "executions.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT
        )
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    if params.job.data.get("fail"):
        raise RuntimeError("failing on purpose")
    return {"pid": os.getpid(), "slept": end - start}
