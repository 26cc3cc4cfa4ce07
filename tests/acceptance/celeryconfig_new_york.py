"""The end-to-end config, with cron expressions read on New York's wall clock."""

from tests.acceptance.celeryconfig_test import *  # noqa: F403

timezone = "America/New_York"
