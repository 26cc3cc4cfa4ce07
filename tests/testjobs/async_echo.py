"""An async job."""

import asyncio
from typing import Any

from worker_bridge.params import JobParams


async def run(params: JobParams) -> dict[str, Any]:
    await asyncio.sleep(0.01)
    return {"async": True, "data": params.job.data}
