"""The end-to-end config, but acking before the run: refused at app creation."""

from tests.acceptance.celeryconfig_test import *  # noqa: F403

task_acks_late = False
