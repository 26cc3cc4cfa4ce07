"""The fault suite's job in batched mode: ``work``, up to 20 due rows per message."""

from tests.testjobs.work import run

BATCH_SIZE = 20

__all__ = ["BATCH_SIZE", "run"]
