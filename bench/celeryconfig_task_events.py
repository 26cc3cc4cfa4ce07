"""The project's Celery config with worker task events always on (the previous default).

``python -m bench --only 2 --config bench.celeryconfig_task_events`` measures what they cost.
"""

from celeryconfig import *  # noqa: F403

worker_send_task_events = True
