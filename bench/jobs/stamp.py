"""Records when ``run()`` started, for the latency and cron measurements.

The stamp is taken on the first line, before anything else, and stored in the
row's ``result``; the benchmark compares it with when the job was scheduled
(latency) or with the row's ``due`` (cron precision). Same machine, same clock.
"""

from __future__ import annotations

import time
from typing import Any

from worker_bridge.params import JobParams


def run(params: JobParams) -> dict[str, Any]:
    started = time.time()
    return {"t": started}
