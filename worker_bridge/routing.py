"""Routing: which due rows travel together, and where their messages go. Pure decisions.

The dispatcher claims due rows; these functions decide, from each job
module's options (``loader.JobOptions``), which rows may go now (a type's
``MAX_CONCURRENCY``), which share a message (``BATCH_SIZE``), and the
queue, priority and time limits of each message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from worker_bridge.errors import JobModuleError
from worker_bridge.job import Job
from worker_bridge.loader import JobOptions, JobRegistry


def group_into_messages(jobs: Sequence[Job], batch_size: Callable[[str], int]) -> list[list[Job]]:
    """Which rows travel together: one list per message, in the order of ``jobs``.

    A type whose ``batch_size`` is K > 1 has its n rows split into
    ceil(n / K) messages of nearly equal size (so that they spread over the
    workers), the first message where its first row stood; every other row,
    and a batched type's lone row, goes alone, so a single due job's latency
    is what it would be without batching.
    """
    by_type: dict[str, list[Job]] = {}
    for job in jobs:
        by_type.setdefault(job.type, []).append(job)
    chunks: dict[str, list[list[Job]]] = {}
    for job_type, rows in by_type.items():
        size = batch_size(job_type)
        if size <= 1 or len(rows) == 1:
            continue
        count = -(-len(rows) // size)
        base, extra = divmod(len(rows), count)
        start = 0
        chunks[job_type] = []
        for number in range(count):
            end = start + base + (1 if number < extra else 0)
            chunks[job_type].append(rows[start:end])
            start = end
    messages: list[list[Job]] = []
    for job in jobs:
        batched = chunks.get(job.type)
        if batched is None:
            messages.append([job])
        elif batched and batched[0][0] is job:
            messages.append(batched.pop(0))
    return messages


def job_options(registry: JobRegistry, job_type: str) -> JobOptions:
    """The options of ``job_type``'s module; the defaults if it cannot be loaded (its
    rows are then sent as usual, and the worker records the module's error on each)."""
    try:
        return registry.options(job_type)
    except JobModuleError:
        return JobOptions()


def within_caps(
    jobs: Sequence[Job], caps: dict[str, int], live: dict[str, int]
) -> tuple[list[Job], list[Job]]:
    """Split claimed rows into those their type's cap lets go now, and the rest.

    ``caps``: the types' ``MAX_CONCURRENCY``; ``live``: their rows already
    dispatched or running. Rows keep their order (due first).
    """
    room = {job_type: cap - live.get(job_type, 0) for job_type, cap in caps.items()}
    allowed: list[Job] = []
    over: list[Job] = []
    for job in jobs:
        if job.type in room:
            if room[job.type] <= 0:
                over.append(job)
                continue
            room[job.type] -= 1
        allowed.append(job)
    return allowed, over


def send_options(options: JobOptions) -> dict[str, Any]:
    """``send_task``'s options for a type's message: its queue, priority and time limits.

    A limit the module leaves unset is sent as None, so that the worker's own
    (``task_time_limit``, ``task_soft_time_limit``) apply, not the dispatcher's.
    """
    sent: dict[str, Any] = {
        "time_limit": options.time_limit,
        "soft_time_limit": options.soft_time_limit,
    }
    if options.queue is not None:
        sent["queue"] = options.queue
    if options.priority is not None:
        sent["priority"] = options.priority
    return sent
