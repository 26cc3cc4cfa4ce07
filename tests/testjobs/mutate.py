"""Changes its own value: mutates ``params.job.data`` in place (nested values too)
and tries to set attributes on ``params.job``.

Returns (or, with data["fail"], raises a RuntimeError whose message is) the JSON
of ``{"data": the data after the mutation, "refused": {attribute: the name of the
exception that refused it, or None}, "changed": [the attributes whose value changed]}``.
"""

from __future__ import annotations

import json
from typing import Any

from worker_bridge.params import JobParams

#: The attributes run() tries to set on its job value (fields, and one that is
#: not a field), and the values it tries.
ATTRIBUTES: dict[str, Any] = {
    "data": {"replaced": True},
    "user_id": 999,
    "task_id": "forged",
    "not_a_field": 1,
}


def run(params: JobParams) -> dict[str, Any]:
    data = params.job.data
    fail = bool(data.get("fail"))
    data["added"] = "by run()"
    data.pop("drop_me", None)
    data["nested"]["inner"]["value"] = "changed by run()"
    data["nested"]["list"].append("appended by run()")
    data["nested"]["list"][0]["k"] = "changed by run()"
    refused: dict[str, str | None] = {}
    changed: list[str] = []
    for name, value in ATTRIBUTES.items():
        before = getattr(params.job, name, None)
        try:
            setattr(params.job, name, value)
        except Exception as exc:
            refused[name] = type(exc).__name__
        else:
            refused[name] = None
        if getattr(params.job, name, None) != before:
            changed.append(name)
    seen = {"data": params.job.data, "refused": refused, "changed": changed}
    if fail:
        raise RuntimeError(json.dumps(seen, sort_keys=True))
    return seen
