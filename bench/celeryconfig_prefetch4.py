"""The project's Celery config with Celery's own prefetch multiplier (4) instead of 1.

``python -m bench --only 2 --config bench.celeryconfig_prefetch4`` measures what it changes.
"""

from celeryconfig import *  # noqa: F403

worker_prefetch_multiplier = 4
