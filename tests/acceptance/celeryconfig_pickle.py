"""The end-to-end config, but accepting pickled messages: refused at app creation."""

from tests.acceptance.celeryconfig_test import *  # noqa: F403

accept_content = ["json", "pickle"]
