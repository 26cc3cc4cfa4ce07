"""Every statement that locks a (type, user_id) pair must pick the same lock."""

from __future__ import annotations

import re

from worker_bridge.store._common import LOCK_PAIR
from worker_bridge.store.batch import _LOCK_PAIRS
from worker_bridge.store.dispatching import _RECOVER_LOST
from worker_bridge.store.scheduling import _SUPERSEDE_AND_INSERT

BUCKET = re.compile(r"\(hashtext\((\S+)\) # hashint4\((\S+)\)\) & :lock_mask")


def test_every_pair_lock_hashes_the_pair_the_same_way() -> None:
    statements = {
        "LOCK_PAIR": (LOCK_PAIR.text, (":type", ":user_id")),
        "schedule_job": (str(_SUPERSEDE_AND_INSERT), (":type", ":user_id")),
        "schedule_jobs": (_LOCK_PAIRS.text, ("type", "user_id")),
        "recovery": (_RECOVER_LOST.text, ("w.type", "w.user_id")),
    }
    for name, (sql, arguments) in statements.items():
        assert BUCKET.findall(sql) == [arguments], name
        assert ":lock_class" in sql, name
