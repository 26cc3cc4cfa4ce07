"""The Celery app, configured from ``celeryconfig`` (or $CELERY_CONFIG_MODULE)."""

from __future__ import annotations

import os

from celery import Celery


def create_celery_app() -> Celery:
    """Build the Celery app worker_bridge runs on."""
    celery = Celery("worker_bridge")
    celery.config_from_object(os.environ.get("CELERY_CONFIG_MODULE", "celeryconfig"))
    return celery


app = create_celery_app()
