"""The end-to-end config, telling the bridge that RabbitMQ's consumer_timeout is 10 s.

task_time_limit (20 s, from celeryconfig_test) outlasts it: a worker warns at start.
"""

from tests.acceptance.celeryconfig_test import *  # noqa: F403

worker_bridge_broker_consumer_timeout = 10
