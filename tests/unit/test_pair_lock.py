"""Every statement that locks a (type, user_id) pair must pick the same lock."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.dialects import postgresql

from worker_bridge.store import postgresql_recovery, postgresql_statements
from worker_bridge.store.schema import PAIR_LOCK_BUCKETS

BUCKET = re.compile(r"\(hashtext\((\S+?)\) # hashint4\((\S+?)\)\) & %\(lock_mask\)s")


def _sql(statement: Any) -> str:
    return str(statement.compile(dialect=postgresql.psycopg.dialect()))


def test_every_pair_lock_hashes_the_pair_the_same_way() -> None:
    expected = {
        "LOCK_PAIR": ["%(type)s", "%(user_id)s"],
        "SUPERSEDE_AND_INSERT": ["%(type)s", "%(user_id)s"],
        "FINISH_WITH_FOLLOW_UP": ["%(type)s", "%(user_id)s"],
        "LOCK_PAIRS": ["x.type", "x.user_id"],
        "RECOVER_LOST": ["worker_jobs.type", "worker_jobs.user_id"],
    }
    for name, arguments in expected.items():
        module = postgresql_recovery if name == "RECOVER_LOST" else postgresql_statements
        statement = getattr(module, name)
        sql = _sql(statement)
        assert [list(found) for found in BUCKET.findall(sql)] == [arguments], name
        assert re.search(r"pg_(try_)?advisory_xact_lock\(%\(lock_class\)s", sql), name
        compiled = statement.compile(dialect=postgresql.psycopg.dialect())
        assert compiled.params["lock_mask"] == PAIR_LOCK_BUCKETS - 1, name
