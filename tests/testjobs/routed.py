"""A job type with options of its own: its queue, priority and time limits.

data: {"sleep": seconds}; returns the worker process it ran in.
"""

import os
import time
from typing import Any

from worker_bridge.params import JobParams

QUEUE = "reports"
PRIORITY = 7
TIME_LIMIT = 4
SOFT_TIME_LIMIT = 1.5


def run(params: JobParams) -> dict[str, Any]:
    time.sleep(float(params.job.data.get("sleep", 0)))
    return {"pid": os.getpid()}
