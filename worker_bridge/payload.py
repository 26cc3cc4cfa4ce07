"""What may be stored as ``data`` or ``result``: strict JSON that round-trips.

PostgreSQL's JSONB refuses NaN and Infinity, the NUL character and lone
surrogates; Python's json module would silently turn tuples into lists and
int keys into strings. Checking up front turns each of these into a clear
error instead of a failed transaction or data that comes back changed.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from typing import Any

#: JSON as PostgreSQL accepts it: NaN and Infinity are not JSON, and compact
#: separators keep large payloads smaller on the wire.
json_dumps = functools.partial(json.dumps, allow_nan=False, separators=(",", ":"))

_INT_DIGITS = sys.get_int_max_str_digits() or 4300
_INT_LIMIT = 10**_INT_DIGITS
#: json writes floats from 1e16 up in exponent form without a decimal point,
#: which JSONB stores as an integer: they would come back as ints.
_FLOAT_AS_INT = 1e16

#: Deeper documents than this are refused: PostgreSQL and Python's json both
#: recurse per level, and nothing a job needs is nested this deep.
MAX_DEPTH = 200


def json_problem(value: Any) -> str | None:
    """Describe why ``value`` is not storable JSON, or None if it is."""
    stack: list[tuple[Any, str, int]] = [(value, "$", 0)]
    while stack:
        item, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels at {where}"
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, int):
            # Python refuses to print ints this long (sys.get_int_max_str_digits).
            if abs(item) >= _INT_LIMIT:
                return f"int at {where} has more than {_INT_DIGITS} digits"
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                return f"{item!r} at {where} is not valid JSON (NaN and Infinity are refused)"
            if abs(item) >= _FLOAT_AS_INT:
                return (
                    f"float {item!r} at {where} would come back as an int "
                    "(PostgreSQL keeps 1e16 and above without a decimal point)"
                )
        elif isinstance(item, str):
            problem = _string_problem(item)
            if problem:
                return f"string at {where} {problem}"
        elif type(item) is dict:
            for key, child in item.items():
                if not isinstance(key, str):
                    return f"key {key!r} at {where} is not a str (JSON object keys are strings)"
                problem = _string_problem(key)
                if problem:
                    return f"key at {where} {problem}"
                stack.append((child, f"{where}.{key}"[:200], depth + 1))
        elif type(item) is list:
            stack.extend((child, f"{where}[{i}]"[:200], depth + 1) for i, child in enumerate(item))
        else:
            return (
                f"{type(item).__name__} at {where} is not JSON "
                "(use dict, list, str, int, float, bool or None)"
            )
    return None


def _string_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character, which PostgreSQL cannot store"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate, which is not valid Unicode"
    return None


def serialized_size(value: Any) -> int:
    """Bytes ``value`` takes as compact JSON (call after :func:`json_problem`)."""
    return len(json_dumps(value, ensure_ascii=False).encode("utf-8"))
