"""Every statement that locks a (type, user_id) pair must pick the same lock."""

from __future__ import annotations

import re

from worker_bridge.store.postgresql import (
    _FINISH_WITH_FOLLOW_UP,
    _LOCK_PAIRS,
    _RECOVER_LOST,
    _SUPERSEDE_AND_INSERT,
    LOCK_PAIR,
)
from worker_bridge.store.schema import pair_lock_key

BUCKET = re.compile(r"\(hashtext\((\S+)\) # hashint4\((\S+)\)\) & :lock_mask")


def test_every_pair_lock_hashes_the_pair_the_same_way() -> None:
    statements = {
        "LOCK_PAIR": (LOCK_PAIR.text, (":type", ":user_id")),
        "schedule_job": (str(_SUPERSEDE_AND_INSERT), (":type", ":user_id")),
        "finish with follow-up": (str(_FINISH_WITH_FOLLOW_UP), (":type", ":user_id")),
        "schedule_jobs": (_LOCK_PAIRS.text, ("type", "user_id")),
        "recovery": (_RECOVER_LOST.text, ("w.type", "w.user_id")),
    }
    for name, (sql, arguments) in statements.items():
        assert BUCKET.findall(sql) == [arguments], name
        assert ":lock_class" in sql, name


def test_the_key_is_written_once() -> None:
    assert BUCKET.fullmatch(pair_lock_key(":type", ":user_id"))
