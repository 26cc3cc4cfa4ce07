"""A job type of which at most two jobs are sent or running at once, over all workers.

data: {"sleep": seconds}.
"""

import time

from worker_bridge.params import JobParams

MAX_CONCURRENCY = 2


def run(params: JobParams) -> None:
    time.sleep(float(params.job.data.get("sleep", 0)))
