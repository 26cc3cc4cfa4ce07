"""Job modules used by the test suite (WORKER_BRIDGE_JOBS=tests.testjobs)."""
