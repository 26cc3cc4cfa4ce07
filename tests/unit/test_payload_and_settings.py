"""Strict JSON checks and settings validation."""

from __future__ import annotations

from datetime import timedelta

import pytest

from worker_bridge.errors import ConfigurationError
from worker_bridge.payload import MAX_DEPTH, json_problem
from worker_bridge.settings import Settings


@pytest.mark.parametrize(
    "value",
    [None, {}, {"a": [1, 2.5, "é", True, None, {"b": -0.0}]}, [1, "x"], "\U0001f600", 10**30],
)
def test_storable_json(value: object) -> None:
    assert json_problem(value) is None


def test_depth_limit() -> None:
    value: object = "leaf"
    for _ in range(MAX_DEPTH + 5):
        value = [value]
    problem = json_problem(value)
    assert problem is not None and "deeper than" in problem


def test_settings_from_conf_reads_seconds_and_env() -> None:
    settings = Settings.from_conf(
        {
            "worker_bridge_stale_after": 120,
            "timezone": "Europe/Paris",
            "worker_bridge_max_in_flight": 7,
        },
        {"WORKER_BRIDGE_DATABASE_URL": "sqlite:///x.db", "WORKER_BRIDGE_JOBS": "my_jobs"},
    )
    assert settings.stale_after == timedelta(minutes=2)
    assert settings.timezone == "Europe/Paris"
    assert settings.max_in_flight == 7
    assert settings.database_url == "sqlite:///x.db" and settings.jobs_package == "my_jobs"
    assert settings.heartbeat_timeout == timedelta(seconds=15)  # the default


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"worker_bridge_stale_after": -1}, "stale_after must be positive"),
        ({"worker_bridge_stale_after": "1h"}, "must be a number of seconds"),
        ({"worker_bridge_dispatch_batch_size": 0}, "dispatch_batch_size must be at least 1"),
        ({"worker_bridge_max_in_flight": 2.5}, "must be an int"),
        ({"timezone": "Mars/Olympus"}, "unknown timezone"),
        ({"worker_bridge_heartbeat_interval": 90}, "heartbeat_interval must be shorter"),
    ],
)
def test_bad_settings_are_named(conf: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings.from_conf(conf, {})


def test_celeryconfig_documents_every_default_with_its_value() -> None:
    """celeryconfig.py lists every default (commented out) with the value that applies:
    the defaults are declared once, in worker_bridge, and the documentation stays true."""
    import re
    from pathlib import Path

    from worker_bridge.celery_app import CELERY_DEFAULTS
    from worker_bridge.settings import conf_defaults

    text = (Path(__file__).resolve().parents[2] / "celeryconfig.py").read_text()
    documented = {
        # The file's own constant expressions (7 * 24 * 3600), evaluated with no builtins.
        key: eval(value, {"__builtins__": {}})
        for key, value in re.findall(r"^# (\w+) = (.+)$", text, flags=re.M)
    }
    expected = {**conf_defaults(), **CELERY_DEFAULTS}
    assert documented == expected
    # And the module itself sets nothing: a key it set would win over the bridge's default.
    assert not re.findall(r"^\w+ = ", text, flags=re.M)
