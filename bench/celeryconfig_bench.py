"""The project's Celery config with flow control lifted, for the dispatcher-alone run (item 7).

With no worker running nothing is ever started, so with the default
``worker_bridge_max_in_flight`` (5000) the dispatcher would stop after 5000
rows; item 7 measures how fast it moves rows, not the limit.
"""

from celeryconfig import *  # noqa: F403

worker_bridge_max_in_flight = 100_000_000
