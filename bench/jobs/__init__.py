"""The job types the benchmark's workers serve (``WORKER_BRIDGE_JOBS=bench.jobs``)."""
