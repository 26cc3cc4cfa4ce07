"""Every statement that locks a (type, user_id) pair must pick the same locks."""

from __future__ import annotations

import re

from worker_bridge.store._common import LOCK_PAIR
from worker_bridge.store.batch import _LOCK_BUCKETS_EXCLUSIVE, _LOCK_BUCKETS_SHARED, _LOCK_PAIRS
from worker_bridge.store.dispatching import _RECOVER_LOST
from worker_bridge.store.scheduling import _SUPERSEDE_AND_INSERT

BUCKET = re.compile(r"\(hashtext\((\S+)\) # hashint4\((\S+)\)\) & :lock_mask")
PAIR = re.compile(r"pg_(?:try_)?advisory_xact_lock\(hashtext\((\S+)\), (\S+?)\)")


def test_every_pair_lock_hashes_the_pair_the_same_way() -> None:
    single = {
        "LOCK_PAIR": (LOCK_PAIR.text, (":type", ":user_id")),
        "schedule_job": (str(_SUPERSEDE_AND_INSERT), (":type", ":user_id")),
        "recovery": (_RECOVER_LOST.text, ("w.type", "w.user_id")),
    }
    for name, (sql, arguments) in single.items():
        assert BUCKET.findall(sql) == [arguments], name
        assert PAIR.findall(sql) == [arguments], name
        # The bucket, shared, comes before the pair.
        assert sql.index("_shared(") < sql.index("hashtext(", sql.index("hashint4(") + 1), name
    for statement in (_LOCK_BUCKETS_SHARED, _LOCK_BUCKETS_EXCLUSIVE):
        assert BUCKET.findall(statement.text) == [("type", "user_id")]
    assert "_shared(:lock_class, k.bucket)" in _LOCK_BUCKETS_SHARED.text
    assert "pg_advisory_xact_lock(:lock_class, k.bucket)" in _LOCK_BUCKETS_EXCLUSIVE.text
    assert "pg_advisory_xact_lock(k.h, k.user_id)" in _LOCK_PAIRS.text
    assert "hashtext(type) AS h, user_id" in _LOCK_PAIRS.text
