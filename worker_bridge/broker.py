"""What waits in the broker: the job queues and how many messages they hold.

The dispatcher reads it to tell a lost message from one still queued; the
console shows it beside ``worker_bridge_max_in_flight``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from worker_bridge.bridge import BridgeApp
from worker_bridge.routing import job_options

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)

#: Seconds to wait for the broker before saying it cannot tell.
CONNECT_TIMEOUT = 3.0


def job_queues(bridge: BridgeApp, celery: Celery) -> set[str]:
    """Every queue a job type's messages may go to: the default one and the types' own."""
    registry = bridge.jobs
    conf = celery.conf
    queues = {conf.task_default_queue, *(q.name for q in conf.task_queues or ())}
    for job_type in registry.known_types():
        queue = job_options(registry, job_type).queue
        if queue is not None:
            queues.add(queue)
    return queues


def queued_messages(celery: Celery, names: set[str]) -> int | None:
    """Messages waiting in the queues ``names``, or None if the broker cannot say."""
    try:
        with celery.connection_for_read() as connection:
            # One quick retry, bounded: a page or a dispatcher pass must not
            # hang on a broker that is down (kombu's default is to retry forever).
            connection.ensure_connection(
                max_retries=1, interval_start=0.1, interval_step=0.1, timeout=CONNECT_TIMEOUT
            )
            channel = connection.default_channel
            total = 0
            for name in sorted(names):
                try:
                    total += channel.queue_declare(queue=name, passive=True).message_count
                except connection.channel_errors:
                    # The queue does not exist yet: nothing waits in it.
                    channel = connection.channel()
            return total
    except Exception as exc:
        logger.warning("cannot count the broker's queued messages (%s)", exc)
        return None
