"""The end-to-end config with time limits of a few seconds."""

from tests.acceptance.celeryconfig_test import *  # noqa: F403

task_soft_time_limit = 1
task_time_limit = 2
