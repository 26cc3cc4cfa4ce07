"""Writes megabytes to stdout, stderr and its logger, then returns a small dict.

data: {"megabytes": how much to write to each of the three (default 5)}
"""

from __future__ import annotations

import sys
from typing import Any

from worker_bridge.params import JobParams

LINE = "chatty " + "x" * 1016 + "\n"  # 1 KiB


def run(params: JobParams) -> dict[str, Any]:
    megabytes = int(params.job.data.get("megabytes", 5))
    lines = megabytes * 1024
    for _ in range(lines):
        sys.stdout.write(LINE)
    sys.stdout.flush()
    print(LINE * 1024, file=sys.stderr)  # one 1 MiB write as well
    for _ in range(lines // 64):
        params.log.info("%s", LINE * 64)  # 64 KiB records
    return {"chatted_mib": megabytes, "lines": lines}
