"""The no-op of ``bench.jobs.noop`` in batched mode: up to 100 due rows per message (item 2b)."""

from bench.jobs.noop import run

BATCH_SIZE = 100

__all__ = ["BATCH_SIZE", "run"]
